"""Full fine-tuned checkpoints of one base model as merge sources: task vectors per tensor.

For every float tensor, τ_i = θ_i − θ_pre (float32; float64 for float64 weights). This is the
setting of parameter-selection merging: fine-tuning in bf16 leaves many entries exactly
unchanged, and `selection` with resampling redraws those. Each checkpoint's copy of a tensor
is read by name, so checkpoints may be sharded differently from the base. Everything the
headers can tell (names, shapes, dtypes) is validated against the base before any data is read.
"""

from __future__ import annotations

import torch

from ..errors import IncompatibleInputsError, UnsupportedFeatureError
from .base import few
from .model_folder import ModelFolder


class Checkpoint:
    """A full model folder fine-tuned from the merge's base. See module docstring."""

    origin = None  # sources.hub.HubOrigin when fetched from the Hub

    def __init__(self, folder: ModelFolder):
        self.folder = folder
        self.path = folder.path
        self.config = {"base_model_name_or_path": (folder.config or {}).get("_name_or_path")}

    @classmethod
    def open(cls, path) -> "Checkpoint":
        return cls(ModelFolder.open(path))

    @property
    def label(self) -> str:
        return str(self.path)

    @property
    def base_model(self):
        return None  # checkpoints do not name their base reliably; the shapes are checked instead

    def validate_against(self, base: ModelFolder) -> None:
        """Same tensor names, shapes and dtypes as the base; no fp8 tensors to merge."""
        mine, theirs = self.folder.tensors, base.tensors
        missing, extra = sorted(set(theirs) - set(mine)), sorted(set(mine) - set(theirs))
        if missing or extra:
            parts = [f"missing {few(missing)}" if missing else "", f"extra {few(extra)}" if extra else ""]
            raise IncompatibleInputsError(
                f"{self.path}: tensor names differ from base {base.path} ({'; '.join(p for p in parts if p)}); "
                "pass checkpoints fine-tuned from this base"
            )
        for name, info in theirs.items():
            other = mine[name]
            if other.shape != info.shape:
                raise IncompatibleInputsError(
                    f"{self.path}: tensor {name} has shape {list(other.shape)} but base {base.path} has "
                    f"{list(info.shape)}; pass checkpoints fine-tuned from this base"
                )
            if other.dtype != info.dtype:
                raise IncompatibleInputsError(
                    f"{self.path}: tensor {name} is {other.dtype} but base {base.path} stores it as {info.dtype} "
                    "(dtype mix); save every checkpoint in the base's dtype (from_pretrained(dtype=...), save_pretrained)"
                )
            if info.dtype.startswith("F8"):
                raise UnsupportedFeatureError(f"{base.path}: tensor {name} is {info.dtype}; fp8 checkpoints cannot be merged, use bf16/fp16/fp32 ones")

    def task_vector(self, name: str, base_weight: torch.Tensor) -> torch.Tensor:
        """θ_i − θ_pre for tensor `name` in float32 (float64 for float64 weights)."""
        compute = torch.promote_types(base_weight.dtype, torch.float32)
        theta = self.folder.load(self.folder.tensors[name]).to(compute)
        return theta.sub_(base_weight.to(compute))

    def files(self) -> list:
        return self.folder.files()

    def __repr__(self) -> str:
        return f"Checkpoint({str(self.path)!r})"
