"""Build tiny base models and real PEFT adapters on them, for tests (no hub access).

Adapters are made by PEFT itself (get_peft_model + save_pretrained) with random, non-zero
lora_B, so everything the tests read is exactly what users' PEFT adapters look like.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def tiny_llama_config(hidden: int = 32, layers: int = 2, vocab: int = 64, intermediate: int = 48) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False,
    )


def tiny_llama(seed: int = 0, **config) -> LlamaForCausalLM:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return LlamaForCausalLM(tiny_llama_config(**config)).eval()


def save_tiny_llama(folder, seed: int = 0, **config) -> Path:
    model = tiny_llama(seed, **config)
    model.save_pretrained(str(folder))
    return Path(folder)


def make_adapter(
    folder,
    base_seed: int = 0,
    seed: int = 1,
    r: int = 4,
    alpha: float = 8,
    targets=("q_proj", "v_proj"),
    dtype: torch.dtype = torch.float32,
    base_config: dict | None = None,
    **lora_kwargs,
) -> Path:
    """A PEFT LoRA adapter on tiny_llama(base_seed) with random A and B, saved to `folder`."""
    from peft import LoraConfig, get_peft_model

    model = tiny_llama(base_seed, **(base_config or {}))
    config = LoraConfig(r=r, lora_alpha=alpha, target_modules=list(targets), init_lora_weights=False, **lora_kwargs)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        peft_model = get_peft_model(model, config)
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.data = (torch.randn_like(param) * 0.2).to(dtype)
    peft_model.save_pretrained(str(folder))
    return Path(folder)


def make_adapters(root, ranks=(2, 4, 8), **kwargs) -> list:
    """K adapters (one per rank/seed) on the same tiny base, like seed runs of one task."""
    root = Path(root)
    return [make_adapter(root / f"adapter{i}", seed=10 + i, r=r, alpha=2 * r, **kwargs) for i, r in enumerate(ranks)]


def peft_deltas(adapter_folder, base_seed: int = 0, base_config: dict | None = None) -> dict:
    """Each module's update as PEFT itself computes it (get_delta_weight), keyed like seedlora."""
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer

    model = PeftModel.from_pretrained(tiny_llama(base_seed, **(base_config or {})), str(adapter_folder))
    deltas = {}
    for name, layer in model.named_modules():
        if isinstance(layer, LoraLayer) and "default" in layer.lora_A:
            deltas[name.removeprefix("base_model.model.")] = layer.get_delta_weight("default").detach().float()
    return deltas


def read_model_tensors(folder) -> dict:
    """Every tensor of a model folder, read with the safetensors library."""
    from safetensors import safe_open

    tensors = {}
    for file in sorted(Path(folder).glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as handle:
            tensors.update({key: handle.get_tensor(key) for key in handle.keys()})
    return tensors


def merged_update(adapter_folders, module: str, method: str, params=None, seed: int = 0) -> torch.Tensor:
    """The pipeline's merged update of one module (dense float32, out x in), for reference checks."""
    from seedlora.lowrank import LowRank
    from seedlora.pipeline import Merger, plan_merge
    from seedlora.sources import open_inputs

    plan = plan_merge(open_inputs(adapter_folders), method, None, params, seed)
    weight = Merger(plan).module(module).weight
    return weight.dense() if isinstance(weight, LowRank) else weight
