"""The explicit registry of merge methods: one tuple, no import-time registration."""

from __future__ import annotations

from dataclasses import replace
from functools import partial

from ..errors import MethodError
from .base import MergeMethod, Param, split_stats, suggestion
from .breadcrumbs import BREADCRUMBS, BREADCRUMBS_TIES
from .dare import DARE_LINEAR, DARE_TIES
from .della import DELLA, DELLA_LINEAR
from .iso import ISO_C, ISO_CTS
from .knots import METHOD as KNOTS
from .linear import METHOD as LINEAR
from .model_stock import METHOD as MODEL_STOCK
from .rowwise import merge_magnitude_rowwise
from .seedlora_avg import METHOD as SEEDLORA
from .selection import METHOD as SELECTION
from .slerp import MULTISLERP, SLERP
from .sparsify import MAGNITUDE_PRUNE, TIES
from .tsv import METHOD as TSV

# how mergekit's method of the same name compares (tests/test_mergekit_parity.py), and the
# row-block form of the magnitude trims (methods/rowwise.py builds on sparsify.py), wired here
# so that sparsify.py's family definitions stay as they are
_TIES_PARITY = ("equal where ρ·n is whole and weights are 1; else differs in a few entries per tensor "
                "(mergekit keeps ⌊ρn⌋, divides by Σ agreeing weights)")

METHODS: tuple[MergeMethod, ...] = (
    LINEAR,
    SEEDLORA,
    replace(TIES, mergekit=_TIES_PARITY, merge_rowwise=partial(merge_magnitude_rowwise, combine="sign_elect")),
    DARE_LINEAR,
    DARE_TIES,
    replace(MAGNITUDE_PRUNE, mergekit="no mergekit equivalent (its task_arithmetic has no trim)",
            merge_rowwise=partial(merge_magnitude_rowwise, combine="sum")),
    SELECTION,
    MODEL_STOCK,
    TSV,
    ISO_C,
    ISO_CTS,
    KNOTS,
    DELLA,
    DELLA_LINEAR,
    BREADCRUMBS,
    BREADCRUMBS_TIES,
    SLERP,
    MULTISLERP,
)


def method_names() -> list[str]:
    """Names of all methods, in registry order."""
    return [m.name for m in METHODS]


def get_method(name: str) -> MergeMethod:
    """The method called `name` (any case); MethodError with a suggestion and the choices otherwise."""
    wanted = str(name).lower().replace("-", "_")
    for method in METHODS:
        if method.name == wanted:
            return method
    raise MethodError(
        f"unknown method {name!r}{suggestion(str(name), method_names())} (choose from: {', '.join(method_names())})"
    )


__all__ = ["METHODS", "MergeMethod", "Param", "get_method", "method_names", "split_stats"]
