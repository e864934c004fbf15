"""Where updates come from: adapter folders, adapters in a PeftModel, full fine-tuned checkpoints.

`open_inputs` turns what a user passes (folders, Hub ids `org/name[@revision]`, or already-opened
sources) into sources of one kind; every LoRA source offers the interface of `sources.base` and
`LoraAdapter`. A source fetched from the Hub carries its `origin` (repo id and commit).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ..errors import IncompatibleInputsError
from .adapter_folder import LoraAdapter
from .checkpoint import Checkpoint
from .hub import Resolved, resolve
from .model_folder import ModelFolder, is_model_folder
from .peft_model import PeftModelAdapter


def open_inputs(inputs: Sequence) -> list:
    """Sources for `inputs`: opened objects pass through, folders open as adapters or checkpoints."""
    if not inputs:
        raise IncompatibleInputsError("no inputs given; pass one or more adapter folders (or checkpoints with --base)")
    resolved = [resolve(i) if isinstance(i, (str, Path)) else i for i in inputs]
    kinds = {is_model_folder(r.path) for r in resolved if isinstance(r, Resolved)}
    if len(kinds) > 1:
        raise IncompatibleInputsError("inputs mix adapter folders and full model folders; merge one kind at a time")
    opened = [_open(r) if isinstance(r, Resolved) else r for r in resolved]
    if len({isinstance(s, Checkpoint) for s in opened}) > 1:
        raise IncompatibleInputsError("inputs mix LoRA adapters and full checkpoints; merge one kind at a time")
    return opened


def _open(resolved: Resolved):
    path = resolved.path
    source = Checkpoint.open(path) if is_model_folder(path) else LoraAdapter.open(path)
    source.origin = resolved.origin
    return source


def open_base(base):
    """The base model folder for a path or Hub id (an opened ModelFolder passes through); None stays None."""
    if base is None or isinstance(base, ModelFolder):
        return base
    resolved = resolve(base, kind="model")
    folder = ModelFolder.open(resolved.path)
    folder.origin = resolved.origin
    return folder


__all__ = ["Checkpoint", "LoraAdapter", "ModelFolder", "PeftModelAdapter", "is_model_folder", "open_base", "open_inputs"]
