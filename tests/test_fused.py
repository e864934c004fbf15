"""Fused-model output: base + merged update written as a sharded Hugging Face model folder.

Specification: for every method the fused weights equal W + τ (τ computed here from the
adapters' saved factors) to float32 rounding; tensors no adapter touches are byte-identical
to the base; the folder loads with transformers and matches PEFT's merge_and_unload; peak
memory stays below the largest shard + a small constant; bad inputs fail before any output.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from _adapters import merged_update, read_model_tensors
from peft import LoraConfig, PeftModel, get_peft_model
from peft.utils import merge_utils
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from _tiny import make_tiny_tokenizer
from seedlora.errors import IncompatibleInputsError, OutputExistsError, SeedLoraError
from seedlora import fuse_adapters
from seedlora.sinks.adapter_folder import PROVENANCE_NAME
from seedlora.sources.model_folder import INDEX_NAME, ModelFolder, is_model_folder
from seedlora.methods import get_method, method_names
from seedlora.sinks.shard_writer import parse_size

REPO = Path(__file__).resolve().parents[1]
TARGETS = ["q_proj", "v_proj", "down_proj", "embed_tokens"]  # embed_tokens: a transposed update
# (rank, lora_alpha, use_rslora) of the three adapters: ranks and scales all differ
ADAPTERS = [(2, 4, False), (4, 4, False), (8, 16, True)]


# ------------------------------------------------------------------ fixtures
def save_tiny_base(folder: Path, dtype=torch.float32, shard="40KB", hidden=32) -> Path:
    """A seeded 2-layer Llama saved in several shards, with tokenizer files."""
    tokenizer = make_tiny_tokenizer(folder)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False,
        bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = LlamaForCausalLM(config).to(dtype)
    model.save_pretrained(str(folder), max_shard_size=shard)
    return folder


def save_adapter(base: Path, folder: Path, rank: int, alpha: int, rslora: bool, seed: int) -> Path:
    """A PEFT LoRA adapter with random non-zero A and B (init_lora_weights=False)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_pretrained(str(base))
        config = LoraConfig(r=rank, lora_alpha=alpha, use_rslora=rslora, target_modules=TARGETS, init_lora_weights=False)
        get_peft_model(model, config).save_pretrained(str(folder), save_embedding_layers=False)
    return folder


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("fused")
    base = save_tiny_base(root / "base")
    adapters = [save_adapter(base, root / f"a{i}", *spec, seed=10 + i) for i, spec in enumerate(ADAPTERS)]
    return base, adapters




def adapter_updates(folder: Path) -> dict:
    """base tensor name -> s·B@A (float64, base-weight orientation), straight from the saved files."""
    config = json.loads((folder / "adapter_config.json").read_text())
    scale = config["lora_alpha"] / (math.sqrt(config["r"]) if config["use_rslora"] else config["r"])
    with safe_open(str(folder / "adapter_model.safetensors"), framework="pt") as handle:
        state = {key: handle.get_tensor(key).double() for key in handle.keys()}
    updates = {}
    for key, A in state.items():
        if ".lora_A" in key or "lora_embedding_A" in key:
            B = state[key.replace("lora_A", "lora_B").replace("lora_embedding_A", "lora_embedding_B")]
            module = key.removeprefix("base_model.model.").split(".lora_")[0]
            delta = scale * (B @ A)
            updates[module + ".weight"] = delta.T if "embedding" in key else delta
    return updates


# ------------------------------------------------------------------ independent references
def reference_linear(deltas: list) -> torch.Tensor:
    return sum(deltas) / len(deltas)


def reference_seedlora(deltas: list) -> torch.Tensor:
    """methods.md: average, then map mean/std (population) to the inputs' average mean/std."""
    avg = sum(deltas) / len(deltas)
    ref_mean = sum(d.mean() for d in deltas) / len(deltas)
    ref_std = sum(d.std(correction=0) for d in deltas) / len(deltas)
    return ref_std * (avg - avg.mean()) / avg.std(correction=0) + ref_mean


def reference_ties(deltas: list, density: float) -> torch.Tensor:
    return merge_utils.ties([d.float() for d in deltas], torch.ones(len(deltas)), density, "total")


def reference_magnitude_prune(deltas: list, density: float) -> torch.Tensor:
    weights = torch.full((len(deltas),), 1.0 / len(deltas))
    return merge_utils.magnitude_prune([d.float() for d in deltas], weights, density)


REFERENCES = {
    "linear": (reference_linear, {}),
    "seedlora": (reference_seedlora, {}),
    # density 0.25 keeps a whole number of entries of every module (PEFT floors, seedlora ceils)
    "ties": (lambda d: reference_ties(d, 0.25), {"density": 0.25}),
    "magnitude_prune": (lambda d: reference_magnitude_prune(d, 0.25), {"density": 0.25}),
}


