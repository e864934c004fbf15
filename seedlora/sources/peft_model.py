"""Adapters already loaded in a `peft.PeftModel` as merge sources.

`PeftModelAdapter(model, name)` describes adapter `name` from the model's LoRA layers (linear,
Conv1D, embedding; lora_bias; DoRA magnitudes) and its ModulesToSaveWrapper copies, exactly as
`LoraAdapter` describes a folder, so the same pipeline merges either. The model is never
modified here; tensors are copied out one module at a time.
"""

from __future__ import annotations

import hashlib
from typing import Optional

import torch

from .. import peft_format as fmt
from ..errors import IncompatibleInputsError, UnsupportedFeatureError
from ..lowrank import LowRank
from .base import LoraModule, check_finite


def plain_config(config) -> dict:
    """A PEFT config object as a plain dict with plain values (enums to their values)."""
    data = config.to_dict()
    return {k: getattr(v, "value", v) for k, v in data.items()}


class PeftModelAdapter:
    """One adapter living inside a PeftModel, seen through the same interface as LoraAdapter."""

    origin = None  # it lives in a model, not in a folder fetched from the Hub

    def __init__(self, model, adapter_name: str):
        from peft.tuners.lora import LoraLayer
        from peft.utils.other import ModulesToSaveWrapper

        if adapter_name not in getattr(model, "peft_config", {}):
            loaded = ", ".join(getattr(model, "peft_config", {})) or "none"
            raise IncompatibleInputsError(f"adapter '{adapter_name}' is not loaded in this model (loaded: {loaded})")
        self.model, self.adapter_name = model, adapter_name
        self.config = plain_config(model.peft_config[adapter_name])
        refused = fmt.refused_features(self.config)
        if refused:
            raise UnsupportedFeatureError(f"adapter '{adapter_name}': not mergeable: {'; '.join(refused)}")
        self.layers, self.modules, self.saved, self.base_copies = {}, {}, {}, {}
        self._wrappers, self._originals = {}, {}
        for full_name, layer in model.named_modules():
            name = fmt.strip_prefix(full_name)
            if isinstance(layer, LoraLayer) and self._holds(layer):
                self.layers[name] = layer
                self.modules[name] = self._describe(name, layer)
            elif isinstance(layer, ModulesToSaveWrapper) and adapter_name in layer.modules_to_save:
                self._wrappers[name] = layer.modules_to_save[adapter_name]
                self._originals[name] = layer.original_module
                self.saved[name] = {param: param for param, _ in self._wrappers[name].state_dict().items()}
        self.dtypes = {str(self._factor(name, "A").dtype).removeprefix("torch.") for name in self.modules}

    @property
    def label(self) -> str:
        return f"adapter '{self.adapter_name}' of the PeftModel"

    @property
    def path(self) -> str:
        return self.adapter_name

    @property
    def base_model(self) -> Optional[str]:
        return self.config.get("base_model_name_or_path")

    def _holds(self, layer) -> bool:
        return self.adapter_name in layer.lora_A or self.adapter_name in getattr(layer, "lora_embedding_A", {})

    def _factor(self, name: str, which: str) -> torch.Tensor:
        layer = self.layers[name]
        if self.adapter_name in layer.lora_A:
            return getattr(layer, f"lora_{which}")[self.adapter_name].weight
        return getattr(layer, f"lora_embedding_{which}")[self.adapter_name]  # embedding: plain Parameters

    def _describe(self, name: str, layer) -> LoraModule:
        A, B = self._factor(name, "A"), self._factor(name, "B")
        embedding = self.adapter_name not in layer.lora_A
        return LoraModule(
            name=name, rank=A.shape[0], alpha=float(layer.lora_alpha[self.adapter_name]),
            scale=float(layer.scaling[self.adapter_name]), out_features=B.shape[0], in_features=A.shape[1],
            embedding=embedding, fan_in_fan_out=bool(getattr(layer, "fan_in_fan_out", False)) and not embedding,
            bias=bool(getattr(layer, "lora_bias", {}).get(self.adapter_name)),
            dora=bool(getattr(layer, "use_dora", {}).get(self.adapter_name)),
        )

    def factors(self, name: str) -> LowRank:
        where = f"{self.label}: module {name}"
        A = self._factor(name, "A").detach().to("cpu", torch.float32).clone()
        B = self._factor(name, "B").detach().to("cpu", torch.float32) * self.modules[name].scale
        return LowRank(B=check_finite(B, where, "lora_B"), A=check_finite(A, where, "lora_A"))

    def bias(self, name: str) -> Optional[torch.Tensor]:
        if not self.modules[name].bias:
            return None
        bias = self.layers[name].lora_B[self.adapter_name].bias.detach().to("cpu", torch.float32)
        return check_finite(bias * self.modules[name].scale, f"{self.label}: module {name}", "lora_B.bias")

    def magnitude(self, name: str) -> torch.Tensor:
        vector = self.layers[name].lora_magnitude_vector[self.adapter_name].weight
        return vector.detach().to("cpu", torch.float32)

    def base_weight(self, name: str) -> torch.Tensor:
        """The base layer's weight as stored in the model (the layout of the base checkpoint)."""
        return self.layers[name].get_base_layer().weight.detach().to("cpu")

    def saved_tensor(self, module: str, param: str) -> torch.Tensor:
        return self._wrappers[module].state_dict()[param].detach().to("cpu")

    def saved_base(self, module: str, param: str) -> torch.Tensor:
        """The base model's value of a modules_to_save tensor (the wrapper's original module)."""
        return self._originals[module].state_dict()[param].detach().to("cpu")

    def saved_shape(self, module: str, param: str) -> tuple:
        return tuple(self._wrappers[module].state_dict()[param].shape)

    def files(self) -> list:
        return []

    def content_digest(self) -> str:
        """sha256 over this adapter's factor tensors, in module order (its identity for provenance)."""
        digest = hashlib.sha256()
        for name in self.modules:
            for which in ("A", "B"):
                tensor = self._factor(name, which).detach().to("cpu").contiguous()
                digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
        return digest.hexdigest()

    def __repr__(self) -> str:
        return f"PeftModelAdapter({self.adapter_name!r}, modules={len(self.modules)})"
