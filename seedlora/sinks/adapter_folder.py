"""Write a merge as a PEFT adapter folder, with its report, provenance and card.

Every module gets one uniform rank r, the scale folded into B and lora_alpha = r (scale 1), no
rank/alpha patterns and no rsLoRA: PEFT and every vLLM release compute exactly the merged update.
Embedding modules keep PEFT's embedding keys, LoRA biases go to lora_B.bias, modules_to_save
tensors and save_embedding_layers copies are written as PEFT saved them, so PEFT loads the
output as it loaded the inputs. The folder appears whole or not at all (sinks.staging).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import torch
from safetensors.torch import save_file

from .. import peft_format as fmt
from ..errors import MethodError, UnsupportedFeatureError
from ..pipeline.plan import MergePlan
from ..pipeline.rank import cuts_anything, target_rank, to_factors
from ..pipeline.report import MergeReport
from .config_file import CONFIG_NAME as SETTINGS_NAME, config_text
from .model_card import model_card
from .provenance import provenance_record
from .staging import check_output_free, check_output_path, staged_output

REPORT_NAME = "merge_report.json"
PROVENANCE_NAME = "seedlora_provenance.json"
CARD_NAME = "README.md"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class AdapterFolderSink:
    """A new PEFT adapter folder at `output`. `rank`/`vllm` choose the uniform rank, `dtype` the factors' dtype."""

    kind = "adapter"

    def __init__(self, output, overwrite: bool = False, rank: Optional[int] = None, dtype: Optional[str] = None,
                 vllm: bool = False):
        self.output, self.overwrite, self.rank, self.dtype_name, self.vllm = Path(output), overwrite, rank, dtype, vllm

    def prepare(self, plan: MergePlan) -> None:
        """Everything checkable before compute: output path, rank, dtype, features PEFT cannot hold."""
        check_output_path(self.output, protected_paths(plan))
        check_output_free(self.output, self.overwrite)
        refuse_unwritable(plan, self.rank)
        self.target_rank = target_rank(plan, self.rank, self.vllm)
        self.dtype = output_dtype(plan, self.dtype_name)

    def write(self, plan: MergePlan, merger, report: MergeReport, facts) -> None:
        report.rank = self.target_rank
        state = self._factor_state(plan, merger, report)
        for module in plan.saved:
            for param, tensor in merger.saved(module).items():
                stored = self.dtype if self.dtype_name else saved_dtype(plan, module, param)
                state[fmt.saved_key(module, param)] = tensor.to(stored).contiguous()
        for module in plan.copies:
            state[fmt.base_copy_key(module)] = merger.copy(module).contiguous()
        targets, layers = output_targets(plan)
        config = fmt.adapter_config(plan.sources[0].config, self.target_rank, targets, layers=layers,
                                    lora_bias=any(t.bias for t in plan.modules.values()), modules_to_save=list(plan.saved))
        settings = config_text(plan, fuse=False, rank=self.rank, dtype=self.dtype_name, vllm=self.vllm)
        with staged_output(self.output, self.overwrite) as staging:
            write_json(staging / fmt.CONFIG_NAME, config)
            save_file(state, str(staging / fmt.WEIGHTS_NAME), metadata={"format": "pt"})
            write_json(staging / REPORT_NAME, report.to_dict())
            write_json(staging / PROVENANCE_NAME, provenance_record(report, facts.result()))
            (staging / SETTINGS_NAME).write_text(settings)
            (staging / CARD_NAME).write_text(model_card(report, base_model_name(plan), facts.result(), settings))

    def _factor_state(self, plan: MergePlan, merger, report: MergeReport) -> dict:
        state, cuts = {}, cuts_anything(plan, self.target_rank)
        with_bias = any(t.bias for t in plan.modules.values())
        for name, merged in merger.each_module(plan.modules, f"merging ({plan.method.name})"):
            factors, result = to_factors(plan, name, merged.weight, self.target_rank, weigh=cuts)
            result.stats = merged.stats
            report.modules.append(result)
            a_key, b_key = fmt.factor_keys(name, plan.modules[name].embedding)
            state[a_key] = factors.A.to(self.dtype).contiguous()
            state[b_key] = factors.B.to(self.dtype).contiguous()
            if with_bias:  # PEFT gives every module a bias under lora_bias=True: zero where none was merged
                bias = merged.bias if merged.bias is not None else torch.zeros(factors.B.shape[0])
                state[fmt.bias_key(name)] = bias.to(self.dtype).contiguous()
        return state


