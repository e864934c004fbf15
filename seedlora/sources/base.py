"""What every LoRA source provides: adapted modules described from headers, tensors on demand.

A source is an adapter folder (`LoraAdapter`) or an adapter loaded in a PeftModel
(`PeftModelAdapter`). Both describe each adapted module with a `LoraModule` before any tensor
data is read, and hand out one module's tensors at a time, in float32 with the LoRA scale
folded in, so the pipeline never needs to know where the numbers came from.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
import torch

from ..errors import AdapterFormatError


@dataclass(frozen=True)
class LoraModule:
    """One adapted module: its resolved rank and scale, the update's shape and layout."""

    name: str  # e.g. model.layers.0.self_attn.q_proj (no base_model.model. prefix)
    rank: int
    alpha: float
    scale: float
    out_features: int  # rows of the update B @ A
    in_features: int
    embedding: bool = False  # lora_embedding_A/B: the base weight is (in x out)
    fan_in_fan_out: bool = False  # Conv1D: the base weight is (in x out)
    bias: bool = False  # has lora_B.bias (lora_bias=True)
    dora: bool = False  # has a DoRA magnitude vector

    @property
    def shape(self) -> tuple[int, int]:
        """Shape of the update B @ A (out x in), whatever the base weight layout."""
        return (self.out_features, self.in_features)

    @property
    def transposed(self) -> bool:
        """True when the base weight stores the update transposed (in x out)."""
        return self.embedding or self.fan_in_fan_out

    @property
    def weight_shape(self) -> tuple[int, int]:
        """Shape of the base weight this module updates."""
        return (self.in_features, self.out_features) if self.transposed else self.shape


def check_finite(tensor: torch.Tensor, where: str, label: str) -> torch.Tensor:
    """`tensor` itself; AdapterFormatError naming `where` if any entry is NaN or Inf."""
    # a finite sum proves every entry finite; only a non-finite sum needs the full check
    if not math.isfinite(float(tensor.sum())) and not bool(torch.isfinite(tensor).all()):
        raise AdapterFormatError(f"{where} {label} contains NaN or Inf; this adapter is broken, retrain or drop it")
    return tensor


def dora_update(weight: torch.Tensor, update: torch.Tensor, magnitude: torch.Tensor) -> torch.Tensor:
    """DoRA's full update W' − W in the update's orientation (out x in), float32.

    PEFT (tuners/lora/variants.py, merge_safe): V = W + s·B·A, W' = (m / ‖V‖_row) ⊙ V, where the
    norm runs over each output row of V; `update` is s·B·A and `weight` is W, both out x in.
    """
    combined = weight.float() + update
    norms = torch.linalg.vector_norm(combined, dim=1)
    return combined.mul_((magnitude.float() / norms)[:, None]).sub_(weight.float())


def few(items, shown: int = 3) -> str:
    """'a, b, c (+N more)': a short list for one-line messages."""
    items = list(items)
    more = f" (+{len(items) - shown} more)" if len(items) > shown else ""
    return ", ".join(map(str, items[:shown])) + more

