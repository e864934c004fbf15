"""Full fine-tuned checkpoints as inputs: task vectors θ_i − θ_pre merged tensor by tensor.

Specification: for every method the output equals a dense reference (all tensors in memory,
the method's merge_deltas with the tensor's seeded generator) exactly; `selection` picks each
entry from one checkpoint, and resampling lowers the share of entries left at the base value
when checkpoints leave parameters exactly unchanged (as bf16 fine-tuning does); checkpoints
sharded differently from the base are read by tensor name; bad inputs fail before any output.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from _adapters import read_model_tensors
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from seedlora import merge_checkpoints
from seedlora.errors import IncompatibleInputsError, OutputExistsError, SeedLoraError
from seedlora.sources.model_folder import INDEX_NAME
from seedlora.methods import get_method, method_names, split_stats
from seedlora.rng import module_generator

CHANGED = 0.3  # share of entries each checkpoint changes; the rest stay exactly equal to base
BUFFER = "model.extra_int_buffer"  # an integer tensor: copied from the base, never merged


def save_state(folder: Path, state: dict, shard_bytes: int, config: dict) -> Path:
    """Write `state` as a model folder, in shards of about `shard_bytes` (safetensors + index)."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config))
    groups, size = [[]], 0
    for name in sorted(state):
        nbytes = state[name].numel() * state[name].element_size()
        if groups[-1] and size + nbytes > shard_bytes:
            groups.append([])
            size = 0
        groups[-1].append(name)
        size += nbytes
    if len(groups) == 1:
        save_file(state, str(folder / "model.safetensors"), {"format": "pt"})
        return folder
    weight_map = {}
    for i, group in enumerate(groups, start=1):
        file = f"model-{i:05d}-of-{len(groups):05d}.safetensors"
        save_file({k: state[k].contiguous() for k in group}, str(folder / file), {"format": "pt"})
        weight_map.update({k: file for k in group})
    (folder / INDEX_NAME).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return folder


def tiny_state(hidden=32, dtype=torch.bfloat16) -> tuple[dict, dict]:
    """A seeded 2-layer Llama state dict plus an integer buffer, and its config."""
    config = LlamaConfig(vocab_size=64, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32,
                         tie_word_embeddings=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        state = {k: v.to(dtype) for k, v in LlamaForCausalLM(config).state_dict().items()}
    state[BUFFER] = torch.arange(12, dtype=torch.int64)
    return state, config.to_dict()


def fine_tune(state: dict, seed: int) -> dict:
    """Change a random CHANGED share of every float tensor's entries; the rest stay bit-equal."""
    generator = torch.Generator().manual_seed(seed)
    tuned = {}
    for name, tensor in state.items():
        if not tensor.is_floating_point():
            tuned[name] = tensor.clone()
            continue
        changed = torch.rand(tensor.shape, generator=generator) < CHANGED
        step = (torch.randn(tensor.shape, generator=generator) * 0.05).to(tensor.dtype)
        tuned[name] = torch.where(changed & (step != 0), (tensor.float() + step.float()).to(tensor.dtype), tensor)
    return tuned


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    state, config = tiny_state()
    base = save_state(root / "base", state, 12_000, config)
    tuned = [fine_tune(state, seed) for seed in (1, 2, 3)]
    # each checkpoint sharded differently from the base (and from each other)
    checkpoints = [save_state(root / f"ft{i}", t, size, config) for i, (t, size) in enumerate(zip(tuned, (10**9, 7_000, 20_000)))]
    return base, checkpoints, state, tuned




def dense_reference(method: str, state: dict, tuned: list, params: dict, seed: int) -> dict:
    """The whole merge in memory: per float tensor, merge_deltas on θ_i − θ_pre, added back in float32."""
    entry = get_method(method)
    resolved, weights = entry.resolve_params(params), entry.resolve_weights(None, len(tuned))
    out = {}
    for name, base in state.items():
        if not base.is_floating_point():
            out[name] = base
            continue
        deltas = [t[name].float() - base.float() for t in tuned]
        merged, _ = split_stats(entry.merge_deltas(deltas, weights, resolved, module_generator(seed, name)))
        out[name] = (base.float() + merged).to(base.dtype)
    return out


# ------------------------------------------------------------------ correctness
def test_fixture_is_sharded_and_sparse(setup):
    base, checkpoints, state, tuned = setup
    assert len(list(base.glob("*.safetensors"))) >= 3
    assert [len(list(c.glob("*.safetensors"))) for c in checkpoints] != [len(list(base.glob("*.safetensors")))] * 3
    unchanged = sum(int((t[k] == state[k]).sum()) for t in tuned for k in state if state[k].is_floating_point())
    total = 3 * sum(v.numel() for v in state.values() if v.is_floating_point())
    assert 0.65 < unchanged / total < 0.75  # ~70% exact zeros in every task vector


@pytest.mark.parametrize("method", [m for m in method_names() if get_method(m).accepts(3)])  # slerp: 2 inputs
def test_every_method_equals_dense_reference(setup, tmp_path, method):
    base, checkpoints, state, tuned = setup
    merge_checkpoints(checkpoints, base, tmp_path / "out", method=method, seed=11)
    out = read_model_tensors(tmp_path / "out")
    expected = dense_reference(method, state, tuned, {}, 11)
    assert out.keys() == expected.keys()
    for name in expected:
        assert out[name].dtype == state[name].dtype
        assert torch.equal(out[name], expected[name]), name
    assert torch.equal(out[BUFFER], state[BUFFER])


def test_linear_is_the_average_of_checkpoints(setup, tmp_path):
    base, checkpoints, state, tuned = setup
    merge_checkpoints(checkpoints, base, tmp_path / "out", method="linear")
    out = read_model_tensors(tmp_path / "out")
    for name in state:
        if state[name].is_floating_point():
            mean = sum(t[name].double() for t in tuned) / 3  # θ_pre + mean(θ_i − θ_pre) = mean θ_i
            torch.testing.assert_close(out[name].double(), mean, rtol=8e-3, atol=1e-6)  # bf16 rounding


def test_selection_resampling_matches_reference_and_reduces_unchanged(setup, tmp_path):
    base, checkpoints, state, tuned = setup
    shares = []
    for rounds in (0, 1, 2):
        report = merge_checkpoints(checkpoints, base, tmp_path / f"r{rounds}", method="selection",
                                   params={"resample": rounds}, seed=4)
        out = read_model_tensors(tmp_path / f"r{rounds}")
        expected = dense_reference("selection", state, tuned, {"resample": rounds}, 4)
        assert all(torch.equal(out[k], expected[k]) for k in expected)
        floats = [k for k in state if state[k].is_floating_point()]
        for k in floats:  # every entry is some checkpoint's value (bf16 differences are exact in float32)
            assert (torch.stack([t[k] for t in tuned]) == out[k]).any(0).all(), k
        left = sum(int((out[k] == state[k]).sum()) for k in floats) / sum(state[k].numel() for k in floats)
        assert report.unchanged_share == pytest.approx(left, abs=1e-12)
        shares.append(left)
    # An entry unchanged in m of the K=3 checkpoints stays at base with probability (m/K)^(1+n)
    # after n resampling rounds (each draw is uniform over all K); m ~ Binomial(K, 1 - CHANGED).
    # Expected shares: 0.70, 0.56, 0.48.
    assert shares[0] > shares[1] > shares[2]
    for rounds, share in enumerate(shares):
        expected = sum(math.comb(3, m) * (1 - CHANGED) ** m * CHANGED ** (3 - m) * (m / 3) ** (1 + rounds) for m in range(4))
        assert share == pytest.approx(expected, abs=0.02)


def test_same_seed_same_bytes_and_loads(setup, tmp_path):
    base, checkpoints, _, _ = setup
    for name in ("a", "b"):
        merge_checkpoints(checkpoints, base, tmp_path / name, method="dare_ties", seed=9, shard_size="15KB")
    files = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert len([f for f in files if f.endswith(".safetensors")]) > 1
    assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files)
    model = AutoModelForCausalLM.from_pretrained(str(tmp_path / "a"), dtype=torch.bfloat16)
    assert model.model.layers[0].self_attn.q_proj.weight.dtype == torch.bfloat16


