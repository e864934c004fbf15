"""Where updates come from: adapter folders, adapters in a PeftModel, full fine-tuned checkpoints.

`open_inputs` turns what a user passes (folders, or already-opened sources) into sources of one
kind; every LoRA source offers the interface of `sources.base` and `LoraAdapter`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ..errors import IncompatibleInputsError
from .adapter_folder import LoraAdapter
from .checkpoint import Checkpoint
from .model_folder import ModelFolder, is_model_folder
from .peft_model import PeftModelAdapter


def open_inputs(inputs: Sequence) -> list:
    """Sources for `inputs`: opened objects pass through, folders open as adapters or checkpoints."""
    if not inputs:
        raise IncompatibleInputsError("no inputs given; pass one or more adapter folders (or checkpoints with --base)")
    paths = [i for i in inputs if isinstance(i, (str, Path))]
    kinds = {is_model_folder(p) for p in paths}
    if len(kinds) > 1:
        raise IncompatibleInputsError("inputs mix adapter folders and full model folders; merge one kind at a time")
    opened = [_open(i) if isinstance(i, (str, Path)) else i for i in inputs]
    if len({isinstance(s, Checkpoint) for s in opened}) > 1:
        raise IncompatibleInputsError("inputs mix LoRA adapters and full checkpoints; merge one kind at a time")
    return opened


def _open(path):
    return Checkpoint.open(path) if is_model_folder(path) else LoraAdapter.open(path)


__all__ = ["Checkpoint", "LoraAdapter", "ModelFolder", "PeftModelAdapter", "is_model_folder", "open_inputs"]