# ------------------------------------------------------------------ every method
@pytest.mark.parametrize("method", [m for m in method_names() if get_method(m).accepts(3)])  # slerp: 2 inputs
def test_fused_weights_are_base_plus_merged_update(setup, tmp_path, method):
    base, adapter_dirs = setup
    params = REFERENCES.get(method, (None, {}))[1]
    report = fuse_adapters(adapter_dirs, base, tmp_path / "out", method=method, params=params, seed=7)
    fused, original = read_model_tensors(tmp_path / "out"), read_model_tensors(base)
    updates = [adapter_updates(a) for a in adapter_dirs]
    low_rank = get_method(method).low_rank
    assert set(fused) == set(original) and report.tensors_merged == len(updates[0]) == 4 * 2 - 1  # one embed_tokens
    for key in updates[0]:
        W, deltas = original[key], [u[key] for u in updates]
        # 1) the adapter path's update (same masks for random methods): exact for dense methods;
        #    low-rank ones compute B[rows] @ A block by block, equal to float32 rounding
        module = key.removesuffix(".weight")
        tau = merged_update(adapter_dirs, module, method, params, seed=7)
        tau = tau.T if module.endswith("embed_tokens") else tau
        if low_rank:
            torch.testing.assert_close(fused[key], W + tau, rtol=1e-6, atol=1e-7, msg=key)
        else:
            assert torch.equal(fused[key], (W + tau).to(W.dtype)), key
        # 2) an independent computation from the saved factors, to float32 rounding
        if method in REFERENCES:
            expected = W.double() + REFERENCES[method][0](deltas).double()
            torch.testing.assert_close(fused[key].double(), expected, rtol=1e-5, atol=1e-5, msg=key)
        if method == "selection":  # each entry is W + τ_i for one adapter i, drawn uniformly
            candidates = torch.stack([W.double() + d for d in deltas])
            matches = (candidates - fused[key].double()).abs() <= 1e-5 * (1 + candidates.abs())
            assert matches.any(0).all(), key
            assert (matches.float().mean((1, 2)) > 0.2).all(), key
    for key in set(original) - set(updates[0]):  # untouched: the very same bytes
        assert fused[key].dtype == original[key].dtype
        assert torch.equal(fused[key].view(torch.uint8), original[key].view(torch.uint8)), key


def test_layout_side_files_and_provenance(setup, tmp_path):
    base, adapter_dirs = setup
    fuse_adapters(adapter_dirs, base, tmp_path / "out", method="seedlora")
    out = tmp_path / "out"
    base_index = json.loads((base / INDEX_NAME).read_text())
    out_index = json.loads((out / INDEX_NAME).read_text())
    assert len(set(base_index["weight_map"].values())) >= 3
    assert out_index == base_index  # same shard files, same placement, same total size
    for name in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"):
        assert (out / name).read_bytes() == (base / name).read_bytes(), name
    provenance = json.loads((out / PROVENANCE_NAME).read_text())
    assert provenance["method"] == "seedlora" and len(provenance["inputs"]) == 3
    assert all(len(i["sha256"]["adapter_model.safetensors"]) == 64 for i in provenance["inputs"])
    assert "seedlora" in (out / "README.md").read_text()
    assert is_model_folder(out) and not is_model_folder(adapter_dirs[0])


def test_shard_size_reshards_with_identical_tensors(setup, tmp_path):
    base, adapter_dirs = setup
    fuse_adapters(adapter_dirs, base, tmp_path / "same", method="linear")
    fuse_adapters(adapter_dirs, base, tmp_path / "small", method="linear", shard_size="20KB")
    files = sorted((tmp_path / "small").glob("*.safetensors"))
    assert len(files) > len(list((tmp_path / "same").glob("*.safetensors")))
    assert all(f.stat().st_size < 20_000 + 4_000 or len(safe_open(str(f), "pt").keys()) == 1 for f in files)
    same, small = read_model_tensors(tmp_path / "same"), read_model_tensors(tmp_path / "small")
    assert same.keys() == small.keys() and all(torch.equal(same[k], small[k]) for k in same)


