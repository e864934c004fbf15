"""Masks, rescaling and combination shared by della, breadcrumbs and dare (mergekit's GTA family).

mergekit's generalized task arithmetic sparsifies each task vector, optionally rescales what
is kept, then combines. Rescale rules:
  "l1"      mergekit's `rescale: true`: multiply the kept entries by ‖τ‖₁/‖τ ⊙ m‖₁ (skipped
            when either sum is below 1e-7, as mergekit);
  "inverse" the papers' unbiased rule: divide each kept entry by its keep probability;
  "none"    keep the surviving entries as they are.
Combination reuses sparsify.py's weighted_sum and sign_elect_merge (TIES election and
disjoint mean), then multiplies by λ (mergekit's `lambda`).
"""

from __future__ import annotations

from typing import Optional, Union

import torch

from .base import Param
from .sparsify import sign_elect_merge, weighted_sum

L1_EPS = 1e-7  # mergekit's rescaled_masked_tensor: no rescale below this L1 norm
RESCALE_CHOICES = ("l1", "inverse", "none")


def rescale_param(default: str) -> Param:
    return Param("rescale", str, default, "kept entries: l1 = mergekit's L1-norm matching, "
                 "inverse = divide by the keep probability, none", choices=RESCALE_CHOICES)


LAMBDA = Param("lambda", float, 1.0, "scale of the merged update (mergekit's lambda)")
MAJORITY_SIGN = Param("majority_sign", str, "total", "sign election: sum of values or count of signs",
                      choices=("total", "frequency"))


def masked(delta: torch.Tensor, mask: torch.Tensor, rescale: str,
           probabilities: Optional[Union[torch.Tensor, float]] = None) -> torch.Tensor:
    """τ ⊙ m rescaled by `rescale` (a new float32 tensor; the input is untouched)."""
    out = delta.float() * mask
    if rescale == "inverse":
        return out.div_(probabilities)
    if rescale == "l1":
        before, after = float(delta.double().abs().sum()), float(out.double().abs().sum())
        if before >= L1_EPS and after >= L1_EPS:
            out.mul_(before / after)
    return out


def combine(sparse: list[torch.Tensor], weights: torch.Tensor, params: dict, consensus: bool) -> torch.Tensor:
    """Σ w_i τ̂_i, or TIES sign election + disjoint mean; then times λ."""
    coeffs = [float(w) for w in weights]
    if consensus:
        merged = sign_elect_merge(sparse, coeffs, params.get("majority_sign", "total"))
    else:
        merged = weighted_sum(sparse, coeffs)
    scale = params.get("lambda", 1.0)
    return merged.mul_(scale) if scale != 1.0 else merged
