"""PEFT's add_weighted_adapter as users call it, and its result as PEFT itself computes it.

The base model is built from the base folder's config with zero weights (merging adapters never
reads the base weights, and a 7B-shaped base could not be loaded from random files any faster);
the K adapters are loaded with PeftModel.from_pretrained / load_adapter; the merged adapter's
update per module is read back with PEFT's own LoraLayer.get_delta_weight.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch


def peft_model(base: Path, adapters: list):
    """A PeftModel on a zero-weight copy of `base`'s architecture with adapters a0..a{K-1}."""
    from peft import PeftModel
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(str(base))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model = model.to_empty(device="cpu")
    with torch.no_grad():
        for tensor in list(model.parameters()) + list(model.buffers()):
            tensor.zero_()
    model = PeftModel.from_pretrained(model, str(adapters[0]), adapter_name="a0")
    for i, folder in enumerate(adapters[1:], start=1):
        model.load_adapter(str(folder), adapter_name=f"a{i}")
    return model


def add_weighted(model, k: int, combination: str, weights: list, name: str = "merged", **options) -> float:
    """model.add_weighted_adapter(a0..a{K-1}); returns its wall seconds (in process)."""
    started = time.perf_counter()
    model.add_weighted_adapter([f"a{i}" for i in range(k)], list(weights), name,
                               combination_type=combination, **options)
    return time.perf_counter() - started


def seedlora_in_peft(model, k: int, method: str, name: str, **options) -> float:
    """seedlora.merge_peft_adapters on the same PeftModel (public API); its wall seconds."""
    from seedlora import merge_peft_adapters

    started = time.perf_counter()
    merge_peft_adapters(model, [f"a{i}" for i in range(k)], name, method=method, **options)
    return time.perf_counter() - started


def merged_deltas(model, names: list):
    """(module name, {adapter name: update}) per LoRA layer, as PEFT computes them (float32)."""
    from peft.tuners.lora import LoraLayer

    for module_name, layer in model.named_modules():
        if isinstance(layer, LoraLayer) and names[0] in layer.lora_A:
            with torch.no_grad():
                found = {name: layer.get_delta_weight(name).float() for name in names}
            yield module_name.removeprefix("base_model.model."), found


def merged_rank(model, name: str = "merged") -> int:
    return model.peft_config[name].r
