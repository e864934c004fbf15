"""seedlora: merge LoRA adapters exactly (SeedLoRA, parameter selection, TIES, DARE, linear).

Public API:
    merge_adapters(adapter_folders, output, method=..., ...)     folders -> merged adapter (or fused model)
    fuse_adapters(adapter_folders, base, output, ...)            folders + base -> fused model folder
    merge_checkpoints(checkpoint_folders, base, output, ...)     full fine-tunes -> merged model folder
    merge_peft_adapters(peft_model, names, new_name, ...)        loaded adapters -> new adapter in the model
    merge(inputs, sink, ...)                                     any sources -> any sink
    LoraAdapter.open(folder), PeftModelAdapter(model, name)      sources (lazy, per-module tensors)
    METHODS, get_method(name)                                    the method registry

The names are imported on first use (PEP 562), so `import seedlora.cli` does not import torch:
the command sets its OpenMP thread policy before torch starts (cli.threads).
"""

from importlib import import_module

_EXPORTS = {
    "fuse_adapters": ".api", "merge": ".api", "merge_adapters": ".api", "merge_checkpoints": ".api",
    "merge_peft_adapters": ".api",
    "AdapterFormatError": ".errors", "DeviceError": ".errors", "IncompatibleInputsError": ".errors",
    "MethodError": ".errors", "ModelFormatError": ".errors", "OutputExistsError": ".errors",
    "SeedLoraError": ".errors", "UnsafeOutputError": ".errors", "UnsupportedFeatureError": ".errors",
    "METHODS": ".methods", "get_method": ".methods",
    "MergeReport": ".pipeline",
    "AdapterFolderSink": ".sinks", "FusedModelSink": ".sinks", "PeftModelSink": ".sinks",
    "Checkpoint": ".sources", "LoraAdapter": ".sources", "PeftModelAdapter": ".sources",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'seedlora' has no attribute {name!r}")
    value = getattr(import_module(_EXPORTS[name], __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list:
    return sorted(set(globals()) | set(__all__))
