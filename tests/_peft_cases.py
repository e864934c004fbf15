"""The PEFT feature cases of the compatibility matrix, made by PEFT itself on tiny models.

Each case saves a tiny base model (Llama, or GPT-2 for Conv1D) and K adapters created with
`get_peft_model` + `save_pretrained` (PEFT's default save, so embedding targets carry their base
layer copy), every trainable tensor random and non-zero. `peft_effects` then reads what PEFT
itself does with an adapter: for every LoRA layer the change `layer.merge()` makes to the base
weight and bias (exact for DoRA and lora_bias), and the modules_to_save copies.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import (AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification, GPT2Config,
                          GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification)


@dataclass
class Case:
    """A base model folder and adapter folders (one per spec), with what each was made from."""

    name: str
    base: Path
    adapters: list
    specs: list = field(default_factory=list)


def llama_config(tied=False, bias=False) -> LlamaConfig:
    return LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=tied, attention_bias=bias)


def gpt2_config() -> GPT2Config:
    return GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=64, n_positions=32)


def seq_cls_config() -> LlamaConfig:
    """A tiny Llama with a 3-label classification head (`score`), as sequence-classification fine-tunes use."""
    config = llama_config()
    config.num_labels, config.pad_token_id, config.architectures = 3, 0, ["LlamaForSequenceClassification"]
    return config


def save_base(folder: Path, config) -> Path:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        if isinstance(config, GPT2Config):
            model = GPT2LMHeadModel(config)
        elif config.architectures == ["LlamaForSequenceClassification"]:
            model = LlamaForSequenceClassification(config)
        else:
            model = LlamaForCausalLM(config)
    model.save_pretrained(str(folder))
    return folder


def load_base(folder: Path):
    classifier = (AutoConfig.from_pretrained(str(folder)).architectures or [""])[0].endswith("ForSequenceClassification")
    return (AutoModelForSequenceClassification if classifier else AutoModelForCausalLM).from_pretrained(str(folder)).eval()


def make_peft_adapter(base: Path, folder: Path, seed: int, adapter_name: str = "default",
                      dtype: torch.dtype = torch.float32, **lora) -> Path:
    """A PEFT adapter on `base`, every trainable tensor random, saved with PEFT's defaults."""
    from peft import LoraConfig, get_peft_model

    lora.setdefault("r", 4)
    lora.setdefault("lora_alpha", 8)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = get_peft_model(load_base(base), LoraConfig(init_lora_weights=False, **lora), adapter_name=adapter_name)
        for name, param in model.named_parameters():
            if param.requires_grad:
                noise = torch.randn_like(param) * 0.2
                param.data = (param.data + noise if "magnitude" in name or "modules_to_save" in name else noise).to(dtype)
        model.save_pretrained(str(folder), selected_adapters=[adapter_name])
    return folder


def build_case(root: Path, name: str, base_config, specs: list) -> Case:
    """Save the base and one adapter per spec (a dict of LoraConfig fields, plus optional adapter_name/dtype)."""
    base = save_base(root / name / "base", base_config)
    adapters = [make_peft_adapter(base, root / name / f"a{i}", seed=100 + i, **spec) for i, spec in enumerate(specs)]
    return Case(name, base, adapters, specs)


def layer_effects(model, adapter: str) -> dict:
    """{tensor name: change} that PEFT's own merge of `adapter` makes, plus modules_to_save values.

    Weight/bias changes are in the base weights' layout; modules_to_save entries map
    "<module>.<param>" to the adapter's full tensor (prefixed "saved:").
    """
    from peft.tuners.lora import LoraLayer
    from peft.utils.other import ModulesToSaveWrapper

    effects = {}
    with torch.no_grad():
        for full, layer in model.named_modules():
            name = full.removeprefix("base_model.model.")
            if isinstance(layer, LoraLayer) and (adapter in layer.lora_A or adapter in layer.lora_embedding_A):
                base = layer.get_base_layer()
                weight, bias = base.weight.detach().clone(), getattr(base, "bias", None)
                bias = None if bias is None else bias.detach().clone()
                layer.merge(safe_merge=True, adapter_names=[adapter])
                effects[f"{name}.weight"] = (base.weight - weight).double()
                if bias is not None and layer.lora_bias.get(adapter):
                    effects[f"{name}.bias"] = (base.bias - bias).double()
                layer.unmerge()
            elif isinstance(layer, ModulesToSaveWrapper) and adapter in layer.modules_to_save:
                for param, value in layer.modules_to_save[adapter].state_dict().items():
                    effects[f"saved:{name}.{param}"] = value.detach().double().clone()
    return effects


def peft_effects(base: Path, adapter_folder: Path) -> dict:
    """What PEFT computes for one adapter folder loaded on `base` (see layer_effects)."""
    from peft import PeftModel

    model = PeftModel.from_pretrained(load_base(base), str(adapter_folder))
    return layer_effects(model, "default")


def base_tensors(base: Path) -> dict:
    """The base model's parameters as transformers loads them (tied weights resolved), float64."""
    return {name: value.detach().double() for name, value in load_base(base).state_dict().items()}
