"""The explicit registry of merge methods: one tuple, no import-time registration."""

from __future__ import annotations

from ..errors import MethodError
from .base import MergeMethod, Param
from .linear import METHOD as LINEAR
from .seedlora_avg import METHOD as SEEDLORA
from .selection import METHOD as SELECTION
from .sparsify import DARE_LINEAR, DARE_TIES, MAGNITUDE_PRUNE, TIES

METHODS: tuple[MergeMethod, ...] = (
    LINEAR,
    SEEDLORA,
    TIES,
    DARE_LINEAR,
    DARE_TIES,
    MAGNITUDE_PRUNE,
    SELECTION,
)


def method_names() -> list[str]:
    """Names of all methods, in registry order."""
    return [m.name for m in METHODS]


def get_method(name: str) -> MergeMethod:
    """The method called `name`; MethodError listing the choices otherwise."""
    for method in METHODS:
        if method.name == name:
            return method
    raise MethodError(f"unknown method {name!r} (choose from: {', '.join(method_names())})")


__all__ = ["METHODS", "MergeMethod", "Param", "get_method", "method_names"]
