"""model_stock: Model Stock (Jang et al. 2024, https://arxiv.org/abs/2403.19522), per module.

cosθ = mean over pairs i < j of ⟨τ_i, τ_j⟩ / (‖τ_i‖‖τ_j‖);  t = K·cosθ / (1 + (K−1)·cosθ);
τ = t · Σ_i w_i τ_i with default w_i = 1/K (the paper's t·mean(W_i) + (1−t)·W_0, written on
updates). On factors the K x K inner products come from one pair of Gram matrices of the
stacked factors (⟨B_iA_i, B_jA_j⟩ = Σ (B_iᵀB_j) ⊙ (A_iA_jᵀ)), so the result is exact at rank
Σ r_i (the inputs' factors with B_i scaled by t·w_i). `filter_wise` (mergekit's option):
cosθ and t per output row of τ (row inner products B_i[j] (A_iA_jᵀ) B_j[j]ᵀ), still exact.
Reports t and cosθ per module (their mean over rows with filter_wise).

Choices the paper leaves open:
- K = 1: t = 1 (the formula with the update's angle to itself, cosθ = 1): the input, unchanged.
  mergekit refuses fewer than two fine-tunes.
- cosθ ≤ 0: t = 0 (no update: the base model). The paper assumes positively correlated
  fine-tunes; mergekit extrapolates with t < 0 there and only zeroes t at the pole
  1 + (K−1)cosθ = 0.
- A zero update makes its pairs' cosine 0 (as mergekit). mergekit also clamps each norm
  product below at 1e-6, which changes the cosine of updates with ‖τ_i‖‖τ_j‖ < 1e-6; we do not.
On modules of stored orientation out x in (nn.Linear) filter_wise rows are mergekit's rows;
for fan_in_fan_out (Conv1D) weights mergekit's rows are our columns.
"""

from __future__ import annotations

import itertools

import torch

from ..lowrank import LowRank, concat, grams
from .base import MergeMethod, Param

NAME = "model_stock"


def interpolation_ratio(cos: torch.Tensor, k: int) -> torch.Tensor:
    """t = K·cosθ / (1 + (K−1)·cosθ), with t = 1 for K = 1 and t = 0 where cosθ ≤ 0."""
    if k == 1:
        return torch.ones_like(cos)
    t = k * cos / (1 + (k - 1) * cos.clamp(min=0.0))
    return torch.where(cos > 0, t, torch.zeros_like(t))


def mean_pairwise_cosine(dots: dict, norms: list) -> torch.Tensor:
    """Mean over pairs of dots[i, j] / (norms[i]·norms[j]), 0 where a norm is 0 (elementwise)."""
    pairs = list(itertools.combinations(range(len(norms)), 2))
    total = torch.zeros_like(norms[0])
    for i, j in pairs:
        product = norms[i] * norms[j]
        cos = torch.where(product > 0, dots[i, j] / torch.where(product > 0, product, 1.0), 0.0)
        total += cos.clamp(-1.0, 1.0)
    return total / len(pairs)


def _stats(t: torch.Tensor, cos: torch.Tensor, k: int) -> dict:
    stats = {"t": float(t.double().mean())}
    if k > 1:
        stats["cos"] = float(cos.double().mean())
    return stats


def merge_factors(terms: list[LowRank], weights: torch.Tensor, params: dict):
    """τ exactly as a rank Σ r_i LowRank, and {t, cos} for the report."""
    k, ranks = len(terms), [t.rank for t in terms]
    bounds = [sum(ranks[:i]) for i in range(k + 1)]
    blocks = [slice(bounds[i], bounds[i + 1]) for i in range(k)]
    joined = concat(terms, [1.0] * k)
    g = grams(joined)  # exact float64 BᵀB and AAᵀ of the stacked factors
    if params["filter_wise"]:  # per output row j: ⟨row_j τ_a, row_j τ_b⟩ = B_a[j] (A_a A_bᵀ) B_b[j]ᵀ
        B = [joined.B[:, b].double() for b in blocks]
        dots = {(a, b): ((B[a] @ g.gram_a[blocks[a], blocks[b]].to(B[a].device)) * B[b]).sum(1)
                for a in range(k) for b in range(a, k)}
    else:
        dots = {(a, b): (g.gram_b[blocks[a], blocks[b]] * g.gram_a[blocks[a], blocks[b]]).sum()
                for a in range(k) for b in range(a, k)}
    norms = [dots[i, i].clamp(min=0.0).sqrt() for i in range(k)]
    cos = mean_pairwise_cosine(dots, norms) if k > 1 else torch.ones_like(norms[0])
    t = interpolation_ratio(cos, k)
    if params["filter_wise"]:
        result = concat(terms, [float(w) for w in weights])
        result.B.mul_(t.to(device=result.B.device, dtype=torch.float32)[:, None])  # diag(t) Σ w_i τ_i
    else:
        result = concat(terms, [float(t) * float(w) for w in weights])
    return result, _stats(t, cos, k)


def merge_deltas(deltas: list[torch.Tensor], weights: torch.Tensor, params: dict, generator: torch.Generator):
    """τ on dense deltas (any shape; filter_wise rows are the first axis), statistics in float64."""
    k = len(deltas)
    if params["filter_wise"]:
        flat = [d.double().reshape(d.shape[0], -1) if d.dim() > 1 else d.double().reshape(1, -1) for d in deltas]
        dots = {(a, b): (flat[a] * flat[b]).sum(1) for a in range(k) for b in range(a, k)}
    else:
        flat = [d.double().reshape(-1) for d in deltas]
        dots = {(a, b): flat[a] @ flat[b] for a in range(k) for b in range(a, k)}
    norms = [dots[i, i].sqrt() for i in range(k)]
    cos = mean_pairwise_cosine(dots, norms) if k > 1 else torch.ones_like(norms[0])
    t = interpolation_ratio(cos, k)
    out = torch.zeros_like(deltas[0], dtype=torch.float32)
    for delta, w in zip(deltas, weights.tolist()):
        out.add_(delta.float(), alpha=w)
    scale = t.float().reshape(-1, *([1] * (out.dim() - 1))) if params["filter_wise"] and out.dim() > 1 else t.float()
    return out.mul_(scale.to(out.device)), _stats(t, cos, k)


METHOD = MergeMethod(
    name=NAME,
    summary="t·Σ w_i τ_i, t = Kcosθ/(1 + (K−1)cosθ), cosθ the mean pairwise cosine of the updates (t reported)",
    paper="https://arxiv.org/abs/2403.19522",
    merge_deltas=merge_deltas,
    merge_factors=merge_factors,
    params=(Param("filter_wise", int, 0, "cosθ and t per output row instead of per module (mergekit's option)",
                  choices=(0, 1)),),
    default_weight=lambda k: 1.0 / k,
    mergekit="yes, to float32 rounding (also filter_wise); differs only for cosθ ≤ 0 (mergekit: t < 0) "
             "and ‖τ_i‖‖τ_j‖ < 1e-6 (mergekit clamps)",
)
