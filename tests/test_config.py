"""Merge configs: strict parsing, the command line over the file, and re-runs from the saved config.

Every output folder holds its resolved seedlora_config.yaml; `seedlora merge --config
out/seedlora_config.yaml -o again/` must write the same bytes, every file included.
"""

import json
from pathlib import Path

import pytest
import yaml

from _adapters import make_adapters, save_tiny_llama
from seedlora.cli import main
from seedlora.config import KEYS, dump_config, load_config
from seedlora.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    return [str(p) for p in make_adapters(tmp_path_factory.mktemp("inputs"), ranks=(2, 4, 8))]


def write(tmp_path, data, name="merge.yaml") -> str:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return str(path)


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def folder_bytes(folder) -> dict:
    return {p.name: p.read_bytes() for p in sorted(Path(folder).iterdir())}


@pytest.mark.parametrize("data, words", [
    ({"inputs": ["a"], "methd": "ties"}, ["unknown key 'methd'", "known keys"]),
    ({"seed": "1"}, ["seed must be an integer", "'1'"]),
    ({"seed": True}, ["seed must be an integer"]),
    ({"rank": 1.5}, ["rank must be a positive integer"]),
    ({"fuse": "yes"}, ["fuse must be true or false"]),
    ({"inputs": "a"}, ["inputs must be a list"]),
    ({"inputs": [{"folder": "a"}]}, ["inputs[0]", "unknown key 'folder'"]),
    ({"inputs": [{"path": "a", "weight": "x"}]}, ["inputs[0].weight must be a number"]),
    ({"inputs": [{"path": "a", "weight": 1}, "b"]}, ["some inputs have a weight"]),
    ({"inputs": [{"path": "a", "density": 0.2}, {"path": "b", "density": 0.4}]}, ["different densities", "per-input density is not supported"]),
    ({"params": {"density": [0.2]}}, ["params.density"]),
    ("- just\n- a list\n", ["expected a mapping"]),
    ("method: [unclosed\n", ["not valid YAML", "line"]),
])
def test_bad_configs_are_one_line_errors_naming_the_key(tmp_path, data, words):
    with pytest.raises(ConfigError) as error:
        load_config(write(tmp_path, data))
    message = str(error.value)
    assert "\n" not in message and "merge.yaml" in message
    for word in words:
        assert word in message, message


def test_per_input_weights_and_a_shared_density_become_weights_and_params(tmp_path):
    settings = load_config(write(tmp_path, {
        "inputs": [{"path": "a", "weight": 2, "density": 0.3}, {"path": "b", "weight": 1, "density": 0.3}],
        "method": "ties", "params": {"majority_sign": "frequency"}}))
    assert settings == {"inputs": ["a", "b"], "weights": [2.0, 1.0], "method": "ties",
                        "params": {"majority_sign": "frequency", "density": 0.3}}


def test_dump_is_deterministic_and_loads_back(tmp_path):
    settings = {"inputs": ["/x/a", "org/b@" + "0" * 40], "weights": [1 / 3, 2 / 3], "method": "dare_ties",
                "params": {"density": 0.5, "majority_sign": "total"}, "seed": 7, "rank": 16, "vllm": True}
    text = dump_config(settings)
    assert text == dump_config(dict(reversed(list(settings.items()))))
    assert load_config(write(tmp_path, text)) == settings
    assert list(yaml.safe_load(text)) == [k for k in KEYS if k in settings and k != "weights"]


def test_config_merge_equals_the_same_merge_from_flags(adapters, tmp_path, capsys):
    config = write(tmp_path, {"inputs": [{"path": p, "weight": w} for p, w in zip(adapters, (0.5, 0.3, 0.2))],
                              "method": "ties", "params": {"density": 0.4}, "rank": 6, "seed": 3,
                              "output": str(tmp_path / "from-config")})
    assert run(capsys, "merge", "--config", config)[0] == 0
    assert run(capsys, "merge", *adapters, "--weights", "0.5,0.3,0.2", "-m", "ties", "--density", "0.4",
               "--rank", "6", "--seed", "3", "-o", str(tmp_path / "from-flags"))[0] == 0
    assert folder_bytes(tmp_path / "from-config") == folder_bytes(tmp_path / "from-flags")


