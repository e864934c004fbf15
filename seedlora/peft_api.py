"""Merge adapters already loaded in a `peft.PeftModel` into a new adapter of that model.

The correct replacement for `PeftModel.add_weighted_adapter`: the same merge methods as the
folder path (the update of the result is the merged update, not the product of averaged
factors), added to the model under a new name that `set_adapter` can activate.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from .adapter import LoraModule
from .errors import IncompatibleInputsError, UnsupportedFeatureError
from .lowrank import LowRank
from .merge import MergeReport, _target_rank, merge_all, resolve_method, validate_compatible

_PREFIX = "base_model.model."


class LoadedAdapter:
    """One adapter living inside a PeftModel, seen through the LoraAdapter interface."""

    def __init__(self, model, adapter_name: str):
        from peft.tuners.lora import LoraLayer

        if adapter_name not in model.peft_config:
            raise IncompatibleInputsError(
                f"adapter '{adapter_name}' is not loaded in this model (loaded: {', '.join(model.peft_config)})"
            )
        self.path = adapter_name
        self.config = model.peft_config[adapter_name].to_dict()
        if self.config.get("use_dora"):
            raise UnsupportedFeatureError(f"adapter '{adapter_name}' uses DoRA; only plain LoRA adapters merge")
        self.layers = {}
        self.modules = {}
        for full_name, layer in model.named_modules():
            if isinstance(layer, LoraLayer) and adapter_name in getattr(layer, "lora_A", {}):
                name = full_name[len(_PREFIX):] if full_name.startswith(_PREFIX) else full_name
                self.layers[name] = layer
                self.modules[name] = self._describe(name, layer, adapter_name)
        self.adapter_name = adapter_name

    @staticmethod
    def _describe(name: str, layer, adapter: str) -> LoraModule:
        A = layer.lora_A[adapter].weight  # r x in
        B = layer.lora_B[adapter].weight  # out x r
        return LoraModule(
            name=name, rank=A.shape[0], alpha=float(layer.lora_alpha[adapter]), scale=float(layer.scaling[adapter]),
            out_features=B.shape[0], in_features=A.shape[1], a_key="", b_key="",
            transposed=bool(getattr(layer, "fan_in_fan_out", False)),
        )

    def factors(self, name: str) -> LowRank:
        layer = self.layers[name]
        A = layer.lora_A[self.adapter_name].weight.detach().to("cpu", torch.float32)
        B = layer.lora_B[self.adapter_name].weight.detach().to("cpu", torch.float32)
        return LowRank(B=B * self.modules[name].scale, A=A.clone())


def merge_peft_adapters(
    model,
    adapter_names: Sequence[str],
    new_adapter_name: str,
    method: str = "linear",
    weights: Optional[Sequence[float]] = None,
    params: Optional[dict] = None,
    rank: Optional[int] = None,
    seed: int = 0,
) -> MergeReport:
    """Add `new_adapter_name` to `model`: the merge of its loaded `adapter_names`.

    Like the folder path, low-rank methods are exact (rank Σr, or Σr+1 for seedlora) unless
    `rank` asks for less; the report says how much energy any truncation kept.
    """
    from peft import LoraConfig

    if new_adapter_name in model.peft_config:
        raise IncompatibleInputsError(f"adapter '{new_adapter_name}' already exists in the model; choose a new name")
    sources = [LoadedAdapter(model, name) for name in adapter_names]
    names = validate_compatible(sources)
    entry, resolved, weight_tensor = resolve_method(method, params, weights, len(sources))
    target_rank = _target_rank(sources, names, entry, rank, vllm=False)
    report = MergeReport(entry.name, resolved, [float(w) for w in weight_tensor], int(seed), target_rank, new_adapter_name)
    merged, report.modules = merge_all(sources, names, entry, weight_tensor, resolved, target_rank, seed)
    config = LoraConfig(
        r=target_rank, lora_alpha=target_rank, target_modules=names, lora_dropout=0.0,
        fan_in_fan_out=bool(sources[0].config.get("fan_in_fan_out", False)), use_rslora=False,
    )
    model.add_adapter(new_adapter_name, config)
    _copy_factors(sources[0].layers, merged, new_adapter_name, model)
    return report


def _copy_factors(layers, merged: dict, new_name: str, model) -> None:
    """Write merged factors into the new adapter's lora_A / lora_B of every layer."""
    with torch.no_grad():
        for name, factors in merged.items():
            layer = model.base_model.model.get_submodule(name)
            lora_A, lora_B = layer.lora_A[new_name].weight, layer.lora_B[new_name].weight
            lora_A.copy_(factors.A.to(lora_A.dtype))
            lora_B.copy_(factors.B.to(lora_B.dtype))
