"""della / della_linear: DELLA's MAGPRUNE (Deep et al. 2024, https://arxiv.org/abs/2406.11617), as mergekit.

Per module and input, on dense deltas (mergekit's `della_magprune`): within each output row of
τ_i, rank the entries by magnitude (1 = smallest); keep entry j with probability
p_j = (ρ − ε) + 2ε·(rank_j − 1)/(n − 1) (smallest ρ − ε, largest ρ + ε; ρ = density,
ε = epsilon); rescale what is kept (`rescale`: "l1" = mergekit's default, ‖τ_i‖₁/‖kept‖₁;
"inverse" = the DELLA paper's 1/p_j per entry; "none"). ρ ≥ 1 keeps τ_i unchanged, and
ρ ± ε must lie in (0, 1) otherwise (mergekit's rule). Then combine:
  della        TIES sign election + disjoint mean (sparsify.sign_elect_merge), default w_i = 1
  della_linear Σ w_i τ̂_i (sparsify.weighted_sum), default w_i = 1/K
and multiply by λ (`lambda`). Masks come from the module's seeded generator.

Parameter names and defaults are mergekit's: density 1.0 (mergekit's default, which keeps
everything: pass --density to prune), epsilon 0.15, lambda 1.0, rescale l1.
Deliberate differences from mergekit: other random draws (mergekit uses torch's global RNG);
mergekit elects signs on the weighted deltas and divides by the sum of the agreeing inputs'
weights, we elect on the unweighted ones and divide by the number of agreeing inputs (as our
ties and PEFT) — the same whenever every weight is 1; mergekit ranks within rows of the stored
weight, which for fan_in_fan_out (Conv1D) modules are our columns.
"""

from __future__ import annotations

from functools import partial

import torch

from .base import MergeMethod, Param, density_in_unit_interval
from .masking import LAMBDA, MAJORITY_SIGN, combine, masked, rescale_param

PAPER = "https://arxiv.org/abs/2406.11617"


def keep_probabilities(delta: torch.Tensor, density: float, epsilon: float) -> torch.Tensor:
    """p per entry: ρ − ε for a row's smallest |τ| rising linearly by rank to ρ + ε for its largest."""
    rows = delta.reshape(delta.shape[0], -1) if delta.dim() > 1 else delta.reshape(1, -1)
    ranks = rows.abs().argsort(dim=1).argsort(dim=1).to(torch.float32)  # 0 = smallest
    spread = ranks / (rows.shape[1] - 1) if rows.shape[1] > 1 else torch.zeros_like(ranks)
    return ((density - epsilon) + spread * (2 * epsilon)).reshape(delta.shape)


def sparsified(delta: torch.Tensor, params: dict, generator: torch.Generator) -> torch.Tensor:
    """One input's MAGPRUNE: a seeded Bernoulli draw per entry, then the chosen rescale."""
    if params["density"] >= 1.0:
        return delta.float().clone()
    probs = keep_probabilities(delta, params["density"], params["epsilon"])
    mask = torch.rand(delta.shape, generator=generator) < probs.cpu()
    return masked(delta, mask.to(delta.device), params["rescale"], probs)


def merge_deltas(deltas, weights, params, generator, *, consensus: bool) -> torch.Tensor:
    return combine([sparsified(d, params, generator) for d in deltas], weights, params, consensus)


def check_range(params: dict):
    density, epsilon = params["density"], params["epsilon"]
    if density < 1.0 and not (0.0 < density - epsilon and density + epsilon < 1.0):
        return f"density ± epsilon must lie in (0, 1), got density={density}, epsilon={epsilon}"
    return None


def _non_negative(value: float):
    return None if value >= 0 else "must be >= 0"


def _method(name: str, consensus: bool, default_weight) -> MergeMethod:
    params = (
        Param("density", float, 1.0, "mean keep probability, in (0, 1] (1 keeps everything)",
              check=density_in_unit_interval),
        Param("epsilon", float, 0.15, "half-width of the keep probabilities' range", check=_non_negative),
        rescale_param("l1"),
        LAMBDA,
    ) + ((MAJORITY_SIGN,) if consensus else ())
    return MergeMethod(
        name=name,
        summary="keep each entry with p from ρ − ε to ρ + ε by its magnitude rank in its row, rescale, "
                + ("TIES sign election + disjoint mean" if consensus else "weighted sum"),
        paper=PAPER,
        merge_deltas=partial(merge_deltas, consensus=consensus),
        params=params,
        random=True,
        default_weight=default_weight,
        check_params=check_range,
        mergekit=("same keep rates (other random draws); exact at density 1 and given mergekit's masks"
                  + (", for unit weights" if consensus else "")),
    )


DELLA = _method("della", True, lambda k: 1.0)
DELLA_LINEAR = _method("della_linear", False, lambda k: 1.0 / k)
