"""Write one task's experiment report: results.json, table.md and chart.png, partial or final.

Evaluates what the report needs (cached by eval/pipeline.py): the singles on the validation
split, which chooses the best single by loss (without a validation split: on test, flagged),
and base, singles, merges and the long run on the test split. Adds the seeds' agreement
(eval/agreement.py) at the end of each epoch and the measured training time per step.
"""

from __future__ import annotations

import json
from pathlib import Path

from . import pipeline
from .agreement import agreement
from .charts import dot_chart
from .experiment_report import build_rows, markdown, references


def _log(folder: Path) -> dict:
    return json.loads((folder / "train_log.json").read_text())


def training_times(state: dict) -> dict:
    """Steps, wall seconds and seconds per step of every training run of the task."""
    runs = {f"seed-{_log(p)['seed']}": p for p in state["singles"]}
    if state["long"] is not None:
        runs[state["long"].parent.name] = state["long"]
    out = {}
    for name, folder in runs.items():
        log = _log(folder)
        timed = log.get("steps_run", None if log.get("resumed_from") else log["steps"])  # steps of the last call
        out[name] = {"steps": log["steps"], "wall_s": log["wall_time_s"], "timed_steps": timed,
                     "s_per_step": log["wall_time_s"] / timed if timed else None, "resumed_from": log.get("resumed_from")}
    return out


def seed_agreement(singles: list[Path]) -> dict:
    """Agreement of the final seed adapters and of their end-of-epoch adapters."""
    out = {"final": agreement(singles)}
    epochs = sorted({p.name for p in singles[0].glob("epoch-*")}, key=lambda n: int(n.split("-")[1]))
    for epoch in epochs:
        folders = [p / epoch for p in singles]
        if all((f / "adapter_model.safetensors").is_file() for f in folders):
            out[epoch] = agreement(folders)
    return out


def evaluations(base: Path, state: dict, args) -> tuple[dict, dict, dict]:
    """(test entries, roles, validation entries of the singles)."""
    task, work, files, settings = state["task"], state["work"], state["files"], {"batch_size": args.eval_batch_size, "quiet": args.quiet}

    singles = {f"seed-{_log(p)['seed']}": p for p in state["singles"]}
    candidates, roles = {"base": None, **singles}, {"base": "base", **dict.fromkeys(singles, "single")}
    if state["long"] is not None:
        name = state["long"].parent.name
        candidates[name], roles[name] = state["long"], "equal-compute"
    for name in state["merged"]:
        candidates[name], roles[name] = work / "merged" / name, "merged"
    validation = {}
    if "validation" in files:
        validation = pipeline.evaluate(base, singles, files["validation"], pipeline.TASKS[task], work / "evals" / "validation", settings)
    test = pipeline.evaluate(base, candidates, files["test"], pipeline.TASKS[task], work / "evals" / "test", settings)
    return test, roles, validation


def write_task_report(base: Path, state: dict, out: Path, args, pending: list[str]) -> dict:
    """Evaluate what is needed and write results.json, table.md, chart.png into `out`."""
    test, roles, validation = evaluations(base, state, args)
    singles = [n for n in roles if roles[n] == "single"]
    best_on = "validation" if validation else "test"
    best = min(singles, key=lambda n: (validation or test)[n]["loss"])
    rows = build_rows(test, roles, best, best_on, draws=args.bootstrap)
    agree = seed_agreement(state["singles"])
    regime, task = state["regime"], state["task"]
    result = {
        "regime": regime, "task": task, "status": "partial" if pending else "complete", "pending": pending,
        "lr": state["lr"], "lr_selection": state["lr_selection"], "best_single": {"name": best, "chosen_on": best_on},
        "validation": {n: {"loss": e["loss"], "accuracy": e["accuracy"]} for n, e in validation.items()},
        "agreement": agree, "merges": state["merged"], "rows": rows, "training": training_times(state),
        "timings": state["timings"], "test_examples": len(test["base"]["per_example"]["loss"]), "models": test,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    (out / "table.md").write_text(table_text(result))
    title = f"{regime['name']} regime, {task}: {result['test_examples']} test examples, 95% bootstrap intervals"
    dot_chart(rows, title + (" (PARTIAL)" if pending else ""), out / "chart.png", references(rows))
    return result


def table_text(result: dict) -> str:
    """table.md: status, choices, the table, agreement per epoch, training time per step."""
    regime = result["regime"]
    lines = [f"Regime `{regime['name']}` ({regime['about']}), task `{result['task']}`, {result['test_examples']} test examples.",
             f"Status: **{result['status']}**" + (f" (pending: {', '.join(result['pending'])})" if result["pending"] else ""), ""]
    if result["lr_selection"]:
        choice = ", ".join(f"{n}: validation loss {v['validation_loss']:.4f}, acc {100 * v['validation_accuracy']:.1f}%"
                           for n, v in result["lr_selection"].items())
        lines += [f"Learning rate chosen on validation: {result['lr']:g} ({choice}).", ""]
    best = result["best_single"]
    lines += [f"Best single: {best['name']}, chosen by {best['chosen_on']} loss. Loss = mean NLL per answer token; "
              "Δ loss < 0 and Δ acc > 0 are gains; [95% CI]; p = paired bootstrap (McNemar: exact, accuracy).", ""]
    seedlora_a = {"seedlora": result["agreement"]["final"]["a_mean"]} if result["agreement"]["final"]["a_mean"] else None
    lines.append(markdown(result["rows"], seedlora_a))
    lines += ["Agreement of the K seeds (mean over modules): pairwise cosine of the updates, SeedLoRA's a = σ̂/σ(τ_avg) "
              f"(√K = {result['agreement']['final']['sqrt_k']:.3f} for unrelated seeds):", "",
              "| adapters | cosine mean | cosine median | a mean | a median |", "|---|---|---|---|---|"]
    for name, a in result["agreement"].items():
        lines.append(f"| {name} | {a['cosine_mean']:.3f} | {a['cosine_median']:.3f} | {a['a_mean']:.3f} | {a['a_median']:.3f} |")
    lines += ["", "Training time (this machine, shared; seconds of the last call, which may have resumed): " + ", ".join(
        f"{n} {t['steps']} steps" + (f" ({t['s_per_step']:.2f} s/step)" if t["s_per_step"] else "")
        for n, t in result["training"].items()), ""]
    return "\n".join(lines)
