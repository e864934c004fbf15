"""eval/experiment.py end to end (--smoke) on a tiny Llama standing in for SmolLM2."""

import json

import pytest

from _tiny import make_tiny_llama
from eval.experiment import parse_args, run_experiment
from seedlora import METHODS


def write_task(folder, rows):
    folder.mkdir(parents=True)
    for split, part in (("train", rows), ("test", rows[:6])):
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))


def test_smoke_run_trains_merges_evaluates_and_reports_every_method(tmp_path, capsys):
    model = make_tiny_llama(tmp_path / "model")  # a prepared model folder: prepare_smollm2 skips it
    data = tmp_path / "data"
    write_task(data / "sentiment", [{"prompt": f"Tweet: {'good' if i % 2 else 'bad'} day {i}\nSentiment:",
                                     "completion": " positive" if i % 2 else " negative"} for i in range(16)])
    write_task(data / "gsm", [{"prompt": f"Question: {i} plus 1?\nAnswer:", "completion": f" {i + 1}"} for i in range(16)])
    work = tmp_path / "runs"
    run_experiment(parse_args(["--smoke", "--quiet", "--seeds", "0", "1", "--model-dir", str(model), "--data-dir", str(data),
                               "--work-dir", str(work), "--export-adapters", str(tmp_path / "adapters")]))

    for task in ("sentiment", "gsm"):
        out = work / "smoke" / "results" / task
        result = json.loads((out / "results.json").read_text())
        roles = {name: m["role"] for name, m in result["models"].items()}
        assert roles == {"base": "base", "seed-0": "single", "seed-1": "single", "long-2x": "equal-compute",
                         **{m.name: "merged" for m in METHODS}}
        assert result["examples"] == 6 and set(result["experiment"]["timings"]) >= {"train_s", "merge_s", "evaluate_s"}
        table = (out / "table.md").read_text()
        assert "single mean ± std (n=2)" in table and "Equal compute" in table
        assert all(f"| {m.name} |" in table for m in METHODS)
        assert (out / "chart.png").is_file() and (out / "imbalance.png").is_file()
        assert (tmp_path / "adapters" / f"smollm2-{task}" / "seed-1" / "adapter_model.safetensors").is_file()
    run = json.loads((work / "smoke" / "results" / "run.json").read_text())
    assert run["wall_time_s"] > 0 and set(run["tasks"]) == {"sentiment", "gsm"}
    assert "total wall time" in capsys.readouterr().out


@pytest.mark.parametrize("dense_as", ["fused", "adapter"])
def test_dense_merges_are_fused_models_or_truncated_adapters(tmp_path, dense_as):
    model = make_tiny_llama(tmp_path / "model")
    data = tmp_path / "data"
    write_task(data / "sentiment", [{"prompt": f"Tweet: day {i}\nSentiment:", "completion": " positive" if i % 2 else " negative"}
                                    for i in range(16)])
    run_experiment(parse_args(["--smoke", "--quiet", "--tasks", "sentiment", "--seeds", "0", "1", "--dense-as", dense_as,
                               "--no-diagnose", "--model-dir", str(model), "--data-dir", str(data),
                               "--work-dir", str(tmp_path / "runs")]))
    result = json.loads((tmp_path / "runs" / "smoke" / "results" / "sentiment" / "results.json").read_text())
    types = {m.name: result["models"][m.name]["type"] for m in METHODS}
    assert types == {m.name: "adapter" if m.low_rank or dense_as == "adapter" else "model" for m in METHODS}
    assert result["imbalance"] is None
    assert not (data / "gsm").exists()  # only the asked tasks are prepared (reasoning-gym not needed)
