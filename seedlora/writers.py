"""Write a merged adapter as a PEFT adapter folder, with its report, provenance and card.

The adapter has one uniform rank r, the scale folded into B and lora_alpha = r (scale 1),
no rank/alpha patterns and no rsLoRA: PEFT and vLLM (which ignores rank_pattern) both compute
exactly the merged update. Output goes through a staged folder, so it appears whole or not at all.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import torch
from safetensors.torch import save_file

from .adapter import CONFIG_NAME, KEY_PREFIX, SAFETENSORS_NAME, LoraAdapter
from .output import staged_output
from .provenance import provenance_record
from .vllm_compat import VLLM_MAX_LORA_RANKS

REPORT_NAME = "merge_report.json"
PROVENANCE_NAME = "seedlora_provenance.json"


def adapter_state_dict(merged: dict, dtype: torch.dtype) -> dict:
    """PEFT safetensors keys for each module's factors, contiguous, in `dtype`."""
    state = {}
    for name, factors in merged.items():
        state[f"{KEY_PREFIX}{name}.lora_A.weight"] = factors.A.to(dtype).contiguous()
        state[f"{KEY_PREFIX}{name}.lora_B.weight"] = factors.B.to(dtype).contiguous()
    return state


def merged_adapter_config(adapters: Sequence[LoraAdapter], modules: Sequence[str], rank: int) -> dict:
    """A LoRA config that PEFT and vLLM read as: every module rank `rank`, scale exactly 1.

    Written as a plain dict (PEFT fills any field it lacks with its default), so writing an
    adapter does not import peft/transformers, which costs seconds and no accuracy.
    """
    first = adapters[0].config
    same_targets = all(a.config.get("target_modules") == first.get("target_modules") for a in adapters)
    targets = first.get("target_modules") if same_targets and first.get("target_modules") else None
    if targets is None or targets == "all-linear":
        targets = sorted({name.rsplit(".", 1)[-1] for name in modules})
    return {
        "peft_type": "LORA",
        "task_type": first.get("task_type"),
        "base_model_name_or_path": first.get("base_model_name_or_path"),
        "r": rank,
        "lora_alpha": rank,
        "target_modules": sorted(targets) if isinstance(targets, (list, set, tuple)) else targets,
        "rank_pattern": {},
        "alpha_pattern": {},
        "use_rslora": False,
        "use_dora": False,
        "lora_dropout": 0.0,
        "bias": "none",
        "fan_in_fan_out": bool(first.get("fan_in_fan_out", False)),
        "layers_to_transform": first.get("layers_to_transform"),
        "layers_pattern": first.get("layers_pattern"),
        "modules_to_save": None,
        "init_lora_weights": True,
        "inference_mode": True,
    }


def write_adapter(output, adapters, merged: dict, report, dtype: torch.dtype, overwrite: bool, facts=None) -> Path:
    """Write the whole output folder atomically; returns its path (`facts`: provenance.input_facts)."""
    config = merged_adapter_config(adapters, list(merged), report.rank)
    state = adapter_state_dict(merged, dtype)
    with staged_output(output, overwrite) as staging:
        _write_json(staging / CONFIG_NAME, config)
        save_file(state, str(staging / SAFETENSORS_NAME), metadata={"format": "pt"})
        _write_json(staging / REPORT_NAME, report.to_dict())
        _write_json(staging / PROVENANCE_NAME, provenance_record(adapters, report, facts=facts))
        (staging / "README.md").write_text(model_card(adapters, report))
    return Path(output)


def _write_json(path: Path, data) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True, default=_jsonable) + "\n")


def _jsonable(value):
    if isinstance(value, (set, tuple)):
        return sorted(value)
    return str(value)


def model_card(adapters, report) -> str:
    """A short README for the output folder: what it is, how it was made, how to load it."""
    inputs = "\n".join(f"- `{a.path}` (r={max(m.rank for m in a.modules.values())})" for a in adapters)
    params = ", ".join(f"{k}={v}" for k, v in report.params.items()) or "none"
    loss = (
        "exact (no truncation)"
        if report.lossless
        else f"truncated: {report.energy_kept:.4%} of the update's energy kept, relative error {report.relative_error:.3e}"
    )
    base = adapters[0].base_model or "the base model the inputs were trained on"
    return f"""---
library_name: peft
base_model: {base}
tags: [lora, seedlora, merge]
---
# Merged LoRA adapter ({report.method})

Made by [seedlora](https://pypi.org/project/seedlora/) from {len(adapters)} adapters:

{inputs}

- method: `{report.method}` ({params}); weights {report.weights}; seed {report.seed}
- rank {report.rank} on every module, lora_alpha = r (scale 1), no rank_pattern: PEFT and vLLM compute the same update
- {loss}; per-module figures in `merge_report.json`, inputs and their hashes in `seedlora_provenance.json`

```python
from peft import PeftModel
model = PeftModel.from_pretrained(base_model, "path/to/this/folder")
```

Serve with vLLM: `vllm serve BASE --enable-lora --max-lora-rank {min(b for b in VLLM_MAX_LORA_RANKS if b >= min(report.rank, 512))} --lora-modules merged=path/to/this/folder`
"""
