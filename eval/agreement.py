"""How much K seed adapters agree, and how much SeedLoRA's rescale will stretch their average.

Computed densely in float64 from the adapter files themselves (safetensors + adapter_config,
scale = lora_alpha / r, or / sqrt(r) with rsLoRA), independently of seedlora's factor algebra:
- per module, the mean pairwise cosine similarity of the updates τ_i = scale · B_i A_i;
- per module, SeedLoRA's factor a = σ̂ / σ(τ_avg), with σ̂ the mean of the inputs' entry
  standard deviations and τ_avg their average (methods.md). Seeds that agree give a ≈ 1;
  unrelated updates of equal size give a ≈ √K, since averaging them shrinks the spread.
Reported as the mean and median over modules.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import torch
from safetensors import safe_open


def _updates(folder: Path) -> dict[str, torch.Tensor]:
    """Module name -> dense float64 update of one PEFT adapter folder."""
    config = json.loads((folder / "adapter_config.json").read_text())
    r, alpha = config["r"], config["lora_alpha"]
    scale = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
    out = {}
    with safe_open(str(folder / "adapter_model.safetensors"), "pt") as handle:
        keys = set(handle.keys())
        for key in sorted(keys):
            if key.endswith(".lora_A.weight"):
                name = key[: -len(".lora_A.weight")]
                A = handle.get_tensor(key).double()
                B = handle.get_tensor(name + ".lora_B.weight").double()
                out[name] = scale * B @ A
    return out


def module_agreement(updates: list[torch.Tensor]) -> tuple[float, float | None]:
    """(mean pairwise cosine, SeedLoRA's a) of one module's K updates."""
    k = len(updates)
    flat = [u.reshape(-1) for u in updates]
    norms = [float(f.norm()) for f in flat]
    cosines = [float(flat[i] @ flat[j]) / (norms[i] * norms[j]) if norms[i] * norms[j] > 0 else 0.0
               for i in range(k) for j in range(i + 1, k)]
    reference = sum(float(f.std(unbiased=False)) for f in flat) / k
    spread = float((sum(flat) / k).std(unbiased=False))
    return sum(cosines) / len(cosines), (reference / spread if spread > 0 else None)


def agreement(folders: list[str | Path]) -> dict:
    """Mean/median over modules of the seeds' pairwise cosine and of SeedLoRA's a."""
    per_adapter = [_updates(Path(f)) for f in folders]
    names = sorted(set.intersection(*(set(u) for u in per_adapter)))
    cosines, factors = [], []
    for name in names:
        cosine, a = module_agreement([u[name] for u in per_adapter])
        cosines.append(cosine)
        if a is not None:
            factors.append(a)
    return {
        "k": len(folders), "modules": len(names),
        "cosine_mean": statistics.fmean(cosines), "cosine_median": statistics.median(cosines),
        "a_mean": statistics.fmean(factors) if factors else None, "a_median": statistics.median(factors) if factors else None,
        "sqrt_k": math.sqrt(len(folders)),
    }
