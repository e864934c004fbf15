"""Method parameters on the command line (flags generated from the registry, --param NAME=VALUE),
per-module statistics in the report and on the terminal, and `seedlora methods` = the README table."""

import itertools
import json
import re
from pathlib import Path

import pytest
import torch

from _adapters import make_adapter, peft_deltas
from seedlora.cli import main
from seedlora.cli.methods import markdown
from seedlora.methods import METHODS
from seedlora.methods.cli_params import flag_name

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    """Seeds of one 'task': two identical adapters and one other, so the updates' mean cosine is > 0."""
    root = tmp_path_factory.mktemp("inputs")
    return [str(make_adapter(root / "a", seed=1, r=4, alpha=8)), str(make_adapter(root / "b", seed=1, r=4, alpha=8)),
            str(make_adapter(root / "c", seed=2, r=2, alpha=4))]


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_every_parameter_of_every_method_is_a_flag(capsys):
    with pytest.raises(SystemExit):
        main(["merge", "--help"])
    help_text = capsys.readouterr().out
    for method in METHODS:
        for param in method.params:
            assert flag_name(param.name) in help_text, (method.name, param.name)
            if param.is_flag:
                assert f"--no-{param.name.replace('_', '-')}" in help_text
    assert "--param NAME=VALUE" in help_text


def test_model_stock_prints_and_records_t_per_module_and_is_exact(adapters, tmp_path, capsys):
    code, out, _ = run_cli(capsys, "merge", *adapters, "-m", "model_stock", "-o", tmp_path / "m")
    assert code == 0 and "rank 10" in out and "exact: no truncation" in out
    line = re.search(r"t per module: min ([\d.]+), median ([\d.]+), max ([\d.]+)", out)
    assert line and "cos per module: min" in out
    report = json.loads((tmp_path / "m" / "merge_report.json").read_text())
    inputs = [peft_deltas(a) for a in adapters]
    merged = peft_deltas(tmp_path / "m")
    ts = []
    for module in report["modules"]:  # t from the formula on PEFT's own dense updates
        taus = [d[module["name"]].double() for d in inputs]
        cos = sum(torch.nn.functional.cosine_similarity(taus[i].reshape(-1), taus[j].reshape(-1), dim=0)
                  for i, j in itertools.combinations(range(3), 2)) / 3
        t = float(3 * cos / (1 + 2 * cos))
        assert module["stats"]["t"] == pytest.approx(t, rel=1e-6) and module["stats"]["cos"] == pytest.approx(float(cos), rel=1e-6)
        torch.testing.assert_close(merged[module["name"]].double(), t * sum(taus) / 3, rtol=1e-5, atol=1e-6)
        ts.append(t)
    assert float(line.group(1)) == pytest.approx(min(ts), rel=1e-3) and float(line.group(3)) == pytest.approx(max(ts), rel=1e-3)


def test_fused_output_records_the_stats_in_its_provenance(adapters, tmp_path, capsys):
    from _adapters import save_tiny_llama

    base = save_tiny_llama(tmp_path / "base")
    code, out, _ = run_cli(capsys, "merge", *adapters, "-m", "model_stock", "--base", base, "--fuse", "-o", tmp_path / "f")
    assert code == 0 and "t per module: min" in out
    record = json.loads((tmp_path / "f" / "seedlora_provenance.json").read_text())
    assert set(record["report"]["module_stats"]) == {f"model.layers.{i}.self_attn.{m}" for i in (0, 1) for m in ("q_proj", "v_proj")}


