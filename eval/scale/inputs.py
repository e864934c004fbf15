"""Synthetic inputs of real shapes: K random LoRA adapters, a bf16 base model, K fused models.

Shapes follow Llama-2: 7B (hidden 4096, intermediate 11008, 32 heads, 32 layers) and 70B
(hidden 8192, intermediate 28672, 64 heads with 8 key/value heads, 80 layers); vocabulary 32000.
Adapters target all seven linear modules, rank r, lora_alpha 2r, float32, A ~ N(0, 1/in),
B ~ N(0, 0.02²) (eval/bench_merge.py's generator), so the first layers of a 32-layer set equal
those of a 2-layer or 1-layer set with the same seed. The base is bf16 N(0, 0.02²), one
safetensors shard (a real 7B checkpoint has ~10 GB shards; a 2-layer model is 1.3 GB).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from eval.bench_merge import random_factors, write_adapter

PRESETS = {
    "7b": dict(hidden=4096, intermediate=11008, heads=32, kv_heads=32, vocab=32000, layers=32),
    "70b": dict(hidden=8192, intermediate=28672, heads=64, kv_heads=8, vocab=32000, layers=80),
    # test-sized stand-ins (tests/test_bench_scale.py): the same code paths in seconds
    "tiny": dict(hidden=64, intermediate=96, heads=4, kv_heads=4, vocab=128, layers=32),
    "tiny-gqa": dict(hidden=128, intermediate=160, heads=8, kv_heads=2, vocab=128, layers=80),
}
MODULES = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


def module_shapes(preset: str, layers: int) -> dict:
    """(out, in) of every adapted module of the first `layers` layers."""
    p = PRESETS[preset]
    h, i, kv = p["hidden"], p["intermediate"], p["hidden"] // p["heads"] * p["kv_heads"]
    per = {"self_attn.q_proj": (h, h), "self_attn.k_proj": (kv, h), "self_attn.v_proj": (kv, h),
           "self_attn.o_proj": (h, h), "mlp.gate_proj": (i, h), "mlp.up_proj": (i, h), "mlp.down_proj": (h, i)}
    return {f"model.layers.{n}.{m}": per[m] for n in range(layers) for m in MODULES}


def write_adapters(root: Path, preset: str, layers: int, k: int = 3, rank: int = 8, seed: int = 0) -> list:
    """K adapter folders root/a0 .. a{K-1} (reused when present)."""
    folders = [root / f"a{i}" for i in range(k)]
    if all((f / "adapter_model.safetensors").is_file() for f in folders):
        return folders
    factors = random_factors(module_shapes(preset, layers), k, rank, seed, torch.float32)
    for folder, f in zip(folders, factors):
        if folder.exists():
            import shutil

            shutil.rmtree(folder)
        write_adapter(folder, f, rank, 2.0 * rank)
    return folders


def write_base(folder: Path, preset: str, layers: int, seed: int = 100) -> Path:
    """A bf16 Llama model folder of `layers` layers (config.json + model.safetensors), reused when present."""
    from safetensors.torch import save_file

    if (folder / "model.safetensors").is_file():
        return folder
    p, g = PRESETS[preset], torch.Generator().manual_seed(seed)

    def weight(*shape):
        return (0.02 * torch.randn(*shape, generator=g)).to(torch.bfloat16)

    tensors = {"model.embed_tokens.weight": weight(p["vocab"], p["hidden"])}
    for name, (out, inp) in module_shapes(preset, layers).items():
        tensors[f"{name}.weight"] = weight(out, inp)
    for n in range(layers):
        for norm in ("input_layernorm", "post_attention_layernorm"):
            tensors[f"model.layers.{n}.{norm}.weight"] = torch.ones(p["hidden"], dtype=torch.bfloat16)
    tensors["model.norm.weight"] = torch.ones(p["hidden"], dtype=torch.bfloat16)
    tensors["lm_head.weight"] = weight(p["vocab"], p["hidden"])
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": p["hidden"],
              "intermediate_size": p["intermediate"], "num_hidden_layers": layers, "num_attention_heads": p["heads"],
              "num_key_value_heads": p["kv_heads"], "vocab_size": p["vocab"], "max_position_embeddings": 4096,
              "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "hidden_act": "silu", "tie_word_embeddings": False,
              "torch_dtype": "bfloat16", "bos_token_id": 1, "eos_token_id": 2}
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return folder


def fuse_each(root: Path, base: Path, adapters: list) -> list:
    """The K full models mergekit needs: base + each adapter alone (seedlora linear, weight 1), reused."""
    from seedlora import merge_adapters

    fused = []
    for i, adapter in enumerate(adapters):
        out = root / f"fused{i}"
        if not (out / "model.safetensors").is_file():
            merge_adapters([adapter], out, method="linear", weights=[1.0], base=base, fuse=True, overwrite=True,
                           device="cpu")
        fused.append(out)
    return fused


def disk_bytes(*paths) -> int:
    """Bytes of all files under `paths`."""
    return sum(f.stat().st_size for p in paths for f in Path(p).rglob("*") if f.is_file())
