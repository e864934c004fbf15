"""Independent float64 references for the comparisons: updates, their mean, TIES, bf16 rounding.

Nothing here imports seedlora: the exact targets are computed from the input adapters' factors
with safetensors and torch alone, from the formulas in the papers (TIES: trim to the top-k
magnitudes of each update, elect the sign of the sum, average the agreeing entries), so every
tool — seedlora included — is measured against the same yardstick.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors import safe_open

from eval.compare.common import CompareError

PREFIX = "base_model.model."
A_SUFFIX, B_SUFFIX = ".lora_A.weight", ".lora_B.weight"


def adapter_scale(folder: Path) -> float:
    """lora_alpha / r (or / sqrt(r) with rsLoRA); per-module patterns are refused, not guessed."""
    config = json.loads((Path(folder) / "adapter_config.json").read_text())
    if config.get("rank_pattern") or config.get("alpha_pattern"):
        raise CompareError(f"{folder}: rank/alpha patterns are not handled by eval.compare.reference")
    r = config["r"]
    return config["lora_alpha"] / (math.sqrt(r) if config.get("use_rslora") else r)


def read_factors(folder: Path) -> dict:
    """module name -> (A, s·B) in float64, from a PEFT adapter folder."""
    scale, factors = adapter_scale(folder), {}
    with safe_open(str(Path(folder) / "adapter_model.safetensors"), framework="pt") as handle:
        for key in handle.keys():
            if key.endswith(A_SUFFIX):
                name = key[len(PREFIX):-len(A_SUFFIX)]
                b_key = key[:-len(A_SUFFIX)] + B_SUFFIX
                factors[name] = (handle.get_tensor(key).double(), handle.get_tensor(b_key).double() * scale)
    return factors


def updates(adapters: list, name: str) -> list:
    """τ_i = s_i B_i A_i of one module for every adapter (float64, out × in)."""
    return [B @ A for A, B in (a[name] for a in adapters)]


def mean_update(taus: list) -> torch.Tensor:
    return sum(taus) / len(taus)


def trim(tau: torch.Tensor, density: float, rule: str) -> torch.Tensor:
    """Keep the k largest |τ| entries: k = ⌈ρn⌉ (rule "ceil", seedlora) or ⌊ρn⌋ ("floor": PEFT, mergekit)."""
    n = tau.numel()
    k = math.ceil(density * n) if rule == "ceil" else max(1, int(density * n))
    if k >= n:
        return tau.clone()
    flat = tau.reshape(-1)
    keep = torch.topk(flat.abs(), k, sorted=False).indices
    out = torch.zeros_like(flat)
    out[keep] = flat[keep]
    return out.reshape(tau.shape)


def ties(taus: list, density: float, rule: str = "ceil") -> torch.Tensor:
    """TIES (Yadav et al. 2023), weights 1: trim, elect the sign of the total, mean of agreeing entries."""
    trimmed = torch.stack([trim(t, density, rule) for t in taus])
    sign = torch.sign(trimmed.sum(dim=0))
    agree = (torch.sign(trimmed) == sign) & (trimmed != 0)
    count = agree.sum(dim=0)
    total = (trimmed * agree).sum(dim=0)
    return torch.where(count > 0, total / count.clamp(min=1), torch.zeros_like(total))


class ErrorSum:
    """Accumulates Σ‖Y − X‖² and Σ‖X‖² over modules: overall relative error, plus per-module ones."""

    def __init__(self):
        self.diff, self.norm, self.per_module = 0.0, 0.0, {}

    def add(self, name: str, got: torch.Tensor, target: torch.Tensor) -> None:
        diff = float((got.double() - target).square().sum())
        norm = float(target.square().sum())
        self.diff, self.norm = self.diff + diff, self.norm + norm
        self.per_module[name] = math.sqrt(diff / norm) if norm else math.sqrt(diff)

    @property
    def relative(self) -> float:
        return math.sqrt(self.diff / self.norm) if self.norm else math.sqrt(self.diff)

    @property
    def worst(self) -> float:
        return max(self.per_module.values()) if self.per_module else 0.0

    @property
    def median(self) -> float:
        values = sorted(self.per_module.values())
        return values[len(values) // 2] if values else 0.0

    @property
    def best(self) -> float:
        return min(self.per_module.values()) if self.per_module else 0.0


def beyond_rounding(out: torch.Tensor, exact: torch.Tensor, mantissa_bits: int = 8) -> int:
    """Entries of `out` farther from the float64 `exact` than half a step of the output format.

    A correctly rounded result is within half a step (bf16: 8 significant bits) of the exact value,
    so these are the entries a tool got wrong beyond the rounding any writer of that dtype must do.
    """
    exact = exact.double()
    _, exponent = torch.frexp(exact.abs().clamp(min=torch.finfo(torch.bfloat16).tiny))
    half_step = torch.ldexp(torch.ones_like(exact), exponent - (mantissa_bits + 1))
    return int(((out.double() - exact).abs() > half_step * (1 + 1e-9)).sum())
