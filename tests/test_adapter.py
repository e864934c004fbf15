"""Reading PEFT adapters: every module's update equals what PEFT itself computes."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from _adapters import make_adapter, peft_deltas
from seedlora.sources import LoraAdapter
from seedlora.errors import AdapterFormatError, UnsupportedFeatureError


def assert_updates_match_peft(folder):
    adapter = LoraAdapter.open(folder)
    reference = peft_deltas(folder)
    assert set(adapter.modules) == set(reference)
    for name, delta in reference.items():
        update = adapter.factors(name).dense()
        if adapter.modules[name].transposed:
            update = update.T
        torch.testing.assert_close(update, delta, rtol=1e-5, atol=1e-6)
    return adapter


def test_plain_adapter_scale_is_alpha_over_r(tmp_path):
    adapter = assert_updates_match_peft(make_adapter(tmp_path / "a", r=4, alpha=12))
    module = adapter.modules["model.layers.0.self_attn.q_proj"]
    assert (module.rank, module.alpha, module.scale) == (4, 12.0, 3.0)
    assert module.shape == (32, 32)


def test_rslora_scale_is_alpha_over_sqrt_r(tmp_path):
    adapter = assert_updates_match_peft(make_adapter(tmp_path / "a", r=4, alpha=8, use_rslora=True))
    assert adapter.modules["model.layers.1.self_attn.v_proj"].scale == pytest.approx(4.0)


def test_rank_and_alpha_patterns_override_per_module(tmp_path):
    folder = make_adapter(
        tmp_path / "a", r=4, alpha=8, targets=("q_proj", "v_proj", "down_proj"),
        rank_pattern={"v_proj": 2, "layers.1.self_attn.q_proj": 6}, alpha_pattern={"down_proj": 3},
    )
    adapter = assert_updates_match_peft(folder)
    ranks = {name: m.rank for name, m in adapter.modules.items()}
    assert ranks["model.layers.0.self_attn.v_proj"] == 2
    assert ranks["model.layers.1.self_attn.q_proj"] == 6
    assert ranks["model.layers.0.self_attn.q_proj"] == 4
    assert adapter.modules["model.layers.0.mlp.down_proj"].scale == pytest.approx(3 / 4)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_factors_are_read_as_float32(tmp_path, dtype):
    adapter = LoraAdapter.open(make_adapter(tmp_path / "a", dtype=dtype))
    assert adapter.dtypes == {str(dtype).removeprefix("torch.")}
    factors = adapter.factors("model.layers.0.self_attn.q_proj")
    assert factors.A.dtype == factors.B.dtype == torch.float32


def test_adapter_model_bin_is_read_with_weights_only(tmp_path):
    folder = make_adapter(tmp_path / "a")
    reference = LoraAdapter.open(folder).factors("model.layers.0.self_attn.q_proj")
    torch.save(load_file(folder / "adapter_model.safetensors"), folder / "adapter_model.bin")
    (folder / "adapter_model.safetensors").unlink()
    factors = LoraAdapter.open(folder).factors("model.layers.0.self_attn.q_proj")
    torch.testing.assert_close(factors.dense(), reference.dense())


def test_fan_in_fan_out_conv1d_update_is_transposed(tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    base = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=50, n_positions=16))
    peft_model = get_peft_model(base, LoraConfig(r=2, target_modules=["c_attn"], fan_in_fan_out=True, init_lora_weights=False))
    peft_model.save_pretrained(tmp_path / "gpt2")
    adapter = LoraAdapter.open(tmp_path / "gpt2")
    (name,) = adapter.modules
    module = adapter.modules[name]
    assert module.transposed and module.shape == (96, 32)  # update out x in; Conv1D stores in x out
    layer = peft_model.base_model.model.get_submodule(name)
    torch.testing.assert_close(adapter.factors(name).dense().T, layer.get_delta_weight("default"))


def test_headers_are_read_without_loading_tensors(tmp_path, monkeypatch):
    folder = make_adapter(tmp_path / "a")
    import safetensors

    monkeypatch.setattr(safetensors, "safe_open", lambda *a, **k: pytest.fail("tensor data read at open"))
    adapter = LoraAdapter.open(folder)
    assert len(adapter.modules) == 4


@pytest.mark.parametrize(
    "edit, error, words",
    [
        (lambda f: (f / "adapter_config.json").unlink(), AdapterFormatError, "adapter_config.json: missing"),
        (lambda f: (f / "adapter_config.json").write_text("{not json"), AdapterFormatError, "not valid JSON"),
        (lambda f: (f / "adapter_model.safetensors").unlink(), AdapterFormatError, "weights are missing"),
        (lambda f: _truncate(f / "adapter_model.safetensors"), AdapterFormatError, "truncated"),
        (lambda f: _edit_config(f, use_dora=True), AdapterFormatError, "lacks lora_magnitude_vector though use_dora"),
        (lambda f: _edit_config(f, lora_bias=False, bias="all"), UnsupportedFeatureError, "bias='all'.*retrain with bias='none'"),
        (lambda f: _edit_config(f, trainable_token_indices=[1, 2]), UnsupportedFeatureError, "trainable tokens"),
        (lambda f: _edit_config(f, target_parameters=["experts.w1"]), UnsupportedFeatureError, "target_parameters"),
        (lambda f: _edit_config(f, init_lora_weights="pissa"), UnsupportedFeatureError, "path_initial_model_for_weight_conversion"),
        (lambda f: _edit_config(f, target_modules=["q_proj", "v_proj", "k_proj"]), AdapterFormatError, "names 'k_proj'"),
        (lambda f: _edit_config(f, r=16), AdapterFormatError, "r=16"),
    ],
)
def test_bad_adapter_folders_are_refused_with_the_reason(tmp_path, edit, error, words):
    folder = make_adapter(tmp_path / "a")
    edit(folder)
    with pytest.raises(error, match=words):
        LoraAdapter.open(folder)


def test_nan_in_a_tensor_is_reported_with_file_and_module(tmp_path):
    folder = make_adapter(tmp_path / "a")
    path = folder / "adapter_model.safetensors"
    state = load_file(path)
    key = "base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight"
    state[key][0, 0] = float("nan")
    save_file(state, path)
    adapter = LoraAdapter.open(folder)
    with pytest.raises(AdapterFormatError, match=r"module model\.layers\.1\.self_attn\.v_proj lora_B contains NaN"):
        adapter.factors("model.layers.1.self_attn.v_proj")


def _edit_config(folder, **changes):
    path = folder / "adapter_config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])


def _write_raw_safetensors(path, tensors):
    """A safetensors file laid out exactly in the given order (no alignment of the data)."""
    header, blobs, offset = {}, [], 0
    for key, tensor in tensors:
        data = tensor.contiguous().view(torch.uint8).numpy().tobytes()
        code = {torch.float32: "F32", torch.float16: "F16"}[tensor.dtype]
        header[key] = {"dtype": code, "shape": list(tensor.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    path.write_bytes(len(encoded).to_bytes(8, "little") + encoded + b"".join(blobs))


def test_tensors_at_unaligned_offsets_are_read_correctly(tmp_path):
    """A float32 tensor stored 6 bytes into the data (after 3 float16s) cannot be viewed in place."""
    folder = tmp_path / "a"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 1, "lora_alpha": 2, "target_modules": ["lin"]}))
    A, B = torch.tensor([[1.5, -2.0, 0.25]], dtype=torch.float16), torch.tensor([[1.0], [2.0], [-3.0], [4.0], [0.5]])
    _write_raw_safetensors(folder / "adapter_model.safetensors",
                           [("base_model.model.lin.lora_A.weight", A), ("base_model.model.lin.lora_B.weight", B)])
    factors = LoraAdapter.open(folder).factors("lin")
    torch.testing.assert_close(factors.dense(), 2.0 * B @ A.float(), rtol=0, atol=0)


def test_tensor_whose_byte_range_does_not_match_its_shape_is_refused(tmp_path):
    folder = make_adapter(tmp_path / "a")
    path = folder / "adapter_model.safetensors"
    raw = path.read_bytes()
    length = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + length])
    key = next(k for k in header if k != "__metadata__")
    header[key]["shape"] = [header[key]["shape"][0] + 1, header[key]["shape"][1]]
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    path.write_bytes(len(encoded).to_bytes(8, "little") + encoded + raw[8 + length :])
    with pytest.raises(AdapterFormatError, match=f"{key}.*bytes for shape.*corrupt"):
        LoraAdapter.open(folder)