def test_command_line_overrides_the_config(adapters, tmp_path, capsys):
    config = write(tmp_path, {"inputs": adapters, "method": "ties", "params": {"density": 0.3, "majority_sign": "frequency"},
                              "seed": 1, "output": str(tmp_path / "ignored")})
    code, _, err = run(capsys, "merge", "--config", config, "--density", "0.6", "--seed", "5", "-o", str(tmp_path / "out"))
    assert code == 0, err
    report = json.loads((tmp_path / "out" / "merge_report.json").read_text())
    assert report["params"] == {"density": 0.6, "majority_sign": "frequency"} and report["seed"] == 5
    assert not (tmp_path / "ignored").exists()
    # inputs on the command line replace the file's (and their weights); its params stay, so a
    # method that lacks them is refused by name
    code, _, err = run(capsys, "merge", "--config", config, adapters[0], adapters[1], "-m", "linear", "-o", str(tmp_path / "two"))
    assert code == 2 and "method 'linear' has no parameter 'density'" in err
    weighted = write(tmp_path, {"inputs": [{"path": p, "weight": 1} for p in adapters], "method": "ties"}, "weighted.yaml")
    code, _, err = run(capsys, "merge", "--config", weighted, adapters[0], adapters[1], "-m", "linear", "-o", str(tmp_path / "two"))
    report = json.loads((tmp_path / "two" / "merge_report.json").read_text())
    assert code == 0 and report["method"] == "linear" and report["weights"] == [0.5, 0.5]


def test_config_errors_through_the_cli(adapters, tmp_path, capsys):
    code, _, err = run(capsys, "merge", "--config", write(tmp_path, {"inputs": adapters, "ouput": "x"}))
    assert code == 2 and err.startswith("error: ") and "unknown key 'ouput'" in err and err.count("\n") == 1
    code, _, err = run(capsys, "merge", "--config", write(tmp_path, {"inputs": adapters}, "no-output.yaml"))
    assert code == 2 and "no output folder" in err
    code, _, err = run(capsys, "merge", "--config", str(tmp_path / "missing.yaml"), "-o", str(tmp_path / "x"))
    assert code == 2 and "missing.yaml" in err and "cannot read" in err
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("extra", [["-m", "dare_linear", "--density", "0.5", "--seed", "11", "--rank", "5"],
                                   ["-m", "seedlora", "--vllm", "--dtype", "bfloat16"]])
def test_rerun_from_saved_adapter_config_writes_the_same_bytes(adapters, tmp_path, capsys, extra):
    assert run(capsys, "merge", *adapters, *extra, "-o", str(tmp_path / "first"))[0] == 0
    saved = tmp_path / "first" / "seedlora_config.yaml"
    assert run(capsys, "merge", "--config", str(saved), "-o", str(tmp_path / "again"))[0] == 0
    first, again = folder_bytes(tmp_path / "first"), folder_bytes(tmp_path / "again")
    assert "seedlora_config.yaml" in first and first == again


def test_rerun_from_saved_fused_config_writes_the_same_bytes(adapters, tmp_path, capsys):
    base = save_tiny_llama(tmp_path / "base")
    assert run(capsys, "merge", *adapters, "-m", "ties", "--base", str(base), "--fuse", "-o", str(tmp_path / "first"))[0] == 0
    saved = yaml.safe_load((tmp_path / "first" / "seedlora_config.yaml").read_text())
    assert saved["fuse"] is True and saved["base"] == str(base) and saved["params"] == {"density": 0.2, "majority_sign": "total"}
    assert run(capsys, "merge", "--config", str(tmp_path / "first" / "seedlora_config.yaml"), "-o", str(tmp_path / "again"))[0] == 0
    assert folder_bytes(tmp_path / "first") == folder_bytes(tmp_path / "again")


def test_shipped_example_config_runs_and_reruns_byte_identically(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(REPO)  # the example names adapters/seed-* relative to the repository root
    code, out, err = run(capsys, "merge", "--config", "examples/merge.yaml", "-o", str(tmp_path / "example"))
    assert code == 0, err
    assert "merged 3 adapters with ties" in out and "rank 16" in out
    monkeypatch.chdir(tmp_path)  # the saved config names its inputs by absolute path: runs from anywhere
    code, _, err = run(capsys, "merge", "--config", "example/seedlora_config.yaml", "-o", "again")
    assert code == 0, err
    assert folder_bytes(tmp_path / "example") == folder_bytes(tmp_path / "again")
