"""Float64 references of the merged update on a few modules, and the error of every output against them.

Reference τ per method, from the inputs' stored factors in float64 (τ_i = s·B_i·A_i):
- ties: keep the ⌈ρ·n⌉ largest |τ_i| (float64 magnitudes), elect signs by the sum, disjoint mean;
- dare_ties / dare_linear: seedlora's seeded masks (torch.rand < ρ from rng.module_generator, input
  after input), τ_i·m/ρ, then TIES' election or the mean — other tools draw other masks, so their
  error against this reference includes a different random draw;
- selection: the picks seedlora's seeded draws make (read by merging 0/i-coded copies of the inputs),
  applied to the float64 updates;
- linear: the mean; seedlora: the mean mapped to the inputs' mean μ̂ and spread σ̂ (methods.md).
Errors: ‖Y − τ‖/‖τ‖ over the chosen modules together, Y = B·A of an adapter output or W' − W of a
fused one (whose bf16 rounding of W + τ is a floor no bf16 output can beat; it is reported too).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors import safe_open

PREFIX = "base_model.model."


def input_updates(adapters: list, name: str) -> list:
    updates = []
    for folder in adapters:
        config = json.loads((Path(folder) / "adapter_config.json").read_text())
        scale = config["lora_alpha"] / config["r"]
        with safe_open(str(Path(folder) / "adapter_model.safetensors"), framework="pt") as f:
            A = f.get_tensor(f"{PREFIX}{name}.lora_A.weight").double()
            B = f.get_tensor(f"{PREFIX}{name}.lora_B.weight").double() * scale
        updates.append(B @ A)
    return updates


def _ties(sparse: list) -> torch.Tensor:
    score = sum(sparse)
    elected = torch.where(score >= 0, 1.0, -1.0).double()
    total, count = torch.zeros_like(score), torch.zeros_like(score)
    for s in sparse:
        agree = (s.sign() == elected) & (s != 0)
        total += torch.where(agree, s, 0.0)
        count += agree
    return total / count.clamp(min=1)


def _selection(adapters_updates: list, name: str, seed: int, resample: int) -> torch.Tensor:
    from seedlora import get_method
    from seedlora.rng import module_generator

    coded = [((u != 0).float() * (i + 1)) for i, u in enumerate(adapters_updates)]
    method = get_method("selection")
    k = len(coded)
    picks = method.merge_deltas(coded, method.resolve_weights(None, k), {"resample": resample},
                                module_generator(seed, name))
    stack = torch.stack(adapters_updates)
    index = (picks.long() - 1).clamp(min=0)
    return torch.where(picks > 0, stack.gather(0, index[None]).squeeze(0), 0.0)


def reference(method: str, adapters: list, name: str, seed: int = 0, density: float = 0.2, resample: int = 1):
    """The float64 merged update of module `name` (see module docstring)."""
    from seedlora.methods.sparsify import keep_count
    from seedlora.rng import module_generator

    updates = input_updates(adapters, name)
    if method == "linear":
        return sum(updates) / len(updates)
    if method == "seedlora":
        average = sum(updates) / len(updates)
        mean = sum(float(u.mean()) for u in updates) / len(updates)
        spread = sum(float(u.std(unbiased=False)) for u in updates) / len(updates)
        return spread * (average - average.mean()) / average.std(unbiased=False) + mean
    if method == "selection":
        return _selection(updates, name, seed, resample)
    if method == "ties":
        k = keep_count(updates[0].numel(), density)
        sparse = []
        for u in updates:
            kept = torch.zeros(u.numel(), dtype=torch.bool)
            kept[torch.topk(u.reshape(-1).abs(), k).indices] = True
            sparse.append(u * kept.view(u.shape))
        return _ties(sparse)
    g = module_generator(seed, name)
    sparse = [u * (torch.rand(u.shape, generator=g) < density) / density for u in updates]
    return _ties(sparse) if method == "dare_ties" else sum(sparse) / len(sparse)


def adapter_update(folder: Path, name: str) -> torch.Tensor:
    config = json.loads((Path(folder) / "adapter_config.json").read_text())
    scale = config["lora_alpha"] / config["r"]
    with safe_open(str(Path(folder) / "adapter_model.safetensors"), framework="pt") as f:
        B = f.get_tensor(f"{PREFIX}{name}.lora_B.weight").double() * scale
        return B @ f.get_tensor(f"{PREFIX}{name}.lora_A.weight").double()


def model_tensor(folder: Path, key: str) -> torch.Tensor:
    for file in sorted(Path(folder).glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            if key in f.keys():
                return f.get_tensor(key)
    raise KeyError(f"{folder}: no tensor {key}")


def fused_update(folder: Path, base: Path, name: str) -> torch.Tensor:
    key = f"{name}.weight"
    return model_tensor(folder, key).double() - model_tensor(base, key).double()


def bf16_floor(base: Path, name: str, target: torch.Tensor) -> tuple:
    """(‖bf16(W + τ) − W − τ‖², ‖τ‖²): the error of the best possible bf16 fused output."""
    weight = model_tensor(base, f"{name}.weight").double()
    rounded = (weight + target).to(torch.bfloat16).double() - weight
    return float((rounded - target).square().sum()), float(target.square().sum())


def relative(pairs: list) -> float:
    """sqrt(Σ err² / Σ norm²) over modules."""
    err, norm = sum(p[0] for p in pairs), sum(p[1] for p in pairs)
    return math.sqrt(err / norm) if norm else float("nan")


def error_pair(update: torch.Tensor, target: torch.Tensor) -> tuple:
    return float((update - target).square().sum()), float(target.square().sum())
