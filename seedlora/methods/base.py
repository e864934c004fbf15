"""What a merge method is: a name, its parameters, and pure functions on deltas/factors.

A method always has `merge_deltas` (works on materialised out x in deltas, or full-model
task vectors); low-rank methods also have `merge_factors`, used whenever every input is a
LoRA adapter, which returns an exact LowRank result without forming an out x in matrix.
Either function may return its result alone or `(result, stats)`, where stats is a dict of
per-module scalars (Model Stock's t, ...) that reach the merge report; callers use
`split_stats` so both forms work.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch

from ..errors import MethodError
from ..lowrank import LowRank

# merge_deltas(deltas, weights, params, generator) -> merged delta (same shape, float32),
# or (merged delta, stats). `deltas` are float32 tensors of one shape, never modified.
DeltaFn = Callable[[list, torch.Tensor, dict, torch.Generator], Any]
# merge_factors(terms, weights, params) -> LowRank or (LowRank, stats); scales folded into B.
FactorFn = Callable[[list, torch.Tensor, dict], Any]
# merge_rowwise(terms, weights, params) -> methods.rowwise.RowwiseMerge: a dense method's result on
# LoRA factors, formed a block of rows at a time (no K out x in updates in memory); CPU only.
RowwiseFn = Callable[[list, torch.Tensor, dict], Any]


def split_stats(output) -> tuple[Any, dict]:
    """(result, stats) from a method's return value: `result` or `(result, {name: float})`."""
    if isinstance(output, tuple) and len(output) == 2 and isinstance(output[1], dict):
        return output[0], {str(k): float(v) for k, v in output[1].items()}
    return output, {}


def suggestion(name: str, choices) -> str:
    """'; did you mean 'x'?' for the closest choice (difflib), or '' when nothing is close."""
    close = difflib.get_close_matches(name.lower(), [c.lower() for c in choices], n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


@dataclass(frozen=True)
class Param:
    """One tunable parameter of a method, validated before any tensor is read."""

    name: str
    kind: type  # float, int or str
    default: Any
    help: str
    choices: Optional[tuple] = None
    check: Optional[Callable[[Any], Optional[str]]] = None  # returns a problem or None
    shown_default: Optional[str] = None  # how to print a default the inputs decide (e.g. "1/K")

    @property
    def is_flag(self) -> bool:
        """An on/off switch: an int that is 0 or 1 (shown and given as --name / --no-name)."""
        return self.kind is int and self.choices == (0, 1)

    def default_text(self) -> str:
        if self.shown_default is not None:
            return self.shown_default
        if self.is_flag:
            return "on" if self.default else "off"
        return str(self.default)

    def validate(self, method: str, value: Any) -> Any:
        if self.is_flag and isinstance(value, str) and value.lower() in FLAG_WORDS:
            value = FLAG_WORDS[value.lower()]
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


FLAG_WORDS = {"true": 1, "false": 0, "yes": 1, "no": 0, "on": 1, "off": 0}


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
    merge_rowwise: Optional[RowwiseFn] = None
    random: bool = False
    # extra rank the factor form adds beyond the sum of input ranks (seedlora's constant: 1)
    extra_rank: int = 0
    # default per-input weight given K inputs (1/K for averages, 1 for sign-elect methods)
    default_weight: Callable[[int], float] = lambda k: 1.0 / k
    # False: the method takes no per-input weights (slerp: its --t says how much of each)
    uses_weights: bool = True
    min_inputs: int = 1
    max_inputs: Optional[int] = None
    # checks that involve several parameters at once; returns a problem or None
    check_params: Optional[Callable[[dict], Optional[str]]] = None
    # for `seedlora methods` and the README table
    rank_text: str = "Σr"  # rank of the exact factor-form result
    mergekit: str = "no mergekit equivalent"

    @property
    def low_rank(self) -> bool:
        """True when the result of LoRA inputs is exactly low-rank (factor path)."""
        return self.merge_factors is not None

    @property
    def form(self) -> str:
        """Where the method computes: 'factors, exact rank Σr(+1)' or 'dense deltas'."""
        if not self.low_rank:
            return "dense deltas"
        return f"factors, exact rank {self.rank_text}" + (f"+{self.extra_rank}" if self.extra_rank else "")

    def accepts(self, k: int) -> bool:
        """Whether the method merges k inputs (slerp: exactly two)."""
        return k >= self.min_inputs and (self.max_inputs is None or k <= self.max_inputs)

    def resolve_params(self, given: Optional[dict]) -> dict:
        """Defaults filled in, unknown names rejected, values validated."""
        given = dict(given or {})
        known = {p.name: p for p in self.params}
        unknown = sorted(set(given) - set(known))
        if unknown:
            accepted = ", ".join(known) or "none"
            raise MethodError(
                f"method '{self.name}' has no parameter {', '.join(map(repr, unknown))} (accepted: {accepted})"
                + suggestion(unknown[0], known)
            )
        resolved = {
            name: p.validate(self.name, given[name]) if given.get(name) is not None else p.default
            for name, p in known.items()
        }
        problem = self.check_params(resolved) if self.check_params else None
        if problem:
            raise MethodError(f"method '{self.name}': {problem}")
        return resolved

    def resolve_weights(self, weights: Optional[list], k: int) -> torch.Tensor:
        """The K per-input weights as a float64 tensor, defaults by method; checks K too."""
        if not self.accepts(k):
            if self.max_inputs == self.min_inputs:
                wanted = f"exactly {self.min_inputs}"
            else:
                wanted = f"at least {self.min_inputs}" + ("" if self.max_inputs is None else f" and at most {self.max_inputs}")
            raise MethodError(f"method '{self.name}' merges {wanted} inputs, got {k}; pass {wanted} adapters")
        if weights is None:
            return torch.full((k,), float(self.default_weight(k)), dtype=torch.float64)
        if not self.uses_weights:
            raise MethodError(f"method '{self.name}' takes no per-input weights; drop --weights (see `seedlora methods`)")
        if len(weights) != k:
            raise MethodError(f"got {len(weights)} weights for {k} inputs; give one weight per input")
        return torch.tensor([float(w) for w in weights], dtype=torch.float64)
