"""The real experiment: do merged seed adapters beat a single run? Resumable across sessions.

    python -m eval.experiment --regime papers      # the papers' regime (eval/regimes.json)
    python -m eval.experiment --regime quick       # the first, 1-epoch experiment
    python -m eval.experiment --regime papers --smoke --model-dir TINY   # the pipeline on a few rows
    python -m eval.experiment --measure-step       # time a few SmolLM2 steps to size a run
    python -m eval.experiment --regime papers --status   # what is done and what remains (STATUS.md)

A regime (eval/regimes.json: data, preset, seeds, learning rates, LoRA targets, merge methods)
runs, per task, on SmolLM2-135M-Instruct (eval/prepare_smollm2.py):
1. seed s0 at each candidate learning rate; with several, the one with the lower validation
   loss is kept (the test split chooses nothing);
2. the other K-1 seeds at that rate (`seedlora.train.train_adapters`, epoch adapters kept);
3. every merge method of the regime on the K seeds: low-rank methods as exact adapters, dense
   ones as exact fused models;
4. evaluation (eval/evaluate.py) of the singles on validation (chooses the best single) and of
   base, singles, merges on test; a report (eval/experiment_report.py: 95 % bootstrap intervals,
   paired tests against the best and the mean single; eval/agreement.py: the seeds' cosine and
   SeedLoRA's rescale a, per epoch) marked "partial" with what is pending;
5. one run of K x the epochs (the same compute as the K seeds), evaluated, and the final report.
Every step keeps what is finished (eval/pipeline.py), so rerunning the same command resumes,
and an interrupted training run continues from its last checkpoint (every epoch and every
`save_steps`). Output: eval/results/<regime>/<task>/{results.json, table.md, chart.png}.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path

from seedlora.errors import SeedLoraError

from . import pipeline, prepare_data, prepare_smollm2
from .evaluate import quiet_libraries

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def load_regime(name: str, path: Path = HERE / "regimes.json") -> dict:
    """A regime from the config file, its merge methods checked against the registry."""
    from seedlora import METHODS

    regimes = json.loads(Path(path).read_text())
    if name not in regimes:
        raise SeedLoraError(f"unknown regime {name!r} (eval/experiment.py): use one of {sorted(regimes)} or add it to {path}")
    regime = {**regimes[name], "name": name}
    known = {m.name for m in METHODS}
    unknown = [m for m in regime["methods"] if m not in known]
    if unknown:
        raise SeedLoraError(f"regime {name}: methods {unknown} are not in seedlora's registry ({sorted(known)}); fix {path}")
    return regime


def task_files(regime: dict, task: str, args) -> dict[str, Path]:
    """train/validation/test files of one task (validation only where the regime has one)."""
    folder = (args.data_dir or REPO / regime["data"]) / task
    files = {split: folder / f"{split}.jsonl" for split in ("train", "validation", "test") if (folder / f"{split}.jsonl").is_file()}
    if "train" not in files or "test" not in files:
        raise SeedLoraError(f"{folder} lacks train.jsonl or test.jsonl (eval/experiment.py): run python -m eval.prepare_data")
    if not args.smoke:
        return files
    small = args.work_dir / regime["name"] / task / "data"
    small.mkdir(parents=True, exist_ok=True)
    for split, path in files.items():
        (small / path.name).write_text("".join(path.read_text().splitlines(keepends=True)[: 16 if split == "train" else 8]))
    return {split: small / path.name for split, path in files.items()}


def train_settings(regime: dict, task: str, lr: float, args, epochs_factor: int = 1) -> dict:
    """train_adapters options of the regime at one learning rate (epochs x factor)."""
    from seedlora.train.presets import PRESETS

    settings = {"preset": regime["preset"], "lr": lr, "target_modules": regime["targets"],
                "max_length": pipeline.TASKS[task]["max_length"], "save_steps": regime.get("save_steps"),
                "epochs": PRESETS[regime["preset"]]["epochs"] * epochs_factor, "save_every_epoch": epochs_factor == 1}
    if args.smoke:
        settings["max_steps"] = 2 * epochs_factor
    return settings


def choose_lr(base, regime, task, files, work, args) -> tuple[float, dict]:
    """Train seed s0 at each candidate rate; keep the one with the lowest validation loss."""
    s0, lrs = regime["seeds"][0], regime["lrs"]
    runs = {f"lr-{lr:g}": pipeline.train(base, files["train"], work / f"lr-{lr:g}", [s0], train_settings(regime, task, lr, args),
                                         args.quiet, args.report_only)[0] for lr in lrs}
    if len(lrs) == 1:
        return lrs[0], {}
    if "validation" not in files:
        raise SeedLoraError(f"regime {regime['name']} compares learning rates but {task} has no validation split")
    scored = pipeline.evaluate(base, runs, files["validation"], pipeline.TASKS[task], work / "evals" / "validation", eval_settings(args))
    table = {name: {"validation_loss": e["loss"], "validation_accuracy": e["accuracy"]} for name, e in scored.items()}
    best = min(lrs, key=lambda lr: scored[f"lr-{lr:g}"]["loss"])
    return best, table


def eval_settings(args) -> dict:
    return {"batch_size": args.eval_batch_size, "quiet": args.quiet}


def run_task(base: Path, regime: dict, task: str, args) -> dict:
    """All steps of one task; writes the report after the merges and again after the long run."""
    from seedlora import get_method

    from .report_writer import write_task_report

    work, out = args.work_dir / regime["name"] / task, args.results_dir / regime["name"] / task
    files, seeds = task_files(regime, task, args), regime["seeds"]
    clock = time.perf_counter()
    lr, lr_table = choose_lr(base, regime, task, files, work, args)
    singles = pipeline.train(base, files["train"], work / f"lr-{lr:g}", seeds, train_settings(regime, task, lr, args), args.quiet,
                             args.report_only)
    timings = {"train_seeds_s": time.perf_counter() - clock}
    merged = {}
    for name in regime["methods"]:
        method = get_method(name)
        merged[name] = pipeline.merge(base, singles, method, work / "merged" / name, fused=not method.low_rank)
    state = {"regime": regime, "task": task, "lr": lr, "lr_selection": lr_table, "singles": singles, "merged": merged,
             "work": work, "files": files, "timings": timings, "long": None}
    write_task_report(base, state, out, args, pending=["long run"])
    long_dir = work / f"lr-{lr:g}" / f"long-{len(seeds)}x"
    if args.no_long_run or (args.report_only and not pipeline.finished(long_dir / f"seed-{seeds[0]}")):
        return json.loads((out / "results.json").read_text())
    clock = time.perf_counter()
    long = pipeline.train(base, files["train"], long_dir, [seeds[0]], train_settings(regime, task, lr, args, len(seeds)),
                          args.quiet, args.report_only)[0]
    timings["train_long_s"] = time.perf_counter() - clock
    state["long"] = long
    write_task_report(base, state, out, args, pending=[])
    return json.loads((out / "results.json").read_text())


def _seeds_trained(regime: dict, task: str, args) -> bool:
    """True when every seed of `task` is trained at some candidate learning rate (for --report-only)."""
    work = args.work_dir / regime["name"] / task
    return any(all(pipeline.finished(work / f"lr-{lr:g}" / f"seed-{s}") for s in regime["seeds"]) for lr in regime["lrs"])


def measure_steps(base: Path, args) -> list[dict]:
    """Seconds per optimizer step of a few real training steps per task and LoRA target set."""
    from seedlora.train import train_adapters

    rows = []
    for task in ("sentiment", "gsm"):
        data = (args.data_dir or REPO / "eval" / "data" / "papers") / task / "train.jsonl"
        for targets in (["q_proj", "v_proj"], "all-linear"):
            out = args.work_dir / "measure" / f"{task}-{'qv' if isinstance(targets, list) else 'all'}"
            shutil.rmtree(out, ignore_errors=True)
            (folder,) = train_adapters(base, data, out, [0], max_steps=4, target_modules=targets, progress=False,
                                       max_length=pipeline.TASKS[task]["max_length"])
            log = json.loads((folder / "train_log.json").read_text())
            rows.append({"task": task, "targets": targets, "s_per_step": log["wall_time_s"] / log["steps"]})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--regime", default="quick", help="a regime of eval/regimes.json (default quick)")
    parser.add_argument("--tasks", nargs="+", choices=sorted(pipeline.TASKS), help="default: the regime's tasks")
    parser.add_argument("--no-long-run", action="store_true", help="stop after the seeds and merges (report marked partial)")
    parser.add_argument("--report-only", action="store_true",
                        help="train nothing: write the reports of tasks whose seeds are trained (merging and evaluating what is missing)")
    parser.add_argument("--eval-batch-size", type=int, default=16)
    parser.add_argument("--bootstrap", type=int, default=10_000, help="bootstrap draws for intervals and p-values")
    parser.add_argument("--smoke", action="store_true", help="16 train rows, 2 steps, 8 test rows: checks the pipeline")
    parser.add_argument("--measure-step", action="store_true", help="time 4 training steps per task and target set, then exit")
    parser.add_argument("--status", action="store_true", help="write eval/results/<regime>/STATUS.md (what is done, what remains) and exit")
    parser.add_argument("--model-dir", type=Path, default=prepare_smollm2.DEFAULT_OUTPUT)
    parser.add_argument("--data-dir", type=Path, default=None, help="task folders (default: the regime's)")
    parser.add_argument("--work-dir", type=Path, default=HERE / "runs")
    parser.add_argument("--results-dir", type=Path, default=HERE / "results")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: 2 collapse when the cores are shared)")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    if args.smoke:
        args.work_dir, args.results_dir = args.work_dir / "smoke", args.work_dir / "smoke" / "results"
    return args


def run_experiment(args: argparse.Namespace, command: str = "") -> dict:
    """Prepare, then run every task of the regime; return the run record (also run.json)."""
    started = time.perf_counter()
    regime = load_regime(args.regime)
    tasks = args.tasks or regime["tasks"]
    if args.status:
        from .status import write_status

        data = {task: (args.data_dir or REPO / regime["data"]) / task for task in tasks}
        path = write_status(regime, tasks, args.work_dir, args.results_dir, data, 8)
        print(path.read_text())
        return {"status": str(path)}
    base = prepare_smollm2.prepare_smollm2(args.model_dir)
    if args.measure_step:
        return {"measure_step": measure_steps(base, args)}
    if args.data_dir is None and regime["name"] == "papers":
        prepare_data.prepare_papers_data(REPO / regime["data"], tasks=tasks)
    elif args.data_dir is None:
        prepare_data.prepare_data(REPO / regime["data"], tasks=tasks)
    status = {}
    for task in tasks:
        if args.report_only and not _seeds_trained(regime, task, args):
            print(f"{task}: seeds not trained yet, no report (--report-only)")
            continue
        result = run_task(base, regime, task, args)
        status[task] = result["status"]
        print((args.results_dir / regime["name"] / task / "table.md").read_text(), flush=True)
    total = time.perf_counter() - started
    record = {"command": command, "regime": regime["name"], "wall_time_s": round(total, 1), "status": status}
    (args.results_dir / regime["name"]).mkdir(parents=True, exist_ok=True)
    (args.results_dir / regime["name"] / "run.json").write_text(json.dumps(record, indent=1) + "\n")
    print(f"total wall time {total:.0f} s ({math.ceil(total / 60)} min)")
    return record


def main(argv: list[str] | None = None) -> None:
    """Command line: process-wide settings (threads, library progress bars) live only here."""
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.quiet:
        quiet_libraries()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    try:
        run_experiment(args, "python -m eval.experiment " + " ".join(argv))
    except SeedLoraError as error:
        raise SystemExit(f"error: {error}")


if __name__ == "__main__":
    main()
