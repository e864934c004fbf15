"""`seedlora check`: every reason vLLM or PEFT refuses or mis-scales an adapter, from headers only.

Adapters are made by PEFT itself (tests/_adapters.py); defective ones are made by PEFT with the
feature turned on, or by editing a clean adapter the way other tools get it wrong. The
behaviour each finding predicts was observed with vLLM 0.32 (CPU) and PEFT 0.21.
"""

import json
import shutil
import typing

import pytest
import torch
from safetensors.torch import load_file, save_file

from _adapters import make_adapter, save_tiny_llama
from seedlora.cli import main
from seedlora.errors import MethodError
from seedlora.serving import (
    ERROR, MIS_SCALE, VLLM_MAX_LORA_RANKS, WARNING, check_adapter, vllm_rank_bucket,
)

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    return make_adapter(tmp_path_factory.mktemp("clean") / "a", r=4, alpha=8, targets=TARGETS)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return save_tiny_llama(tmp_path_factory.mktemp("base") / "base")


def edited(src, dst, config=None, rename=None):
    """A copy of adapter `src` with config fields replaced and tensor names rewritten."""
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "adapter_config.json").read_text())
    (dst / "adapter_config.json").write_text(json.dumps({**cfg, **(config or {})}))
    if rename:
        tensors = load_file(dst / "adapter_model.safetensors")
        save_file({rename(k): v for k, v in tensors.items()}, dst / "adapter_model.safetensors")
    return dst


def by_severity(report, severity):
    return [f.message for f in report.findings if f.severity == severity]


