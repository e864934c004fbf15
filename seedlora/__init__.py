"""seedlora: merge LoRA adapters exactly (SeedLoRA, parameter selection, TIES, DARE, linear).

Public API:
    merge_adapters(adapter_folders, output, method=..., ...)   folders → merged adapter folder
    merge_peft_adapters(peft_model, names, new_name, method=...)  loaded adapters → new adapter
    LoraAdapter.open(folder)                                      lazy reader (per-module factors)
    METHODS, get_method(name)                                     the method registry
"""

from .adapter import LoraAdapter
from .errors import (
    AdapterFormatError,
    IncompatibleInputsError,
    MethodError,
    OutputExistsError,
    SeedLoraError,
    UnsupportedFeatureError,
)
from .merge import MergeReport, merge_adapters
from .methods import METHODS, get_method
from .peft_api import merge_peft_adapters

__all__ = [
    "AdapterFormatError",
    "IncompatibleInputsError",
    "LoraAdapter",
    "METHODS",
    "MergeReport",
    "MethodError",
    "OutputExistsError",
    "SeedLoraError",
    "UnsupportedFeatureError",
    "get_method",
    "merge_adapters",
    "merge_peft_adapters",
]
