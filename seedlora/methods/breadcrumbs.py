"""breadcrumbs / breadcrumbs_ties: Model Breadcrumbs (Davari & Belilovsky 2023,
https://arxiv.org/abs/2312.06795), as mergekit's `magnitude_outliers` computes it.

Per module and input, on dense deltas: with n entries, keep = ⌊ρ·n⌋ (ρ = density),
top = ⌊γ·n⌋ (γ = gamma), bottom = max(0, n − keep − top); sort |τ_i| ascending and keep
the entries ranked bottom … bottom + keep − 1: the largest `top` (outliers) and the smallest
`bottom` are dropped (when keep + top > n fewer outliers are dropped, so that ρ is kept).
ρ ≥ 1 keeps τ_i unchanged. Optional `rescale` ("none" by default as mergekit; "l1" =
mergekit's L1-norm matching). Then combine:
  breadcrumbs       Σ w_i τ̂_i (sparsify.weighted_sum), default w_i = 1/K
  breadcrumbs_ties  TIES sign election + disjoint mean (sparsify.sign_elect_merge), w_i = 1
and multiply by λ (`lambda`). Deterministic (no random draws).

Parameter names and defaults are mergekit's: density 1.0 (keeps everything: pass --density),
gamma 0.01, lambda 1.0. Counts use mergekit's ⌊ρ·n⌋ (ties uses ⌈ρ·n⌉ as methods.md says).
Deliberate differences from mergekit: breadcrumbs_ties divides by the number of agreeing
inputs (mergekit's default `normalize: false` does not divide; with `normalize: true` it
divides by their summed weights, the same for unit weights) and elects signs on the
unweighted deltas (mergekit: weighted; the same for equal positive weights).
"""

from __future__ import annotations

from functools import partial

import torch

from .base import MergeMethod, Param, density_in_unit_interval
from .masking import LAMBDA, MAJORITY_SIGN, combine, masked, rescale_param

PAPER = "https://arxiv.org/abs/2312.06795"


def keep_mask(delta: torch.Tensor, density: float, gamma: float) -> torch.Tensor:
    """Boolean mask of the entries ranked bottom … bottom + keep − 1 by |τ| (ascending)."""
    n = delta.numel()
    if density >= 1.0:
        return torch.ones_like(delta, dtype=torch.bool)
    keep, top = int(density * n), int(gamma * n)  # mergekit's float products, floored
    bottom = max(0, n - keep - top)
    order = torch.sort(delta.reshape(-1).abs().float(), stable=True).indices
    mask = torch.zeros(n, dtype=torch.bool, device=delta.device)
    mask[order[bottom : bottom + keep]] = True
    return mask.view(delta.shape)


def merge_deltas(deltas, weights, params, generator, *, consensus: bool) -> torch.Tensor:
    sparse = [masked(d, keep_mask(d, params["density"], params["gamma"]), params["rescale"]) for d in deltas]
    return combine(sparse, weights, params, consensus)


def _unit(value: float):
    return None if 0.0 <= value <= 1.0 else "must be in [0, 1]"


def _method(name: str, consensus: bool, default_weight) -> MergeMethod:
    params = (
        Param("density", float, 1.0, "fraction of each update's entries kept, in (0, 1] (1 keeps everything)",
              check=density_in_unit_interval),
        Param("gamma", float, 0.01, "fraction of largest-magnitude entries dropped as outliers", check=_unit),
        rescale_param("none"),
        LAMBDA,
    ) + ((MAJORITY_SIGN,) if consensus else ())
    return MergeMethod(
        name=name,
        summary="drop the largest γ·n entries (outliers) and the smallest, keeping ρ·n; "
                + ("TIES sign election + disjoint mean" if consensus else "weighted sum"),
        paper=PAPER,
        merge_deltas=partial(merge_deltas, consensus=consensus),
        params=params,
        default_weight=default_weight,
        mergekit="yes, to float32 rounding" + (" (mergekit with normalize: true, unit weights)" if consensus else ""),
    )


BREADCRUMBS = _method("breadcrumbs", False, lambda k: 1.0 / k)
BREADCRUMBS_TIES = _method("breadcrumbs_ties", True, lambda k: 1.0)
