"""What a merge method is: a name, its parameters, and pure functions on deltas/factors.

A method always has `merge_deltas` (works on materialised out x in deltas, or full-model
task vectors); low-rank methods also have `merge_factors`, used whenever every input is a
LoRA adapter, which returns an exact LowRank result without forming an out x in matrix.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch

from ..errors import MethodError
from ..lowrank import LowRank

# merge_deltas(deltas, weights, params, generator) -> merged delta (same shape, float32).
# `deltas` are float32 tensors of one shape; implementations never modify them.
DeltaFn = Callable[[list, torch.Tensor, dict, torch.Generator], torch.Tensor]
# merge_factors(terms, weights, params) -> LowRank; each term has its scale folded into B.
FactorFn = Callable[[list, torch.Tensor, dict], LowRank]


@dataclass(frozen=True)
class Param:
    """One tunable parameter of a method, validated before any tensor is read."""

    name: str
    kind: type  # float, int or str
    default: Any
    help: str
    choices: Optional[tuple] = None
    check: Optional[Callable[[Any], Optional[str]]] = None  # returns a problem or None

    def validate(self, method: str, value: Any) -> Any:
        try:
            value = self.kind(value)
        except (TypeError, ValueError):
            raise MethodError(
                f"method '{method}': parameter '{self.name}' must be {self.kind.__name__}, got {value!r}"
            ) from None
        if self.choices is not None and value not in self.choices:
            raise MethodError(
                f"method '{method}': parameter '{self.name}' must be one of {', '.join(map(str, self.choices))}, got {value!r}"
            )
        problem = self.check(value) if self.check else None
        if problem:
            raise MethodError(f"method '{method}': parameter '{self.name}' {problem}, got {value!r}")
        return value


def split_stats(output) -> tuple:
    """(result, stats): a method returns its result alone or as (result, {name: scalar per module})."""
    if isinstance(output, tuple):
        return output[0], dict(output[1])
    return output, {}


def density_in_unit_interval(value: float) -> Optional[str]:
    return None if 0.0 < value <= 1.0 else "must be in (0, 1]"


def non_negative(value: int) -> Optional[str]:
    return None if value >= 0 else "must be >= 0"


@dataclass(frozen=True)
class MergeMethod:
    """A registry entry: everything the planner, the CLI and `seedlora methods` need."""

    name: str
    summary: str
    paper: str
    merge_deltas: DeltaFn
    params: tuple = field(default_factory=tuple)
    merge_factors: Optional[FactorFn] = None
    random: bool = False
    # extra rank the factor form adds beyond the sum of input ranks (seedlora's constant: 1)
    extra_rank: int = 0
    # default per-input weight given K inputs (1/K for averages, 1 for sign-elect methods)
    default_weight: Callable[[int], float] = lambda k: 1.0 / k

    @property
    def low_rank(self) -> bool:
        """True when the result of LoRA inputs is exactly low-rank (factor path)."""
        return self.merge_factors is not None

    def resolve_params(self, given: Optional[dict]) -> dict:
        """Defaults filled in, unknown names rejected, values validated."""
        given = dict(given or {})
        known = {p.name: p for p in self.params}
        unknown = sorted(set(given) - set(known))
        if unknown:
            accepted = ", ".join(known) or "none"
            raise MethodError(
                f"method '{self.name}' has no parameter {', '.join(map(repr, unknown))} (accepted: {accepted})"
            )
        return {
            name: p.validate(self.name, given[name]) if given.get(name) is not None else p.default
            for name, p in known.items()
        }

    def resolve_weights(self, weights: Optional[list], k: int) -> torch.Tensor:
        """The K per-input weights as a float64 tensor, defaults by method."""
        if weights is None:
            return torch.full((k,), float(self.default_weight(k)), dtype=torch.float64)
        if len(weights) != k:
            raise MethodError(f"got {len(weights)} weights for {k} inputs; give one weight per input")
        return torch.tensor([float(w) for w in weights], dtype=torch.float64)
