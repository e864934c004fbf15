"""eval/experiment.py end to end (--smoke) on a tiny Llama standing in for SmolLM2: every step, resumed."""

import json

import pytest

from _tiny import make_tiny_llama
from eval.experiment import load_regime, parse_args, run_experiment
from seedlora import get_method
from seedlora.errors import SeedLoraError


def write_task(folder, rows, validation=True):
    folder.mkdir(parents=True)
    splits = {"train": rows, "test": rows[:6], **({"validation": rows[6:12]} if validation else {})}
    for split, part in splits.items():
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))


def sentiment_rows():
    return [{"prompt": f"Tweet: {'good' if i % 2 else 'bad'} day {i}\nSentiment:", "completion": " positive" if i % 2 else " negative"}
            for i in range(16)]


@pytest.fixture(scope="module")
def papers_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("papers")
    model = make_tiny_llama(root / "model")  # a prepared model folder: prepare_smollm2 skips it
    write_task(root / "data" / "sentiment", sentiment_rows())
    argv = ["--regime", "papers", "--smoke", "--quiet", "--tasks", "sentiment", "--bootstrap", "300", "--model-dir", str(model),
            "--data-dir", str(root / "data"), "--work-dir", str(root / "runs")]
    run_experiment(parse_args(argv))
    return root, argv


def test_papers_regime_chooses_lr_on_validation_and_reports_intervals_and_tests(papers_run):
    root, _ = papers_run
    out = root / "runs" / "smoke" / "results" / "papers" / "sentiment"
    result = json.loads((out / "results.json").read_text())
    regime = load_regime("papers")
    assert result["status"] == "complete" and result["pending"] == []
    assert set(result["lr_selection"]) == {f"lr-{lr:g}" for lr in regime["lrs"]}
    assert result["lr"] == min(regime["lrs"], key=lambda lr: result["lr_selection"][f"lr-{lr:g}"]["validation_loss"])
    best = result["best_single"]
    assert best["chosen_on"] == "validation"
    assert best["name"] == min(result["validation"], key=lambda n: result["validation"][n]["loss"])
    names = [row["name"] for row in result["rows"]]
    seeds = [f"seed-{s}" for s in regime["seeds"]]
    assert names == ["base", *seeds, "single mean (n=5)", f"single best: {best['name']}", "long-5x", *regime["methods"]]
    for row in result["rows"]:
        assert row["loss_ci"][0] <= row["loss"] <= row["loss_ci"][1]
        assert row["accuracy_ci"][0] <= row["accuracy"] <= row["accuracy_ci"][1]
    merged = {row["name"]: row for row in result["rows"] if row["role"] == "merged"}
    for row in merged.values():
        assert 0 < row["vs_best"]["loss"]["p_bootstrap"] <= 1 and "p_mcnemar" in row["vs_best"]["accuracy"]
        assert row["vs_mean"]["loss"]["diff"] == pytest.approx(row["loss"] - result["rows"][len(seeds) + 1]["loss"])
    assert {name: result["models"][name]["type"] for name in merged} == {
        name: "adapter" if get_method(name).low_rank else "model" for name in merged}
    assert set(result["agreement"]) == {"final", "epoch-1"} and result["agreement"]["final"]["k"] == 5
    table = (out / "table.md").read_text()
    assert "Status: **complete**" in table and "| seedlora |" in table and "Learning rate chosen on validation" in table
    assert (out / "chart.png").read_bytes()[:4] == b"\x89PNG"
    assert result["training"]["long-5x"]["steps"] == 10 and result["training"]["seed-0"]["s_per_step"] > 0


def test_rerun_reuses_every_finished_step(papers_run, capsys):
    root, argv = papers_run
    adapter = root / "runs" / "smoke" / "papers" / "sentiment"
    stamps = {p: p.stat().st_mtime_ns for p in adapter.rglob("*.safetensors")}
    capsys.readouterr()
    run_experiment(parse_args(argv))
    assert "evaluated" not in capsys.readouterr().out  # every evaluation came from the cache
    assert {p: p.stat().st_mtime_ns for p in adapter.rglob("*.safetensors")} == stamps


def test_report_only_trains_nothing(papers_run, tmp_path, capsys):
    root, argv = papers_run
    run_experiment(parse_args([*argv, "--report-only"]))
    assert (root / "runs" / "smoke" / "results" / "papers" / "sentiment" / "results.json").is_file()
    fresh = [*argv[:-1], str(tmp_path / "fresh"), "--report-only"]  # --work-dir is the last option of argv
    capsys.readouterr()
    run_experiment(parse_args(fresh))
    assert "sentiment: seeds not trained yet" in capsys.readouterr().out
    assert not list((tmp_path / "fresh").rglob("adapter_model.safetensors"))


def test_status_lists_every_run_and_the_chosen_rate(papers_run):
    root, argv = papers_run
    run_experiment(parse_args([*argv, "--status"]))
    status = (root / "runs" / "smoke" / "results" / "papers" / "STATUS.md").read_text()
    assert status.count(": done: 2 steps") == 6 and "long run (5 x 3 epochs): done: 10 steps" in status
    assert "chosen" in status and "merges done: linear, seedlora, ties, dare_ties, selection, model_stock" in status


def test_quick_regime_without_validation_flags_the_best_single_and_stops_before_the_long_run(tmp_path):
    model = make_tiny_llama(tmp_path / "model")
    write_task(tmp_path / "data" / "gsm", [{"prompt": f"Question: {i} plus 1?\nAnswer:", "completion": f" {i + 1}"}
                                           for i in range(16)], validation=False)
    run_experiment(parse_args(["--regime", "quick", "--smoke", "--quiet", "--tasks", "gsm", "--no-long-run", "--bootstrap", "200",
                               "--model-dir", str(model), "--data-dir", str(tmp_path / "data"), "--work-dir", str(tmp_path / "runs")]))
    result = json.loads((tmp_path / "runs" / "smoke" / "results" / "quick" / "gsm" / "results.json").read_text())
    assert result["status"] == "partial" and result["pending"] == ["long run"]
    assert result["best_single"]["chosen_on"] == "test" and result["lr_selection"] == {}
    assert any(row["name"].endswith("(chosen on test: optimistic)") for row in result["rows"])
    assert not any(row["role"] == "equal-compute" for row in result["rows"])


def test_a_regime_naming_an_unregistered_method_is_refused(tmp_path):
    config = tmp_path / "regimes.json"
    config.write_text(json.dumps({"x": {"methods": ["linear", "model_soup_v9"]}}))
    with pytest.raises(SeedLoraError, match=r"methods \['model_soup_v9'\] are not in seedlora's registry"):
        load_regime("x", config)
