"""The TIES / DARE family as configurations of one code path: sparsify, then combine.

sparsify: "magnitude" keeps the ⌈ρ·numel⌉ largest |τ_i| (TIES trim, no rescale) or "random"
keeps each entry with probability ρ and divides kept entries by ρ (DARE).
combine: "sum" = Σ w_i τ̂_i, or "sign_elect" = TIES sign election + disjoint merge.
  ties            = magnitude + sign_elect   (default weight 1)
  magnitude_prune = magnitude + sum          (default weight 1/K)
  dare_linear     = random    + sum          (default weight 1/K)
  dare_ties       = random    + sign_elect   (default weight 1)
Masks are boolean, one per input; sparsified tensors are recomputed from them on the fly so
memory stays at K masks plus a few dense buffers.
"""

from __future__ import annotations

import math
from fractions import Fraction
from functools import partial
from typing import Optional

import torch

from .base import MergeMethod, Param, density_in_unit_interval
from .linear import weighted_sum

TIES_PAPER = "https://arxiv.org/abs/2306.01708"
DARE_PAPER = "https://arxiv.org/abs/2311.03099"


def keep_count(numel: int, density: float) -> int:
    """⌈ρ·numel⌉ as methods.md says (PEFT uses int(), i.e. floor; equal when ρ·numel is whole).

    ρ is read as the decimal the user wrote (repr), so 0.07 x 100 keeps 7, not 8.
    """
    return min(numel, math.ceil(Fraction(repr(float(density))) * numel))


def magnitude_keep_mask(delta: torch.Tensor, density: float) -> torch.Tensor:
    """Boolean mask of the ⌈ρ·numel⌉ largest-magnitude entries of `delta`."""
    k = keep_count(delta.numel(), density)
    mask = torch.zeros(delta.numel(), dtype=torch.bool, device=delta.device)
    if k == delta.numel():
        return mask.fill_(True).view(delta.shape)
    mask[torch.topk(delta.reshape(-1).abs(), k, sorted=False).indices] = True
    return mask.view(delta.shape)


def random_keep_mask(shape: torch.Size, density: float, generator: torch.Generator) -> torch.Tensor:
    """Boolean mask keeping each entry independently with probability ρ (seeded draw)."""
    return torch.rand(shape, generator=generator) < density


def _sparsified(delta: torch.Tensor, mask: torch.Tensor, rescale: Optional[float]) -> torch.Tensor:
    """τ ⊙ mask, divided by ρ when rescaling (a new tensor; the input is untouched)."""
    out = delta.float() * mask
    return out.div_(rescale) if rescale is not None else out


def sign_elect_merge(sparse: list[torch.Tensor], coeffs: list[float], majority_sign: str) -> torch.Tensor:
    """TIES steps 2–3: elect γ per entry, then average w_i τ̂_i over the inputs agreeing with it."""
    # elect sign: γ = sign(Σ τ̂_i) ("total") or sign(Σ sign τ̂_i) ("frequency"); ties → +1
    score = torch.zeros_like(sparse[0])
    for t in sparse:
        score.add_(t if majority_sign == "total" else t.sign())
    elected = torch.where(score >= 0, 1.0, -1.0)
    # disjoint merge: zeros never agree (sign 0 ≠ ±1)
    total = torch.zeros_like(score)
    count = torch.zeros_like(score)
    for t, w in zip(sparse, coeffs):
        agree = t.sign() == elected
        total.add_(torch.where(agree, t, 0.0), alpha=w)
        count.add_(agree.float())
    return total.div_(count.clamp_(min=1.0))


def merge_masked(
    deltas: list[torch.Tensor],
    weights: torch.Tensor,
    masks: list[torch.Tensor],
    rescale: Optional[float],
    combine: str,
    majority_sign: str = "total",
) -> torch.Tensor:
    """Apply given keep-masks (rescaling kept entries by 1/rescale if set), then combine."""
    sparse = [_sparsified(d, m, rescale) for d, m in zip(deltas, masks)]
    coeffs = [float(w) for w in weights]
    if combine == "sum":
        return weighted_sum(sparse, coeffs)
    return sign_elect_merge(sparse, coeffs, majority_sign)


def merge_sparsified(
    deltas: list[torch.Tensor],
    weights: torch.Tensor,
    params: dict,
    generator: torch.Generator,
    *,
    drop: str,
    combine: str,
) -> torch.Tensor:
    """The family's merge_deltas: draw masks by `drop`, then `merge_masked`."""
    density = params["density"]
    if drop == "magnitude":
        masks = [magnitude_keep_mask(d, density) for d in deltas]
        rescale = None
    else:
        masks = [random_keep_mask(d.shape, density, generator).to(d.device) for d in deltas]
        rescale = density
    return merge_masked(deltas, weights, masks, rescale, combine, params.get("majority_sign", "total"))


def _density(default: float) -> Param:
    return Param("density", float, default, "fraction of each update's entries kept, in (0, 1]",
                 check=density_in_unit_interval)


MAJORITY_SIGN = Param("majority_sign", str, "total", "sign election: sum of values or count of signs",
                      choices=("total", "frequency"))


def _family(name, summary, paper, drop, combine, density, default_weight) -> MergeMethod:
    params = (_density(density),) + ((MAJORITY_SIGN,) if combine == "sign_elect" else ())
    return MergeMethod(
        name=name,
        summary=summary,
        paper=paper,
        merge_deltas=partial(merge_sparsified, drop=drop, combine=combine),
        params=params,
        random=drop == "random",
        default_weight=default_weight,
    )


TIES = _family("ties", "trim to top-ρ magnitudes, elect signs, disjoint mean (TIES)",
               TIES_PAPER, "magnitude", "sign_elect", 0.2, lambda k: 1.0)
DARE_LINEAR = _family("dare_linear", "random drop with 1/ρ rescale, weighted sum (DARE)",
                      DARE_PAPER, "random", "sum", 0.5, lambda k: 1.0 / k)
DARE_TIES = _family("dare_ties", "random drop with 1/ρ rescale, TIES sign election (DARE)",
                    DARE_PAPER, "random", "sign_elect", 0.5, lambda k: 1.0)
MAGNITUDE_PRUNE = _family("magnitude_prune", "trim to top-ρ magnitudes, weighted sum",
                          TIES_PAPER, "magnitude", "sum", 0.2, lambda k: 1.0 / k)
