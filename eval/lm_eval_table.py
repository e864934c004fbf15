"""Score a base model and adapters with lm-evaluation-harness on our task files, one table.

Runs the real `lm_eval` command once per candidate (the base alone, then base + each adapter
through `peft=`), from the repository root so the task files' data paths resolve, and collects
each task's metric into results.json and table.md. Used for the lm-eval column of the README's
experiment table.

    python -m eval.lm_eval_table --base HuggingFaceTB/SmolLM2-135M-Instruct \
        --candidate seed-0=adapters/seed-0 --candidate seedlora=merged-seedlora \
        --tasks seedlora_sentiment --output eval/results/lm_eval
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
METRICS = {"seedlora_sentiment": "acc,none", "seedlora_gsm": "exact_match,none", "seedlora_gsm_loss": "nll,none"}


def run_candidate(base: str, adapter: str | None, tasks: list, output: Path, batch_size: int) -> dict:
    """One `lm_eval` run; {task: metric value} from the results file it writes."""
    model_args = f"pretrained={base},dtype=float32" + (f",peft={adapter}" if adapter else "")
    command = [sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args", model_args, "--tasks", ",".join(tasks),
               "--include_path", "eval/lm_eval_tasks", "--batch_size", str(batch_size), "--output_path", str(output)]
    subprocess.run(command, cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    results = json.loads(max(output.rglob("results_*.json"), key=lambda p: p.stat().st_mtime).read_text())["results"]
    return {task: results[task][METRICS[task]] for task in tasks}


def table(rows: dict, tasks: list) -> str:
    lines = ["| model | " + " | ".join(tasks) + " |", "|---" * (len(tasks) + 1) + "|"]
    for name, values in rows.items():
        lines.append(f"| {name} | " + " | ".join(f"{values[t]:.4f}" for t in tasks) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", required=True, help="base model folder or Hub id")
    parser.add_argument("--candidate", action="append", default=[], metavar="NAME=ADAPTER", help="an adapter folder (repeatable)")
    parser.add_argument("--tasks", default="seedlora_sentiment", help="comma-separated task names from eval/lm_eval_tasks")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args(argv)
    tasks = args.tasks.split(",")
    candidates = {"base": None, **dict(item.split("=", 1) for item in args.candidate)}
    rows, seconds = {}, {}
    for name, adapter in candidates.items():
        started = time.perf_counter()
        rows[name] = run_candidate(args.base, adapter, tasks, args.output.resolve() / "runs" / name, args.batch_size)
        seconds[name] = round(time.perf_counter() - started, 1)
        print(name, rows[name], f"{seconds[name]} s", flush=True)
    args.output.mkdir(parents=True, exist_ok=True)
    record = {"base": args.base, "candidates": candidates, "tasks": tasks, "results": rows, "seconds": seconds}
    (args.output / "results.json").write_text(json.dumps(record, indent=1) + "\n")
    (args.output / "table.md").write_text(table(rows, tasks))
    print(table(rows, tasks))


if __name__ == "__main__":
    main()
