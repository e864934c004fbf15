"""knots: KnOTS (Stoica et al. 2024, https://arxiv.org/abs/2410.19735), LoRA updates aligned by one SVD.

Per module, as the authors' code (task_merger.SVDMerger with ties masking) computes it:
1. SVD of the concatenation [τ_1 … τ_K] (out x K·in) = U S [V_1ᵀ … V_Kᵀ], keeping the
   non-zero singular values: every input is expressed in one shared basis U,
   τ_i = U X_i with coefficients X_i = S V_iᵀ = Uᵀ τ_i (k x in);
2. merge the X_i: `ties` (default, KnOTS-TIES) keeps the ⌈ρ·numel⌉ largest |X_i| of each
   input (ρ = density, the code's topK/100), elects signs (sum of values) and takes the
   disjoint mean, as seedlora's ties does; `linear` takes Σ w_i X_i (which is exactly
   linear's Σ w_i τ_i);
3. τ = λ · U X_merged (λ: the paper's scaling coefficient, chosen on validation; 1.0 here).
Exact on factors: U comes from the SVD of the p x Σr core [C_1 … C_K] (core.py: the blocks of
the concatenation in orthonormal bases), X_i = uᵀ (Q_BᵀB_i) A_i; the only dense matrices are
the K coefficient blocks, k x in with k ≤ Σ r_i, never out x in. The result is U (out x k)
times X_merged (k x in): exact rank ≤ Σ r_i.

Where this differs from the paper's code, and why: the code trims the top-K% over the
coefficients of the whole model at once (one global threshold per input); we trim per module,
like every seedlora method. It keeps singular values above an absolute 1e-5; we keep those above
a relative 1e-10 (core.RANK_TOL), independent of the updates' scale. It keeps ⌊ρ·n⌋ entries
(plus ties), we ⌈ρ·n⌉. KnOTS-DARE-TIES is not offered (random, and the factor path takes no
generator). Non-matrix tensors of checkpoints are averaged (the code leaves them unmerged by default).
"""

from __future__ import annotations

import torch

from ..lowrank import LowRank
from .base import MergeMethod, Param, density_in_unit_interval
from .core import dense_via_factors, shared_core, svd
from .sparsify import magnitude_keep_mask, sign_elect_merge, weighted_sum


def aligned_coefficients(terms: list[LowRank]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(U, [X_i]) with τ_i = U X_i: U (out x k) orthonormal, X_i (k x in), float64."""
    core = shared_core(terms, [1.0] * len(terms))
    # [τ_1 … τ_K] = Q_B [C_1 … C_K] blockdiag(Q_Aᵀ): its left singular vectors are Q_B u
    u, _, _ = svd(torch.cat(core.cores, dim=1))  # p x k
    U = core.basis_b @ u
    return U, [(u.T @ c) @ core.basis_a.T for c in core.cores]


def merge_factors(terms: list[LowRank], weights: torch.Tensor, params: dict) -> LowRank:
    """KnOTS exactly: U (out x k) times the merged coefficients (k x in)."""
    U, blocks = aligned_coefficients(terms)
    coeffs = [float(w) for w in weights]
    blocks = [b.float() for b in blocks]
    if params["merge"] == "linear":
        merged = weighted_sum(blocks, coeffs)
    else:
        sparse = [b * magnitude_keep_mask(b, params["density"]) for b in blocks]
        merged = sign_elect_merge(sparse, coeffs, params["majority_sign"])
    if U.shape[1] == 0:  # every input is zero
        U, merged = U.new_zeros(U.shape[0], 1), merged.new_zeros(1, merged.shape[1])
    return LowRank(B=U.float(), A=merged.mul_(params["lambda"]))


def merge_deltas(deltas, weights, params, generator):
    """KnOTS on dense deltas (exact factors (τ, I)); non-matrix tensors averaged."""
    return dense_via_factors(merge_factors, deltas, weights, params)


METHOD = MergeMethod(
    name="knots",
    summary="SVD [τ_1 … τ_K] = U S [V_1ᵀ … V_Kᵀ]; TIES (or linear) on the aligned blocks S V_iᵀ; U back",
    paper="https://arxiv.org/abs/2410.19735",
    merge_deltas=merge_deltas,
    merge_factors=merge_factors,
    params=(
        Param("merge", str, "ties", "how the aligned coefficients are merged", choices=("ties", "linear")),
        Param("density", float, 0.2, "ties: fraction of each input's coefficients kept, in (0, 1]",
              check=density_in_unit_interval),
        Param("majority_sign", str, "total", "ties: sign election by sum of values or count of signs",
              choices=("total", "frequency")),
        Param("lambda", float, 1.0, "scale of the merged update (the paper's scaling coefficient)"),
    ),
    default_weight=lambda k: 1.0,
    rank_text="≤ Σr",
)
