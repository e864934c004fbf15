"""seedlora: merge LoRA adapters exactly (SeedLoRA, parameter selection, TIES, DARE, linear).

Public API:
    merge_adapters(adapter_folders, output, method=..., ...)     folders -> merged adapter (or fused model)
    fuse_adapters(adapter_folders, base, output, ...)            folders + base -> fused model folder
    merge_checkpoints(checkpoint_folders, base, output, ...)     full fine-tunes -> merged model folder
    merge_peft_adapters(peft_model, names, new_name, ...)        loaded adapters -> new adapter in the model
    merge(inputs, sink, ...)                                     any sources -> any sink
    LoraAdapter.open(folder), PeftModelAdapter(model, name)      sources (lazy, per-module tensors)
    METHODS, get_method(name)                                    the method registry
"""

from .api import fuse_adapters, merge, merge_adapters, merge_checkpoints, merge_peft_adapters
from .errors import (
    AdapterFormatError,
    IncompatibleInputsError,
    MethodError,
    ModelFormatError,
    OutputExistsError,
    SeedLoraError,
    UnsafeOutputError,
    UnsupportedFeatureError,
)
from .methods import METHODS, get_method
from .pipeline import MergeReport
from .sinks import AdapterFolderSink, FusedModelSink, PeftModelSink
from .sources import Checkpoint, LoraAdapter, PeftModelAdapter

__all__ = [
    "AdapterFolderSink", "AdapterFormatError", "Checkpoint", "FusedModelSink", "IncompatibleInputsError",
    "LoraAdapter", "METHODS", "MergeReport", "MethodError", "ModelFormatError", "OutputExistsError",
    "PeftModelAdapter", "PeftModelSink", "SeedLoraError", "UnsafeOutputError", "UnsupportedFeatureError",
    "fuse_adapters", "get_method", "merge", "merge_adapters", "merge_checkpoints", "merge_peft_adapters",
]