def test_flags_and_generic_param_give_the_same_bytes(adapters, tmp_path, capsys):
    pair = adapters[1:]
    assert run_cli(capsys, "merge", *pair, "-m", "slerp", "--t", "0.3", "-o", tmp_path / "a")[0] == 0
    assert run_cli(capsys, "merge", *pair, "-m", "SLERP", "--param", "t=0.3", "-o", tmp_path / "b")[0] == 0
    for name in ("adapter_model.safetensors", "merge_report.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert run_cli(capsys, "merge", *adapters, "-m", "multislerp", "--no-normalize-weights", "--eps", "1e-6",
                   "-o", tmp_path / "c")[0] == 0
    params = json.loads((tmp_path / "c" / "merge_report.json").read_text())["params"]
    assert params == {"normalize_weights": 0, "eps": 1e-6}
    assert run_cli(capsys, "merge", *adapters, "-m", "della_linear", "--density", "0.5", "--param", "epsilon=0.2",
                   "--lambda", "1.5", "--rescale", "inverse", "-o", tmp_path / "d")[0] == 0
    params = json.loads((tmp_path / "d" / "merge_report.json").read_text())["params"]
    assert params == {"density": 0.5, "epsilon": 0.2, "rescale": "inverse", "lambda": 1.5}


@pytest.mark.parametrize("args, message", [
    (["-m", "ties", "--epsilon", "0.1"], "method 'ties' has no parameter 'epsilon' (accepted: density, majority_sign)"),
    (["-m", "ties", "--param", "densty=0.3"], "did you mean 'density'?"),
    (["-m", "ties", "--param", "density"], "--param needs NAME=VALUE"),
    (["-m", "ties", "--density", "0.3", "--param", "density=0.4"], "given twice with different values"),
    (["-m", "della", "--density", "0.95"], "density ± epsilon must lie in (0, 1)"),
    (["-m", "knots", "--merge", "mean"], "must be one of ties, linear"),
    (["-m", "tsv", "--lambda", "big"], "parameter 'lambda' must be float, got 'big'"),
    (["-m", "slerp"], "merges exactly 2 inputs, got 3"),
    (["-m", "modelstock"], "did you mean 'model_stock'?"),
])
def test_bad_parameters_are_one_line_errors_and_write_nothing(adapters, tmp_path, capsys, args, message):
    code, _, err = run_cli(capsys, "merge", *adapters, *args, "-o", tmp_path / "out")
    assert code != 0 and err.startswith("error: ") and err.count("\n") == 1 and message in err
    assert not (tmp_path / "out").exists()


def test_methods_lists_flags_as_flags(capsys):
    code, out, _ = run_cli(capsys, "methods")
    assert code == 0
    assert "--normalize (off)" in out and "--filter-wise (off)" in out and "--t 0.5" in out and "--sv-reduction 1/K" in out
    assert "normalize=0" not in out and "filter_wise=" not in out
    for method in METHODS:
        assert f"\n{method.name}: " in "\n" + out and method.paper in out


def test_readme_methods_table_is_the_registry(capsys):
    """The README's table is `seedlora methods --markdown`, row for row."""
    code, out, _ = run_cli(capsys, "methods", "--markdown")
    assert code == 0 and out.strip() == markdown(METHODS)
    readme_rows = [line for line in README.read_text().splitlines() if line.startswith("| ")]
    for row in out.strip().splitlines():
        if row.startswith("| "):
            assert row in readme_rows, f"README methods table is out of date: {row[:80]}"


def test_peft_api_reports_the_stats_and_adds_the_exact_update(adapters):
    from peft import PeftModel

    from _adapters import tiny_llama
    from seedlora import merge_peft_adapters

    model = PeftModel.from_pretrained(tiny_llama(), adapters[0], adapter_name="a0")
    for i, folder in enumerate(adapters[1:], 1):
        model.load_adapter(folder, adapter_name=f"a{i}")
    report = merge_peft_adapters(model, ["a0", "a1", "a2"], "stock", method="model_stock")
    for module in report.modules:
        layer = model.base_model.model.get_submodule(module.name)
        taus = [layer.get_delta_weight(f"a{i}").double() for i in range(3)]
        expected = module.stats["t"] * sum(taus) / 3
        torch.testing.assert_close(layer.get_delta_weight("stock").double(), expected, rtol=1e-5, atol=1e-6)