def test_loads_with_transformers_and_matches_peft_merge(setup, tmp_path):
    base, adapter_dirs = setup
    fuse_adapters(adapter_dirs, base, tmp_path / "out", method="linear")
    fused = AutoModelForCausalLM.from_pretrained(str(tmp_path / "out")).eval()
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(base)), str(adapter_dirs[0]), adapter_name="a0")
    for i, folder in enumerate(adapter_dirs[1:], start=1):
        peft_model.load_adapter(str(folder), adapter_name=f"a{i}")
    peft_model.add_weighted_adapter(["a0", "a1", "a2"], [1 / 3] * 3, "merged", combination_type="cat")
    peft_model.set_adapter("merged")
    reference = peft_model.merge_and_unload().eval()
    ids = torch.tensor([[1, 40, 41, 42, 99, 7, 200, 13]])
    with torch.no_grad():
        torch.testing.assert_close(fused(ids).logits, reference(ids).logits, rtol=1e-4, atol=1e-4)


def test_bfloat16_base_is_cast_back(tmp_path, setup):
    _, adapter_dirs = setup
    base = save_tiny_base(tmp_path / "base16", dtype=torch.bfloat16)
    fuse_adapters(adapter_dirs, base, tmp_path / "out", method="dare_linear", seed=3)
    fused, original = read_model_tensors(tmp_path / "out"), read_model_tensors(base)
    tau = merged_update(adapter_dirs, "model.layers.1.mlp.down_proj", "dare_linear", seed=3)
    W = original["model.layers.1.mlp.down_proj.weight"]
    assert fused["model.layers.1.mlp.down_proj.weight"].dtype == torch.bfloat16
    assert torch.equal(fused["model.layers.1.mlp.down_proj.weight"], (W.float() + tau).to(torch.bfloat16))


def test_same_seed_same_bytes(setup, tmp_path):
    base, adapter_dirs = setup
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        fuse_adapters(adapter_dirs, base, tmp_path / name, method="dare_ties", seed=seed)
    files = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert files == sorted(p.name for p in (tmp_path / "b").iterdir())
    assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files)
    shards = [f for f in files if f.endswith(".safetensors")]
    assert any((tmp_path / "a" / f).read_bytes() != (tmp_path / "c" / f).read_bytes() for f in shards)


def test_shard_size_parsing():
    assert parse_size("2GB") == 2 * 10**9 and parse_size("500MiB") == 500 * 2**20 and parse_size(4096) == 4096
    for bad in ("2 parsecs", "-1GB", "", "0"):
        with pytest.raises(SeedLoraError, match="is not a size"):
            parse_size(bad)


# ------------------------------------------------------------------ bad inputs
def _assert_fails(tmp_path, error, match, adapters, base, **kwargs):
    with pytest.raises(error, match=match):
        fuse_adapters(adapters, base, tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if "seedlora-tmp" in p.name]


def test_base_without_weights(setup, tmp_path):
    _, adapter_dirs = setup
    empty = tmp_path / "noweights"
    empty.mkdir()
    (empty / "config.json").write_text("{}")
    assert is_model_folder(empty)
    _assert_fails(tmp_path, SeedLoraError, "no model weights", adapter_dirs, empty)


def test_missing_shard_named_in_index(setup, tmp_path):
    base, adapter_dirs = setup
    broken = tmp_path / "broken"
    broken.mkdir()
    for path in base.iterdir():
        if path.name != "model-00003-of-00005.safetensors":
            (broken / path.name).write_bytes(path.read_bytes())
    _assert_fails(tmp_path, SeedLoraError, "model-00003-of-00005.safetensors.*missing", adapter_dirs, broken)


def test_adapter_shape_mismatch_names_module(setup, tmp_path):
    _, adapter_dirs = setup
    other = save_tiny_base(tmp_path / "other", hidden=64)
    _assert_fails(tmp_path, IncompatibleInputsError, r"module model\.embed_tokens.*shape", adapter_dirs, other)


def test_failure_mid_merge_leaves_nothing(setup, tmp_path):
    base, adapter_dirs = setup
    broken = tmp_path / "nan"
    broken.mkdir()
    (broken / "adapter_config.json").write_bytes((adapter_dirs[1] / "adapter_config.json").read_bytes())
    with safe_open(str(adapter_dirs[1] / "adapter_model.safetensors"), framework="pt") as handle:
        state = {key: handle.get_tensor(key) for key in handle.keys()}
    state["base_model.model.model.layers.1.mlp.down_proj.lora_B.weight"][0, 0] = float("nan")  # a late module
    save_file(state, str(broken / "adapter_model.safetensors"))
    _assert_fails(tmp_path, SeedLoraError, "down_proj lora_B contains NaN", [adapter_dirs[0], broken], base)


def test_existing_output_is_refused(setup, tmp_path):
    base, adapter_dirs = setup
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(OutputExistsError):
        fuse_adapters(adapter_dirs, base, tmp_path / "out")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["keep.txt"]


