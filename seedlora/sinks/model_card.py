"""The README.md model card of every output folder, built with huggingface_hub.ModelCard.

One builder for adapters and fused models. The YAML metadata is what a Hub page shows and
filters on: `base_model`, `base_model_relation: merge`, `library_name` (peft for an adapter,
transformers for a fused model), `tags` (seedlora, merge, lora, the method). The body says what
was merged (inputs with their sha256, weights), the report's summary and warnings, the config
that redoes the merge, and how to load the result with PEFT, transformers and vLLM. Nothing in
it depends on time or host, so the same merge writes the same card.
"""

from __future__ import annotations

from ..pipeline.rank import VLLM_MAX_LORA_RANKS, vllm_rank_bucket

FOLDER = "path/to/this/folder"


def serving_rank(rank: int) -> int:
    return vllm_rank_bucket(min(rank, VLLM_MAX_LORA_RANKS[-1]))


def model_card(report, base_model: str, facts: dict, config: str) -> str:
    """The card text. `base_model` as a Hub id where known; `facts` from sources.identity.input_facts."""
    from huggingface_hub import ModelCard, ModelCardData

    adapter = report.sink == "adapter"
    data = ModelCardData(
        base_model=base_model, base_model_relation="merge", library_name="peft" if adapter else "transformers",
        tags=["seedlora", "merge", "lora", report.method],
    )
    sections = [
        f"# Merged {'LoRA adapter' if adapter else 'model'}: {report.method} of {len(report.inputs)} input(s)",
        f"Made by [seedlora](https://pypi.org/project/seedlora/) {facts.get('seedlora_version', '')} "
        f"(torch {facts.get('torch_version', '')}, peft {facts.get('peft_version', '')}) on base model `{base_model}`.",
        "## Inputs\n\n" + inputs_table(report, facts),
        "## Result\n\n" + summary_lines(report),
        "## Load it\n\n" + (adapter_usage(report, base_model) if adapter else model_usage()),
        "## Configuration\n\nThe merge as `seedlora_config.yaml` in this folder; "
        "`seedlora merge --config seedlora_config.yaml -o again/` writes the same files again.\n\n"
        f"```yaml\n{config.rstrip()}\n```",
    ]
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n\n".join(sections) + "\n"))


def inputs_table(report, facts: dict) -> str:
    rows = ["| input | weight | sha256 |", "|---|---|---|"]
    described = facts.get("inputs", [])
    for i, name in enumerate(report.inputs):
        record = described[i] if i < len(described) else {}
        hashes = record.get("sha256") or {"factors": record.get("sha256_of_factors", "")}
        digest = "<br>".join(f"`{file}` {value}" for file, value in sorted(hashes.items()))
        weight = f"{report.weights[i]:.6g}" if i < len(report.weights) else ""
        rows.append(f"| `{name}` | {weight} | {digest} |")
    return "\n".join(rows)


def summary_lines(report) -> str:
    """The report's summary: method, parameters, what was written and what (if anything) was lost."""
    params = ", ".join(f"{k}={v}" for k, v in report.params.items()) or "none"
    lines = [f"- method `{report.method}` ({params}); seed {report.seed}"]
    if report.sink == "adapter":
        loss = ("exact: no truncation" if report.lossless else
                f"truncated: {report.energy_kept:.4%} of the update's energy kept, relative error {report.relative_error:.3e}")
        lines += [f"- {len(report.modules)} modules, rank {report.rank} on every module, lora_alpha = r (scale 1), "
                  "no rank_pattern: PEFT and vLLM compute the same update",
                  f"- {loss}; per-module figures in `merge_report.json`"]
    else:
        lines += [f"- {report.tensors_merged} tensors merged (W + τ in float32, cast back to W's dtype), "
                  f"{report.tensors_copied} copied from the base byte for byte, {len(report.shards)} shard(s)"]
    lines += [f"- warning: {warning}" for warning in report.warnings]
    lines.append("- inputs, versions and hashes in `seedlora_provenance.json`")
    return "\n".join(lines)


def adapter_usage(report, base_model: str) -> str:
    return f"""With PEFT:

```python
from peft import PeftModel
from transformers import AutoModelForCausalLM
base = AutoModelForCausalLM.from_pretrained("{base_model}")
model = PeftModel.from_pretrained(base, "{FOLDER}")
```

With transformers (PEFT installed; the base is read from `adapter_config.json`):

```python
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained("{FOLDER}")
```

With vLLM:

```bash
vllm serve {base_model} --enable-lora --max-lora-rank {serving_rank(report.rank)} --lora-modules merged={FOLDER}
```"""


def model_usage() -> str:
    return f"""With transformers:

```python
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained("{FOLDER}")
```

With PEFT (a full model: train or load new adapters on it):

```python
from peft import PeftModel
model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained("{FOLDER}"), "some/adapter")
```

With vLLM:

```bash
vllm serve {FOLDER}
```"""
