"""Write a merge as a new adapter inside a `peft.PeftModel`: the correct add_weighted_adapter.

The new adapter is plain LoRA of one uniform rank with lora_alpha = r (scale 1), targeting
exactly the merged modules (embeddings included, with lora_bias where the inputs had LoRA biases
and modules_to_save where they saved modules); its factors are the merged update, not the
product of averaged factors. `set_adapter(name)` activates it.
"""

from __future__ import annotations

from typing import Optional

import torch

from .. import peft_format as fmt
from ..errors import IncompatibleInputsError
from ..pipeline.plan import MergePlan
from ..pipeline.rank import factor_modules, rank_choice, upper_rank, warn_if_dense_energy_low
from ..pipeline.report import MergeReport
from .adapter_folder import refuse_unwritable


class PeftModelSink:
    """Adapter `adapter_name` added to `model` (a PeftModel), holding the merge."""

    kind = "peft_model"

    def __init__(self, model, adapter_name: str, rank=None, energy: Optional[float] = None):
        self.model, self.adapter_name, self.rank, self.energy = model, adapter_name, rank, energy
        self.output = adapter_name

    def prepare(self, plan: MergePlan) -> None:
        if self.adapter_name in getattr(self.model, "peft_config", {}):
            raise IncompatibleInputsError(f"adapter '{self.adapter_name}' already exists in the model; choose a new name")
        refuse_unwritable(plan, self.rank)
        self.choice = rank_choice(plan, self.rank, vllm=False, energy=self.energy)
        self.target_rank = upper_rank(plan, self.choice)  # what a dry run estimates with

    def write(self, plan: MergePlan, merger, report: MergeReport, facts) -> None:
        from peft import LoraConfig

        rank, merged = factor_modules(plan, merger, self.choice, report)
        warn_if_dense_energy_low(plan, report, self.choice)
        saved = {module: merger.saved(module) for module in plan.saved}
        first = plan.sources[0].config
        config = LoraConfig(
            r=rank, lora_alpha=rank, target_modules=sorted(plan.modules), lora_dropout=0.0,
            fan_in_fan_out=bool(first.get("fan_in_fan_out", False)), use_rslora=False,
            lora_bias=any(t.bias for t in plan.modules.values()), modules_to_save=sorted(saved) or None,
        )
        self.model.add_adapter(self.adapter_name, config)
        with torch.no_grad():
            for name, (factors, bias) in merged.items():
                copy_factors(self.model, name, self.adapter_name, factors, bias)
            for module, tensors in saved.items():
                copy_saved(self.model, module, self.adapter_name, tensors)


def _layer(model, name: str):
    return model.base_model.model.get_submodule(name)


def copy_factors(model, name: str, adapter: str, factors, bias) -> None:
    """Write merged factors (and bias) into the new adapter's lora_A / lora_B of module `name`."""
    layer = _layer(model, name)
    if adapter in layer.lora_A:
        lora_A, lora_B = layer.lora_A[adapter].weight, layer.lora_B[adapter].weight
    else:  # embedding layers keep their factors as plain Parameters
        lora_A, lora_B = layer.lora_embedding_A[adapter], layer.lora_embedding_B[adapter]
    lora_A.copy_(factors.A.to(lora_A.dtype))
    lora_B.copy_(factors.B.to(lora_B.dtype))
    if getattr(layer, "lora_bias", {}).get(adapter):
        target = layer.lora_B[adapter].bias
        target.copy_((bias if bias is not None else torch.zeros(target.shape)).to(target.dtype))


def copy_saved(model, module: str, adapter: str, tensors: dict) -> None:
    """Load merged modules_to_save tensors into the new adapter's copy of `module`."""
    wrapper = model.base_model.model.get_submodule(fmt.strip_prefix(module))
    copy = wrapper.modules_to_save[adapter]
    state = {param: value.to(copy.state_dict()[param].dtype) for param, value in tensors.items()}
    copy.load_state_dict(state, strict=True)
