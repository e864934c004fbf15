"""The README.md written into every output folder: what it is, how it was made, how to load it."""

from __future__ import annotations

from ..pipeline.rank import VLLM_MAX_LORA_RANKS, vllm_rank_bucket


def serving_rank(rank: int) -> int:
    return vllm_rank_bucket(min(rank, VLLM_MAX_LORA_RANKS[-1]))


def model_card(report, base_model: str) -> str:
    """One card for adapters and fused models; `base_model` as the inputs (or the base) name it."""
    adapter = report.sink == "adapter"
    inputs = "\n".join(f"- `{path}`" for path in report.inputs)
    params = ", ".join(f"{k}={v}" for k, v in report.params.items()) or "none"
    if adapter:
        loss = ("exact (no truncation)" if report.lossless else
                f"truncated: {report.energy_kept:.4%} of the update's energy kept, relative error {report.relative_error:.3e}")
        what = (f"- rank {report.rank} on every module, lora_alpha = r (scale 1), no rank_pattern: PEFT and vLLM "
                f"compute the same update\n- {loss}; per-module figures in `merge_report.json`")
        load = ('from peft import PeftModel\nmodel = PeftModel.from_pretrained(base_model, "path/to/this/folder")')
        serve = (f"vllm serve BASE --enable-lora --max-lora-rank {serving_rank(report.rank)} "
                 "--lora-modules merged=path/to/this/folder")
    else:
        what = ("- each merged weight is W + τ computed in float32 and cast back to W's dtype; the other "
                f"{report.tensors_copied} tensors are the base's, byte for byte")
        load = 'from transformers import AutoModelForCausalLM\nmodel = AutoModelForCausalLM.from_pretrained("path/to/this/folder")'
        serve = "vllm serve path/to/this/folder"
    warnings = "".join(f"- warning: {w}\n" for w in report.warnings)
    return f"""---
{'library_name: peft' if adapter else 'library_name: transformers'}
base_model: {base_model}
tags: [lora, seedlora, merge]
---
# Merged {'LoRA adapter' if adapter else 'model'} ({report.method})

Made by [seedlora](https://pypi.org/project/seedlora/) from {len(report.inputs)} input(s):

{inputs}

- method: `{report.method}` ({params}); weights {report.weights}; seed {report.seed}
{what}
- inputs and their hashes in `seedlora_provenance.json`
{warnings}
```python
{load}
```

Serve with vLLM: `{serve}`
"""
