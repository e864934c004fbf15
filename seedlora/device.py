"""Which device a merge computes on: `auto`, `cpu`, `cuda` or `cuda:N`, checked before any work.

`auto` takes the first CUDA device when torch sees one, else the CPU. Asking for CUDA where there
is none is a one-line error, not a silent fall-back: a user who asked for a GPU wants to know.
Random draws stay on the CPU generator whatever the device (rng.py), so a seed gives the same
masks everywhere; only float rounding of the arithmetic differs between devices.
"""

from __future__ import annotations

import re
from typing import Union

import torch

from .errors import DeviceError

CHOICES = "auto, cpu, cuda or cuda:N"


def resolve_device(spec: Union[str, torch.device, None] = "auto") -> torch.device:
    """The torch.device for `spec` (None = auto); DeviceError naming the fix when unusable."""
    text = "auto" if spec is None else str(spec).strip().lower()
    if text == "auto":
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    if text == "cpu":
        return torch.device("cpu")
    match = re.fullmatch(r"cuda(?::(\d+))?", text)
    if match is None:
        raise DeviceError(f"device {spec!r} is not one of {CHOICES}")
    if not torch.cuda.is_available():
        why = "this torch is built without CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
        raise DeviceError(f"device {text}: CUDA is not available ({why}, torch {torch.__version__}); use --device cpu")
    index = int(match.group(1)) if match.group(1) is not None else torch.cuda.current_device()
    if index >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        raise DeviceError(f"device {text}: there are only {count} CUDA device(s), cuda:0 to cuda:{count - 1}; pick one")
    return torch.device("cuda", index)
