"""iso_c / iso_cts: isotropic merging (Marczak et al. 2025, https://arxiv.org/abs/2502.04959).

Per module, as the authors' code (src/utils/iso.py) computes it, on the shared p x q core
(seedlora/methods/core.py), so exactly and without an out x in matrix:

iso_c: Σ = Σ_i w_i τ_i = U S Vᵀ; τ = λ · σ̄ · U Vᵀ with σ̄ the mean singular value (a flat
spectrum). Default w_i = 1 (the paper's sum).

iso_cts: with D = min(out, in, Σ r_i): common size k = ⌊D·common_space_fraction⌋, the rest
split evenly, n = round((D − k)/K) per input and k = D − K·n (the code's rounding); common
subspace U_c = top k left singular vectors of Σ; for each input, the SVD of its part outside
it, (I − U_cU_cᵀ) w_i τ_i, gives n task-specific triplets; stack the common and task-specific
U's, S's and V's, orthogonalise the stacked U and V (polar factor, as TSV), and flatten the
spectrum: τ = λ · σ̄ · U_⊥ V_⊥ᵀ with σ̄ the mean of the stacked singular values.

λ is the paper's α (chosen on validation there, in (0, 3]); 1.0 here, fusion_bench's default.

Where this differs from the paper's code, and why: the code averages all min(out, in) singular
values and keeps all min(out, in) directions. A LoRA sum has only R ≤ Σ r_i non-zero ones; the
remaining "directions" are an arbitrary orthonormal completion, so following the code would
add an arbitrary full-rank matrix. We flatten the non-zero part of the spectrum (σ̄ = mean of
the R non-zero values), take D = min(out, in, Σ r_i) as the space iso_cts fills, and cap every
kept set of triplets at its numerical rank. For full-rank deltas (checkpoints) this is the
paper's computation. Non-matrix tensors (norms, biases) of checkpoints are averaged, as in the code.
"""

from __future__ import annotations

import torch

from ..lowrank import LowRank
from .base import MergeMethod, Param
from .core import dense_via_factors, polar, shared_core, svd, to_lowrank


def _fraction(value: float):
    return None if 0.0 < value <= 1.0 else "must be in (0, 1]"


def iso_c_factors(terms: list[LowRank], weights: torch.Tensor, params: dict):
    """Iso-C exactly: σ̄ U Vᵀ of the weighted sum, and σ̄ for the report."""
    core = shared_core(terms, weights.tolist())
    U, S, Vh = svd(sum(core.cores))
    sigma = float(S.mean()) if S.numel() else 0.0
    return to_lowrank(core, (U @ Vh) * (sigma * params["lambda"])), {"sigma": sigma}


def subspace_sizes(dim: int, fraction: float, k: int) -> tuple[int, int]:
    """(common size, task-specific size per input), rounded as the authors' code does."""
    common = int(dim * fraction)
    task_total = round((dim - common) / k) * k
    return max(dim - task_total, 0), task_total // k


def iso_cts_factors(terms: list[LowRank], weights: torch.Tensor, params: dict):
    """Iso-CTS exactly: common + task-specific subspaces, orthogonalised, flat spectrum."""
    core = shared_core(terms, weights.tolist())
    dim = min(*core.shape, sum(core.ranks))
    common, per_task = subspace_sizes(dim, params["common_space_fraction"], len(terms))
    U, S, Vh = svd(sum(core.cores))
    us, ss, vs = [U[:, :common]], [S[:common]], [Vh[:common].T]
    projector = torch.eye(U.shape[0], dtype=U.dtype, device=U.device) - us[0] @ us[0].T
    for c in core.cores:
        U_i, S_i, Vh_i = svd(projector @ c)  # the input's part outside the common subspace
        us.append(U_i[:, :per_task])
        ss.append(S_i[:per_task])
        vs.append(Vh_i[:per_task].T)
    spectrum = torch.cat(ss)
    sigma = float(spectrum.mean()) if spectrum.numel() else 0.0
    merged = polar(torch.cat(us, dim=1)) @ polar(torch.cat(vs, dim=1)).T
    return to_lowrank(core, merged * (sigma * params["lambda"])), {"sigma": sigma}


def iso_c_deltas(deltas, weights, params, generator):
    return dense_via_factors(iso_c_factors, deltas, weights, params)


def iso_cts_deltas(deltas, weights, params, generator):
    return dense_via_factors(iso_cts_factors, deltas, weights, params)


LAMBDA = Param("lambda", float, 1.0, "scale of the merged update (the paper's α)")

ISO_C = MergeMethod(
    name="iso_c",
    summary="λ·σ̄·U Vᵀ for Σ w_i τ_i = U S Vᵀ: the sum with a flat spectrum (σ̄ reported)",
    paper="https://arxiv.org/abs/2502.04959",
    merge_deltas=iso_c_deltas,
    merge_factors=iso_c_factors,
    params=(LAMBDA,),
    default_weight=lambda k: 1.0,
    rank_text="≤ Σr",
)

ISO_CTS = MergeMethod(
    name="iso_cts",
    summary="top subspace of the sum plus each input's own directions outside it, orthogonalised, flat spectrum (σ̄ reported)",
    paper="https://arxiv.org/abs/2502.04959",
    merge_deltas=iso_cts_deltas,
    merge_factors=iso_cts_factors,
    params=(
        Param("common_space_fraction", float, 0.8, "share of the space given to the common subspace", check=_fraction),
        LAMBDA,
    ),
    default_weight=lambda k: 1.0,
    rank_text="≤ Σr",
)