# ------------------------------------------------------------------ peak memory
def _write_big_base(folder: Path, hidden=768, inter=2048, layers=4, vocab=16000, shard=64 << 20) -> int:
    """A Llama-shaped float32 model in ~64 MB shards (written with safetensors directly); returns largest shard bytes."""
    folder.mkdir()
    names = [("model.embed_tokens.weight", (vocab, hidden)), ("lm_head.weight", (vocab, hidden))]
    for i in range(layers):
        p = f"model.layers.{i}."
        names += [(p + f"self_attn.{m}_proj.weight", (hidden, hidden)) for m in "qkvo"]
        names += [(p + "mlp.gate_proj.weight", (inter, hidden)), (p + "mlp.up_proj.weight", (inter, hidden)),
                  (p + "mlp.down_proj.weight", (hidden, inter)), (p + "input_layernorm.weight", (hidden,))]
    groups, size = [[]], 0
    for name, shape in names:
        if size + math.prod(shape) * 4 > shard and groups[-1]:
            groups.append([])
            size = 0
        groups[-1].append((name, shape))
        size += math.prod(shape) * 4
    generator, weight_map = torch.Generator().manual_seed(0), {}
    for n, group in enumerate(groups, start=1):
        file = f"model-{n:05d}-of-{len(groups):05d}.safetensors"
        save_file({k: torch.randn(s, generator=generator) * 0.02 for k, s in group}, str(folder / file), {"format": "pt"})
        weight_map.update({k: file for k, _ in group})
    (folder / INDEX_NAME).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return max(f.stat().st_size for f in folder.glob("*.safetensors"))


def _write_adapter(folder: Path, base: ModelFolder, rank: int, seed: int) -> None:
    """A PEFT-format LoRA adapter on every attention/MLP projection of `base`."""
    folder.mkdir()
    generator, state = torch.Generator().manual_seed(seed), {}
    for name, info in base.tensors.items():
        if name.endswith("_proj.weight"):
            out, inp = info.shape
            module = "base_model.model." + name.removesuffix(".weight")
            state[module + ".lora_A.weight"] = torch.randn(rank, inp, generator=generator) * 0.01
            state[module + ".lora_B.weight"] = torch.randn(out, rank, generator=generator) * 0.01
    save_file(state, str(folder / "adapter_model.safetensors"))
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    (folder / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": rank, "lora_alpha": 2 * rank, "target_modules": targets, "task_type": "CAUSAL_LM"}))


# Resident memory before the merge (VmRSS) and its peak during the merge (VmHWM, reset just
# before via /proc/self/clear_refs; where that is refused the peak also covers the imports, an
# overestimate). Linux only, like the CI and development machines.
_MEASURE = textwrap.dedent("""
    import gc, json, sys, time
    import tqdm.auto, torch
    from seedlora import fuse_adapters

    def status(field):
        for line in open("/proc/self/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024

    gc.collect()
    try:
        open("/proc/self/clear_refs", "w").write("5")
    except OSError:
        pass
    before = status("VmRSS")
    started = time.perf_counter()
    fuse_adapters(sys.argv[1:-2], sys.argv[-2], sys.argv[-1], method="linear")
    print(json.dumps({"before": before, "peak": status("VmHWM"), "seconds": time.perf_counter() - started}))
""")


def test_peak_memory_below_largest_shard_plus_constant(tmp_path):
    largest_shard = _write_big_base(tmp_path / "base")
    base = ModelFolder.open(tmp_path / "base")
    assert len(base.shards) >= 3
    for i in range(3):
        _write_adapter(tmp_path / f"a{i}", base, rank=8, seed=i)
    args = [str(tmp_path / f"a{i}") for i in range(3)] + [str(tmp_path / "base"), str(tmp_path / "out")]
    run = subprocess.run([sys.executable, "-c", _MEASURE, *args], cwd=REPO, capture_output=True, text=True, check=True)
    rss = json.loads(run.stdout.strip().splitlines()[-1])
    growth = rss["peak"] - rss["before"]
    print(f"peak RSS growth {growth / 2**20:.1f} MiB, largest shard {largest_shard / 2**20:.1f} MiB, {rss}")
    # The constant, 64 MiB: a low-rank merge works on blocks of 2**20 rows-elements (a 4 MB
    # float32 block, its cast and the read buffer: ~10 MB), the adapters' factors (< 1 MB), and
    # the rest is allocator and first-use slack (tqdm, JSON, kernels). None of it grows with the
    # model; a non-streaming writer would add at least a whole shard on top.
    constant = 64 << 20
    assert growth < largest_shard + constant, (growth, largest_shard, constant)
    # streaming means no shard is ever held whole: the growth is under one shard
    assert growth < largest_shard, (growth, largest_shard)
    assert (tmp_path / "out" / INDEX_NAME).is_file()
