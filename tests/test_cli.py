"""The CLI as users type it: exit codes, one-line errors, nothing written on bad input."""

import json
import subprocess
import sys

import pytest
from safetensors.torch import load_file, save_file

from _adapters import make_adapter, make_adapters
from seedlora.cli import main


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    return [str(p) for p in make_adapters(tmp_path_factory.mktemp("inputs"), ranks=(2, 4, 8))]


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_console_script_merges_and_reports(adapters, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "seedlora", "merge", *adapters, "--method", "seedlora", "-o", str(tmp_path / "m")],
        capture_output=True, text=True, check=True,
    )
    assert "merged 3 adapters with seedlora" in result.stdout and "rank 15" in result.stdout
    assert "exact: no truncation" in result.stdout
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == [
        "README.md", "adapter_config.json", "adapter_model.safetensors", "merge_report.json", "seedlora_config.yaml",
        "seedlora_provenance.json",
    ]


def test_rank_option_prints_energy_kept_per_module(adapters, tmp_path, capsys):
    code, out, _ = run_cli(capsys, "merge", *adapters, "-m", "linear", "--rank", "3", "-o", str(tmp_path / "m"))
    assert code == 0
    assert "truncated to rank 3: energy kept" in out and "model.layers.0.self_attn.q_proj: rank 14→3" in out


def test_methods_lists_every_method_with_defaults_and_paper(capsys):
    code, out, _ = run_cli(capsys, "methods")
    assert code == 0
    for name in ("linear", "seedlora", "ties", "dare_linear", "dare_ties", "magnitude_prune", "selection"):
        assert f"\n{name}: " in "\n" + out
    assert "--density 0.2" in out and "--resample 1" in out and "arxiv.org" in out


def test_inspect_shows_ranks_and_pairwise_cosine(adapters, capsys):
    code, out, _ = run_cli(capsys, "inspect", *adapters)
    assert code == 0
    assert "r=2 ×4" in out and "targets: q_proj, v_proj" in out and "float32" in out
    assert out.count(" ~ ") == 3  # three pairs


def make_variant(tmp_path, kind):
    """An adapter folder with one specific defect, paired with good ones in the merge."""
    folder = tmp_path / kind
    if kind == "other_base":
        return make_adapter(folder, base_config={"hidden": 48})
    if kind == "disjoint":
        return make_adapter(folder, targets=("down_proj",))
    if kind == "partial":
        return make_adapter(folder, targets=("q_proj", "k_proj"))
    if kind == "dora":
        return make_adapter(folder, use_dora=True)
    if kind == "modules_to_save":
        return make_adapter(folder, modules_to_save=["lm_head"])
    folder = make_adapter(folder)
    weights = folder / "adapter_model.safetensors"
    if kind == "missing_weights":
        weights.unlink()
    elif kind == "corrupt":
        weights.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage")
    elif kind == "nan":
        state = load_file(weights)
        state["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"][1, 2] = float("inf")
        save_file(state, weights)
    elif kind == "bias":
        config = json.loads((folder / "adapter_config.json").read_text())
        config["bias"] = "lora_only"
        (folder / "adapter_config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize(
    "kind, message",
    [
        ("other_base", "must share one base model"),
        ("missing_weights", "weights are missing"),
        ("corrupt", "not a readable safetensors file"),
        ("nan", "contains NaN or Inf"),
        ("dora", "DoRA"),
        ("bias", "bias"),
        ("modules_to_save", "modules_to_save"),
    ],
)
def test_bad_input_adapter_fails_cleanly(adapters, tmp_path, capsys, kind, message):
    bad = make_variant(tmp_path, kind)
    code, _, err = run_cli(capsys, "merge", adapters[0], str(bad), "-o", str(tmp_path / "out"))
    assert code != 0
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.glob(".out*"))  # no staging folder left behind


@pytest.mark.parametrize(
    "args, message",
    [
        (["-m", "nosuch"], "unknown method 'nosuch' (choose from: linear, seedlora"),
        (["-m", "linear", "--density", "0.5"], "method 'linear' has no parameter 'density'"),
        (["-m", "ties", "--density", "0"], "must be in (0, 1]"),
        (["-m", "ties", "--density", "1.5"], "must be in (0, 1]"),
        (["-m", "selection", "--resample", "-1"], "must be >= 0"),
        (["-m", "linear", "--weights", "1,2"], "got 2 weights for 3 inputs"),
        (["-m", "linear", "--rank", "0"], "--rank must be a positive integer"),
    ],
)
def test_bad_method_options_fail_before_any_output(adapters, tmp_path, capsys, args, message):
    code, _, err = run_cli(capsys, "merge", *adapters, *args, "-o", str(tmp_path / "out"))
    assert code != 0 and message in err and err.startswith("error: ")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kind", ["disjoint", "partial"])
def test_differing_target_sets_merge_with_a_warning_or_fail_with_strict(adapters, tmp_path, capsys, kind):
    other = make_variant(tmp_path, kind)
    code, out, err = run_cli(capsys, "merge", adapters[0], str(other), "-o", str(tmp_path / "out"))
    assert code == 0 and "warning: " in err and "not adapted by every input" in err and "zero updates" in err
    code, _, err = run_cli(capsys, "merge", adapters[0], str(other), "-o", str(tmp_path / "strict"), "--strict")
    assert code != 0 and err.startswith("error: ") and "--strict" in err and not (tmp_path / "strict").exists()


def test_space_separated_weights_get_a_clear_error(adapters, tmp_path, capsys):
    code, _, err = run_cli(capsys, "merge", "--weights", "0.5", "0.3", "0.2", *adapters, "-o", str(tmp_path / "out"))
    assert code != 0 and "comma-separated" in err and not (tmp_path / "out").exists()


def test_existing_output_is_never_overwritten_unless_asked(adapters, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code, _, err = run_cli(capsys, "merge", *adapters, "-o", str(out))
    assert code != 0 and "exists and is not empty; pass --overwrite" in err
    assert (out / "keep.txt").read_text() == "mine"
    code, _, _ = run_cli(capsys, "merge", *adapters, "-o", str(out), "--overwrite")
    assert code == 0 and not (out / "keep.txt").exists() and (out / "adapter_model.safetensors").exists()


def test_missing_adapter_folder_is_named(tmp_path, capsys, adapters):
    code, _, err = run_cli(capsys, "merge", adapters[0], str(tmp_path / "nope"), "-o", str(tmp_path / "out"))
    assert code != 0 and "nope: adapter folder not found" in err
