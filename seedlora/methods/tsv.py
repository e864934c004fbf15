"""tsv: TSV-Merge (Gargiulo et al. 2025, https://arxiv.org/abs/2412.00081), exact on the core.

Per module, as the authors' code (compute_and_sum_svd_mem_reduction) computes it:
1. SVD of each update w_i τ_i = U_i S_i V_iᵀ; keep its top k_i triplets,
   k_i = ⌊min(out, in)·sv_reduction⌋ (default sv_reduction = 1/K);
2. stack Û = [U_1 … U_K], Ŝ = diag(S_1 … S_K), V̂ = [V_1 … V_K];
3. replace Û and V̂ by their polar factors (U Vᵀ of their SVDs: the nearest matrices with
   orthonormal columns, Procrustes);
4. τ = λ · Û_⊥ Ŝ V̂_⊥ᵀ (λ: the paper's α, chosen on validation there; 1.0 here as in
   fusion_bench's default).
Everything runs on the shared p x q core (seedlora/methods/core.py): exact, rank ≤ Σ k_i.

Where this differs from the paper's code, and why: k_i is also capped at the numerical rank of
τ_i. A LoRA update of rank r_i has only r_i non-zero singular values; the code's further
"triplets" (σ = 0, arbitrary singular vectors) would enter the orthogonalisation of step 3 and
make the result depend on an arbitrary basis. For full-rank deltas (checkpoints) nothing changes.
Non-matrix tensors (norms, biases) of checkpoints are averaged, as in the paper's code.
"""

from __future__ import annotations

import torch

from ..lowrank import LowRank
from .base import MergeMethod, Param
from .core import dense_via_factors, polar, shared_core, svd, to_lowrank


def _fraction(value: float):
    return None if 0.0 < value <= 1.0 else "must be in (0, 1]"


def merge_factors(terms: list[LowRank], weights: torch.Tensor, params: dict) -> LowRank:
    """TSV-M of the K updates, exactly, as a LowRank of rank ≤ Σ k_i."""
    core = shared_core(terms, weights.tolist())
    fraction = params["sv_reduction"] or 1.0 / len(terms)
    per_input = int(min(core.shape) * fraction)  # the paper's int(min(shape) * sv_reduction)
    us, ss, vs = [], [], []
    for c in core.cores:
        U, S, Vh = svd(c)  # non-zero triplets only
        k = min(per_input, S.numel())
        us.append(U[:, :k])
        ss.append(S[:k])
        vs.append(Vh[:k].T)
    merged = polar(torch.cat(us, dim=1)) @ torch.diag(torch.cat(ss)) @ polar(torch.cat(vs, dim=1)).T
    return to_lowrank(core, merged * params["lambda"])


def merge_deltas(deltas, weights, params, generator):
    """TSV-M on dense deltas (exact factors (τ, I)); non-matrix tensors averaged."""
    return dense_via_factors(merge_factors, deltas, weights, params)


METHOD = MergeMethod(
    name="tsv",
    summary="each update's top singular triplets stacked, U and V replaced by their polar factors: λ·U⊥ S V⊥ᵀ",
    paper="https://arxiv.org/abs/2412.00081",
    merge_deltas=merge_deltas,
    merge_factors=merge_factors,
    params=(
        Param("sv_reduction", float, None, "share of min(out, in) singular triplets kept per input",
              check=_fraction, shown_default="1/K"),
        Param("lambda", float, 1.0, "scale of the merged update (the paper's α)"),
    ),
    default_weight=lambda k: 1.0,
    rank_text="≤ Σr",
)
