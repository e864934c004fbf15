"""A fixed tiny merge of every method, and the sha256 of everything it writes.

The inputs are built from integers only (no float random draws): factors are 8-bit dyadic
numbers, so every materialised update B·A, every TIES trim, sign election and disjoint mean is
exact in float32 whatever the BLAS, and no input has two equal magnitudes at its top-k
threshold (asserted), so the kept sets are defined by the values alone. The recorded hashes
were computed with the code on main before the issue-11 rewrite of the dense methods; the test
(`tests/test_reference_outputs.py`) asserts that today's code writes the same bytes.

    python -m tests._reference OUT_JSON     # record (what produced tests/data/reference_outputs.json)
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

HIDDEN, INTER, LAYERS, VOCAB = 16, 24, 2, 32
PROJ = {"q_proj": (HIDDEN, HIDDEN), "k_proj": (HIDDEN, HIDDEN), "v_proj": (HIDDEN, HIDDEN), "o_proj": (HIDDEN, HIDDEN),
        "gate_proj": (INTER, HIDDEN), "up_proj": (INTER, HIDDEN), "down_proj": (HIDDEN, INTER)}
RANKS = (3, 4, 2)
SEED = 7
DENSITY = 0.2
# (label, method, params, weights, rank, fuse); every method, dense ones also truncated and weighted
CASES = (
    ("linear", "linear", {}, None, None, False),
    ("seedlora", "seedlora", {}, None, None, False),
    ("linear_rank3", "linear", {}, None, 3, False),
    ("ties", "ties", {"density": DENSITY}, None, None, False),
    ("ties_rank3", "ties", {"density": DENSITY}, None, 3, False),
    ("ties_weighted_freq", "ties", {"density": 0.35, "majority_sign": "frequency"}, [0.5, 1.0, 2.0], None, False),
    ("dare_linear", "dare_linear", {"density": 0.5}, None, None, False),
    ("dare_ties", "dare_ties", {"density": 0.5}, None, None, False),
    ("magnitude_prune", "magnitude_prune", {"density": DENSITY}, None, None, False),
    ("selection", "selection", {"resample": 2}, None, None, False),
    ("ties_fused", "ties", {"density": DENSITY}, None, None, True),
    ("dare_ties_fused", "dare_ties", {"density": 0.5}, None, None, True),
    ("dare_linear_fused", "dare_linear", {"density": 0.5}, [0.5, 0.25, 0.25], None, True),
    ("magnitude_prune_fused", "magnitude_prune", {"density": DENSITY}, [0.5, 0.25, 0.25], None, True),
    ("selection_fused", "selection", {"resample": 1}, None, None, True),
    ("linear_fused", "linear", {}, [0.5, 0.25, 0.25], None, True),
)


def module_names() -> list:
    names = []
    for layer in range(LAYERS):
        for proj in PROJ:
            part = "mlp" if proj in ("gate_proj", "up_proj", "down_proj") else "self_attn"
            names.append(f"model.layers.{layer}.{part}.{proj}")
    return names


def dyadic(shape, generator, bits: int = 7) -> torch.Tensor:
    """Integers in [-2^bits, 2^bits) / 2^bits as float32: exact, platform-independent."""
    values = torch.randint(-(1 << bits), 1 << bits, shape, generator=generator, dtype=torch.int64)
    return values.to(torch.float32) / (1 << bits)


def write_base(folder: Path) -> Path:
    """A Llama-shaped model folder (bf16 weights from integers) that the fused path can stream."""
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(SEED)
    tensors = {"model.embed_tokens.weight": dyadic((VOCAB, HIDDEN), g).bfloat16()}
    for name in module_names():
        tensors[f"{name}.weight"] = dyadic(PROJ[name.rsplit(".", 1)[1]], g).bfloat16()
    tensors["model.norm.weight"] = torch.ones(HIDDEN, dtype=torch.bfloat16)
    tensors["lm_head.weight"] = dyadic((VOCAB, HIDDEN), g).bfloat16()
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    config = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": HIDDEN,
              "intermediate_size": INTER, "num_hidden_layers": LAYERS, "vocab_size": VOCAB,
              "num_attention_heads": 4, "num_key_value_heads": 2, "tie_word_embeddings": False}
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return folder


def write_adapters(root: Path) -> list:
    """K = 3 adapters; the last one does not adapt layer 1's down_proj (a zero update there)."""
    folders = []
    for i, rank in enumerate(RANKS):
        g = torch.Generator().manual_seed(SEED * 100 + i)
        names = [n for n in module_names() if not (i == 2 and n == "model.layers.1.mlp.down_proj")]
        tensors = {}
        for name in names:
            out, inp = PROJ[name.rsplit(".", 1)[1]]
            tensors[f"base_model.model.{name}.lora_A.weight"] = dyadic((rank, inp), g)
            tensors[f"base_model.model.{name}.lora_B.weight"] = dyadic((out, rank), g)
        folder = root / f"adapter{i}"
        folder.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
        config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": "tiny-reference",
                  "r": rank, "lora_alpha": 2 * rank, "target_modules": sorted(PROJ) if i < 2 else names, "lora_dropout": 0.0,
                  "bias": "none", "fan_in_fan_out": False, "use_rslora": False, "use_dora": False}
        (folder / "adapter_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        folders.append(folder)
    check_tie_free(folders)
    return folders


def check_tie_free(folders) -> None:
    """No update has two equal nonzero magnitudes at a top-k threshold of the densities used."""
    from seedlora.sources import LoraAdapter

    for folder in folders:
        adapter = LoraAdapter.open(folder)
        for name in adapter.modules:
            flat = adapter.factors(name).dense().abs().reshape(-1).sort(descending=True).values
            for density in (DENSITY, 0.35):
                k = math.ceil(density * flat.numel())
                if k < flat.numel() and flat[k - 1] == flat[k] and flat[k] != 0:
                    raise AssertionError(f"{folder} {name}: tie at the top-{k} threshold; pick another SEED")


def run_cases(root: Path) -> dict:
    """Every case's output files' sha256 and its report's overall figures."""
    from seedlora import merge_adapters

    base = write_base(root / "base")
    adapters = write_adapters(root / "inputs")
    results = {}
    for label, method, params, weights, rank, fuse in CASES:
        out = root / "out" / label
        report = merge_adapters(adapters, out, method=method, params=params, weights=weights, rank=rank,
                                seed=SEED, base=base if fuse else None, fuse=fuse)
        files = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.glob("*.safetensors"))}
        record = {"files": files}
        if not fuse:
            record.update(energy_kept=report.energy_kept, relative_error=report.relative_error)
        results[label] = record
    return results


def merged_deltas(root: Path) -> dict:
    """sha256 of each dense method's merged update per module (before any truncation): exact."""
    from seedlora.pipeline import Merger, plan_merge
    from seedlora.sources import open_inputs

    adapters = sorted((root / "inputs").iterdir())
    hashes = {}
    for label, method, params, weights, rank, fuse in CASES:
        if method in ("linear", "seedlora") or fuse or rank is not None:
            continue
        plan = plan_merge(open_inputs(adapters), method, weights, params, SEED)
        digest = hashlib.sha256()
        for name in plan.modules:
            digest.update(Merger(plan).module(name).weight.contiguous().numpy().tobytes())
        hashes[label] = digest.hexdigest()
    return hashes


def platform() -> dict:
    """What the float64/LAPACK-dependent hashes (SVD truncation, Grams) depend on."""
    return {"torch": torch.__version__.split("+")[0], "cpu_capability": torch.backends.cpu.get_cpu_capability()}


if __name__ == "__main__":
    import tempfile

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        record = {"platform": platform(), "cases": run_cases(Path(tmp)), "merged_deltas": merged_deltas(Path(tmp))}
    Path(sys.argv[1]).write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    print(json.dumps(record["platform"]), len(record["cases"]), "cases")