def protected_paths(plan: MergePlan) -> list:
    """Input folders and the base: an output must not be, contain or lie inside any of them."""
    paths = [s.path for s in plan.sources if isinstance(s.path, Path)]
    return paths + ([plan.base.path] if plan.base is not None else [])


def refuse_unwritable(plan: MergePlan, rank: Optional[int]) -> None:
    """Merges a PEFT adapter cannot hold: checkpoints, DoRA without a chosen rank, bias on embeddings."""
    if plan.checkpoints:
        raise UnsupportedFeatureError("full fine-tuned checkpoints merge into a model folder; add --fuse (fuse=True) with --base")
    dora = [t.name for t in plan.modules.values() if t.dora]
    if dora and rank is None:
        raise UnsupportedFeatureError(
            f"DoRA inputs (e.g. module {dora[0]}): their merged update is not low-rank, so an adapter can hold it only "
            "truncated; use --fuse --base BASE_DIR for the exact merged model, or pass --rank N for a plain LoRA of rank N"
        )
    if any(t.bias for t in plan.modules.values()) and any(t.embedding for t in plan.modules.values()):
        raise UnsupportedFeatureError(
            "the merge has LoRA biases and embedding modules; PEFT cannot load lora_bias=True on embedding layers: "
            "merge them separately or use --fuse"
        )


def output_targets(plan: MergePlan) -> tuple:
    """(target_modules, layers) for the output config: the inputs' own settings when they all
    share them and adapt the same modules, else the exact list of merged module names."""
    keys = ("target_modules", "layers_to_transform", "layers_pattern", "exclude_modules")
    configs = [s.config for s in plan.sources]
    same = all(set(s.modules) == set(plan.modules) for s in plan.sources) and all(
        str(c.get(k)) == str(configs[0].get(k)) for c in configs for k in keys)
    targets = configs[0].get("target_modules")
    if not same or not targets or configs[0].get("exclude_modules"):
        return sorted(plan.modules), {}
    if targets == "all-linear":
        targets = sorted({name.rsplit(".", 1)[-1] for name in plan.modules})
    layers = {k: configs[0].get(k) for k in ("layers_to_transform", "layers_pattern")}
    return (sorted(targets) if isinstance(targets, (list, tuple, set)) else targets), layers


def output_dtype(plan: MergePlan, dtype: Optional[str]) -> torch.dtype:
    """The inputs' common factor dtype (float32 if they differ) unless the user chose one."""
    if dtype is not None:
        if dtype not in DTYPES:
            raise MethodError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        return DTYPES[dtype]
    found = set().union(*(s.dtypes for s in plan.sources))
    return DTYPES[found.pop()] if len(found) == 1 and next(iter(found)) in DTYPES else torch.float32


def saved_dtype(plan: MergePlan, module: str, param: str) -> torch.dtype:
    holder = next(s for s in plan.sources if module in s.saved)
    return holder.saved_tensor(module, param).dtype


def base_model_name(plan: MergePlan) -> str:
    """The base as a Hub id where one is known: --base from the Hub, else what the inputs name, else --base's path."""
    origin = getattr(plan.base, "origin", None)
    if origin is not None:
        return origin.repo_id
    named = next((s.base_model for s in plan.sources if s.base_model), None)
    return named or (str(plan.base.path) if plan.base is not None else "unknown")


def write_json(path: Path, data) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True, default=_jsonable) + "\n")


def _jsonable(value):
    if isinstance(value, (set, tuple)):
        return sorted(value)
    return str(value)