def run_cli(capsys, *argv):
    code = main(["check", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    "rank, bucket", [(1, 1), (2, 8), (8, 8), (9, 16), (64, 64), (129, 256), (300, 320), (321, 512), (512, 512)]
)
def test_rank_bucket_is_the_smallest_max_lora_rank_that_holds_the_rank(rank, bucket):
    assert vllm_rank_bucket(rank) == bucket


@pytest.mark.parametrize("rank", [0, 513, 4096])
def test_rank_bucket_refuses_ranks_vllm_cannot_serve(rank):
    with pytest.raises(MethodError, match="rank"):
        vllm_rank_bucket(rank)


def test_buckets_equal_the_installed_vllm_literal():
    lora_config = pytest.importorskip("vllm.config.lora")
    assert VLLM_MAX_LORA_RANKS == typing.get_args(lora_config.MaxLoRARanks)


def test_clean_peft_adapter_passes_with_its_serving_rank(clean, base, capsys):
    report = check_adapter(clean, base=base)
    assert report.findings == () and report.max_lora_rank == 8
    code, out, _ = run_cli(capsys, clean, "--base", base)
    assert code == 0 and out.strip() == "vLLM: OK, serve with --max-lora-rank 8"


@pytest.mark.parametrize(
    "lora_kwargs, severity, needle",
    [
        (dict(use_dora=True), ERROR, "DoRA"),
        (dict(bias="all"), ERROR, "bias='all'"),
        (dict(lora_bias=True), ERROR, "lora_bias"),
        (dict(modules_to_save=["lm_head"]), ERROR, "modules_to_save=['lm_head']"),
        (dict(rank_pattern={"q_proj": 12}), WARNING, "rank_pattern"),
        (dict(alpha_pattern={"v_proj": 3}), WARNING, "alpha_pattern"),
        (dict(use_rslora=True), WARNING, "use_rslora"),
    ],
    ids=["dora", "bias_all", "lora_bias", "modules_to_save", "rank_pattern", "alpha_pattern", "rslora"],
)
def test_peft_features_are_reported(tmp_path, lora_kwargs, severity, needle):
    adapter = make_adapter(tmp_path / "a", r=4, alpha=8, targets=("q_proj", "v_proj"), **lora_kwargs)
    report = check_adapter(adapter)
    assert any(needle in m and "adapter_config.json" in m for m in by_severity(report, severity)), report.findings
    assert bool(report.problems) == (severity == ERROR)


def test_dora_magnitudes_and_lora_bias_tensors_are_named(tmp_path):
    dora = check_adapter(make_adapter(tmp_path / "d", r=4, use_dora=True))
    assert any("DoRA magnitudes" in m and "lora_magnitude_vector" in m for m in by_severity(dora, ERROR))
    lbias = check_adapter(make_adapter(tmp_path / "b", r=4, lora_bias=True))
    assert any("biases" in m and "lora_B.bias" in m for m in by_severity(lbias, ERROR))


def test_rank_pattern_ranks_set_the_serving_rank(tmp_path):
    adapter = make_adapter(tmp_path / "a", r=4, targets=("q_proj", "v_proj"), rank_pattern={"q_proj": 12})
    assert check_adapter(adapter).max_lora_rank == 16


def test_warnings_fail_only_under_strict(tmp_path, capsys):
    adapter = make_adapter(tmp_path / "a", r=4, use_rslora=True)
    code, out, _ = run_cli(capsys, adapter)
    assert code == 0 and out.splitlines()[0].startswith("warning: ") and "--max-lora-rank 8" in out
    code, out, err = run_cli(capsys, adapter, "--strict")
    assert code == 2 and "vLLM: would reject/mis-scale (1 problem)" in out and err.startswith("error: ")


def test_tensor_rank_not_declared_by_config_is_an_error(clean, tmp_path):
    # vLLM would load it with scale lora_alpha/8 (observed); PEFT fails with a size mismatch
    report = check_adapter(edited(clean, tmp_path / "a", config={"r": 8}))
    assert any("rank 4, config 8" in m and "size mismatch" in m for m in by_severity(report, ERROR))


def test_rank_above_512_has_no_serving_rank(clean, tmp_path):
    report = check_adapter(edited(clean, tmp_path / "a", config={"r": 600, "lora_alpha": 600}))
    assert report.max_lora_rank is None
    assert any("largest --max-lora-rank 512" in m for m in by_severity(report, ERROR))


def test_keys_without_prefix_are_a_silent_mis_scale(clean, tmp_path, capsys):
    # observed: PEFT loads a zero update (missing-keys warning) while vLLM applies the factors
    adapter = edited(clean, tmp_path / "a", rename=lambda k: k.removeprefix("base_model.model."))
    assert any("lack the base_model.model. prefix" in m for m in by_severity(check_adapter(adapter), MIS_SCALE))
    code, out, err = run_cli(capsys, adapter)
    assert code == 2 and "vLLM: would reject/mis-scale (1 problem)" in out and "seedlora check" in err


def test_adapter_name_in_keys_is_refused(clean, tmp_path):
    adapter = edited(clean, tmp_path / "a", rename=lambda k: k.replace(".weight", ".default.weight"))
    assert any("adapter name" in m for m in by_severity(check_adapter(adapter), ERROR))


def test_factors_outside_target_modules_are_reported(clean, tmp_path):
    adapter = edited(clean, tmp_path / "a", config={"target_modules": ["q_proj", "k_proj", "v_proj"]})
    found = by_severity(check_adapter(adapter), MIS_SCALE)  # o/gate/up/down_proj of 2 layers
    assert any("8 modules with factors are not in target_modules" in m for m in found), found


def test_pissa_style_init_is_refused(clean, tmp_path):
    adapter = edited(clean, tmp_path / "a", config={"init_lora_weights": "pissa"})
    assert any("init_lora_weights='pissa'" in m for m in by_severity(check_adapter(adapter), ERROR))


@pytest.mark.parametrize("damage, needle", [("no_config", "missing"), ("bad_json", "not valid JSON"), ("no_weights", "no adapter_model.safetensors")])
def test_broken_folders_are_errors(clean, tmp_path, damage, needle):
    adapter = edited(clean, tmp_path / "a")
    if damage == "no_config":
        (adapter / "adapter_config.json").unlink()
    elif damage == "bad_json":
        (adapter / "adapter_config.json").write_text("{not json")
    else:
        (adapter / "adapter_model.safetensors").unlink()
    assert any(needle in m for m in by_severity(check_adapter(adapter), ERROR))


def test_pickle_weights_load_but_are_flagged(clean, tmp_path):
    adapter = edited(clean, tmp_path / "a")
    torch.save(load_file(adapter / "adapter_model.safetensors"), adapter / "adapter_model.bin")
    both = check_adapter(adapter)
    assert [f.severity for f in both.findings] == [WARNING] and "adapter_model.bin: ignored" in both.findings[0].message
    (adapter / "adapter_model.safetensors").unlink()
    only_bin = check_adapter(adapter)
    assert [f.severity for f in only_bin.findings] == [WARNING] and only_bin.max_lora_rank == 8
    assert "pickle weights" in only_bin.findings[0].message


def test_base_with_other_shapes_is_an_error(clean, tmp_path):
    other = save_tiny_llama(tmp_path / "wide", hidden=48)
    report = check_adapter(clean, base=other)
    assert any("14 modules do not fit" in m and "down_proj: update [32, 48] vs base [48, 48]" in m for m in by_severity(report, ERROR))


def test_module_names_missing_from_base_are_reported(clean, base, tmp_path):
    adapter = edited(clean, tmp_path / "a", rename=lambda k: k.replace(".model.layers.", ".layers."))
    report = check_adapter(adapter, base=base)
    assert any("14 modules have no weight" in m and "no layers.0." in m for m in by_severity(report, MIS_SCALE))
    assert check_adapter(adapter).problems == ()  # only the base can tell


def test_base_folder_without_weights_is_an_error(clean, tmp_path):
    (tmp_path / "empty").mkdir()
    assert any(m.startswith("--base:") for m in by_severity(check_adapter(clean, base=tmp_path / "empty"), ERROR))


def test_merged_vllm_output_of_mixed_inputs_is_clean(tmp_path, base):
    from seedlora import merge_adapters

    plain = make_adapter(tmp_path / "a1", seed=1, r=4, alpha=8)
    mixed = make_adapter(tmp_path / "a2", seed=2, r=6, alpha=6, use_rslora=True, rank_pattern={"v_proj": 3})
    assert check_adapter(mixed).findings  # rsLoRA and rank_pattern warnings on the input
    merge_adapters([plain, mixed], tmp_path / "m", method="seedlora", vllm=True)
    report = check_adapter(tmp_path / "m", base=base)
    assert report.findings == () and report.max_lora_rank == 16


def test_fused_model_folders_are_checked_as_models(clean, base, tmp_path, capsys):
    from seedlora import merge_adapters

    fused = tmp_path / "fused"
    merge_adapters([clean, clean], fused, method="linear", base=base, fuse=True)
    code, out, err = run_cli(capsys, fused)
    # the tiny base has no tokenizer: a warning naming the fix, and no advice about --vllm or LoRA ranks
    assert code == 0 and "no tokenizer files" in out and "--tokenizer" in out, out
    assert "vllm serve" in out and "--vllm" not in out + err and "max-lora-rank" not in out
    config = json.loads((fused / "config.json").read_text())
    del config["architectures"]
    (fused / "config.json").write_text(json.dumps(config))
    code, out, err = run_cli(capsys, fused)
    assert code == 2 and "architectures" in out and "model: would fail to load (1 problem)" in out
    assert err.startswith("error: ") and "--vllm" not in err


def test_check_takes_several_folders_and_fails_if_any_fails(clean, base, tmp_path, capsys):
    bad = edited(clean, tmp_path / "bad", config={"r": 3})
    code, out, err = run_cli(capsys, clean, base, bad)
    assert out.count("== ") == 3 and f"== {clean}" in out and f"== {base}" in out
    assert "vLLM: OK, serve with --max-lora-rank 8" in out and "model: OK" in out
    assert code == 2 and str(bad) in err and str(clean) not in err and "--vllm" in err
    code, out, _ = run_cli(capsys, clean, base)
    assert code == 0