def test_provenance_hashes_every_checkpoint_file_whole(setup, tmp_path):
    import hashlib

    base, checkpoints, _, _ = setup
    merge_checkpoints(checkpoints, base, tmp_path / "out", method="linear")
    record = json.loads((tmp_path / "out" / "seedlora_provenance.json").read_text())
    for entry, folder in zip(record["inputs"], checkpoints):
        files = sorted(p for p in Path(folder).iterdir() if p.suffix in (".safetensors", ".json"))
        assert entry["sha256"] == {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in files}
    assert "not the weights" in record["base"]["hashed"]


# ------------------------------------------------------------------ bad inputs
def _fails(tmp_path, error, match, checkpoints, base):
    with pytest.raises(error, match=match):
        merge_checkpoints(checkpoints, base, tmp_path / "out", method="selection")
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if "seedlora-tmp" in p.name]


def test_different_shapes(setup, tmp_path):
    base, checkpoints, _, _ = setup
    other_state, config = tiny_state(hidden=64)
    other = save_state(tmp_path / "wide", other_state, 10**9, config)
    _fails(tmp_path, IncompatibleInputsError, r"tensor .* has shape \[.*\] but base", [checkpoints[0], other], base)


def test_different_tensor_names(setup, tmp_path):
    base, checkpoints, state, _ = setup
    renamed = {k.replace("layers.1.mlp.up_proj", "layers.1.mlp.fc_up"): v for k, v in state.items()}
    other = save_state(tmp_path / "renamed", renamed, 10**9, {})
    _fails(tmp_path, IncompatibleInputsError, r"names differ.*missing model\.layers\.1\.mlp\.up_proj\.weight.*extra", [other], base)


def test_dtype_mix(setup, tmp_path):
    base, checkpoints, state, _ = setup
    fp32 = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    other = save_state(tmp_path / "fp32", fp32, 10**9, {})
    _fails(tmp_path, IncompatibleInputsError, r"F32 but base .* BF16 \(dtype mix\)", [checkpoints[0], other], base)


def test_missing_shard_in_index(setup, tmp_path):
    base, checkpoints, _, _ = setup
    broken = tmp_path / "broken"
    shutil.copytree(checkpoints[1], broken)
    victim = sorted(broken.glob("model-*.safetensors"))[1]
    victim.unlink()
    _fails(tmp_path, SeedLoraError, f"{victim.name}: shard named in .* is missing", [checkpoints[0], broken], base)


def test_base_without_weights(setup, tmp_path):
    _, checkpoints, _, _ = setup
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text("{}")
    _fails(tmp_path, SeedLoraError, "no model weights", checkpoints, empty)


def test_existing_output(setup, tmp_path):
    base, checkpoints, _, _ = setup
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "x").write_text("keep")
    with pytest.raises(OutputExistsError):
        merge_checkpoints(checkpoints, base, tmp_path / "out")
    assert (tmp_path / "out" / "x").read_text() == "keep"
