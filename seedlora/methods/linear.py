"""linear: the weighted sum τ = Σ w_i τ_i (model soup with default weights 1/K, task arithmetic
with user weights). Exact in factor form: B = [w_1 B_1, …], A = [A_1; …], rank Σ r_i.

Averaging A's and B's separately (PEFT's `linear`) adds cross terms B_i A_j; never done here.
"""

from __future__ import annotations

import torch

from ..errors import MethodError
from ..lowrank import LowRank, concat
from .base import MergeMethod, Param

NAME = "linear"


def effective_weights(weights: torch.Tensor, params: dict) -> list[float]:
    """The weights as given, or rescaled to sum 1 when params['normalize'] is 1."""
    if not params.get("normalize"):
        return [float(w) for w in weights]
    total = float(weights.sum())
    if total == 0.0:
        raise MethodError(
            f"method '{NAME}': normalize=1 needs weights with a non-zero sum, got {weights.tolist()}; "
            "change the weights or drop normalize"
        )
    return [float(w) / total for w in weights]


def weighted_sum(deltas: list[torch.Tensor], coeffs: list[float]) -> torch.Tensor:
    """Σ c_i τ_i in float32, without modifying the inputs."""
    out = torch.zeros_like(deltas[0], dtype=torch.float32)
    for delta, coeff in zip(deltas, coeffs):
        out.add_(delta.float(), alpha=coeff)
    return out


def merge_deltas(
    deltas: list[torch.Tensor], weights: torch.Tensor, params: dict, generator: torch.Generator
) -> torch.Tensor:
    """τ = Σ w_i τ_i on dense deltas."""
    return weighted_sum(deltas, effective_weights(weights, params))


def merge_factors(terms: list[LowRank], weights: torch.Tensor, params: dict) -> LowRank:
    """τ = Σ w_i B_i A_i exactly, as a rank Σ r_i LowRank."""
    return concat(terms, effective_weights(weights, params))


METHOD = MergeMethod(
    name=NAME,
    summary="τ = Σ w_i τ_i (default w_i = 1/K: the average)",
    paper="https://arxiv.org/abs/2212.04089",
    merge_deltas=merge_deltas,
    merge_factors=merge_factors,
    params=(
        Param("normalize", int, 0, "rescale the weights to sum to 1", choices=(0, 1)),
    ),
    default_weight=lambda k: 1.0 / k,
    mergekit="yes, to float32 rounding (mergekit divides by Σ w_i by default: pass weights summing to 1 "
             "or --normalize)",
)
