"""The model a seed trains: the base (optionally 4-bit, QLoRA) with fresh, seeded LoRA layers.

The LoRA A factors are drawn from a generator seeded by (init seed, module name), not from the
global RNG, so the init is the same on any device and for any number of processes, and
`--vary` controls it exactly. B starts at zero, as in PEFT.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import torch

from ..errors import SeedLoraError
from ..rng import module_generator


def resolve_base(spec) -> Path:
    """A local model folder for `spec`: an existing path as it is, else a Hub id (org/name[@revision])
    from the Hub cache or the Hub (offline with HF_HUB_OFFLINE=1), as `seedlora merge --base` does."""
    from ..sources.hub import resolve

    return resolve(str(spec), kind="model").path


def check_device(config) -> str:
    """'cuda' or 'cpu'; 4-bit loading and fp16 need CUDA (and bitsandbytes)."""
    cuda = torch.cuda.is_available()
    if config.device == "cuda" and not cuda:
        raise SeedLoraError("--device cuda but no CUDA GPU is visible; drop --device or check CUDA_VISIBLE_DEVICES")
    device = "cuda" if config.device == "cuda" or (config.device == "auto" and cuda) else "cpu"
    if config.load_in_4bit:
        if device != "cuda":
            raise SeedLoraError("--load-in-4bit needs a CUDA GPU (bitsandbytes); drop it to train on CPU")
        try:
            import bitsandbytes  # noqa: F401
        except ImportError as error:
            raise SeedLoraError("--load-in-4bit needs bitsandbytes; run `pip install 'seedlora[qlora]'`") from error
    if config.mixed_precision == "fp16" and device != "cuda":
        raise SeedLoraError("--mixed-precision fp16 needs a CUDA GPU; use bf16 or no on CPU")
    return device


def build_model(base, config, init_seed: int):
    """Base model with fresh LoRA layers whose A factors come from (init_seed, module name)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    kwargs = {"dtype": getattr(torch, config.dtype)}
    if config.load_in_4bit:
        from transformers import BitsAndBytesConfig

        compute = torch.bfloat16 if config.dtype == "float32" else getattr(torch, config.dtype)
        from accelerate import PartialState

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute
        )
        kwargs["device_map"] = {"": PartialState().local_process_index}  # this process's GPU
    model = AutoModelForCausalLM.from_pretrained(str(base), **kwargs)
    if config.load_in_4bit:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=config.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    lora = LoraConfig(
        r=config.rank, lora_alpha=config.alpha, lora_dropout=config.dropout, target_modules=config.target_modules,
        bias="none", task_type="CAUSAL_LM",
    )
    try:
        model = get_peft_model(model, lora)
    except ValueError as error:
        raise SeedLoraError(f"PEFT refused the LoRA settings ({error}); fix --targets") from None
    init_lora(model, init_seed)
    return model


@torch.no_grad()
def init_lora(model, init_seed: int) -> None:
    """Kaiming-uniform A (as PEFT does) from a per-module generator, B zero."""
    for name, module in model.named_modules():
        if not hasattr(module, "lora_A") or not isinstance(module.lora_A, torch.nn.ModuleDict):
            continue
        for layer in module.lora_A.values():
            weight = torch.empty(layer.weight.shape, dtype=torch.float32)
            torch.nn.init.kaiming_uniform_(weight, a=math.sqrt(5), generator=module_generator(init_seed, name))
            layer.weight.copy_(weight)
        for layer in module.lora_B.values():
            layer.weight.zero_()


def digest(model) -> str:
    """sha256 over the trainable tensors' names and bytes, in name order."""
    hasher = hashlib.sha256()
    trainable = {n: p.detach().float().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}
    for name, tensor in sorted(trainable.items()):
        hasher.update(name.encode())
        hasher.update(tensor.numpy().tobytes())
    return hasher.hexdigest()
