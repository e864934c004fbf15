"""Score a base model and adapters with lm-evaluation-harness on our task files, one table.

Runs the real `lm_eval` command once per candidate (the base alone, then base + each adapter
through `peft=`), from the repository root so the task files' data paths resolve, and collects
each task's metric into results.json and table.md. Used for the lm-eval column of the README's
experiment table.

    python -m eval.lm_eval_table --base HuggingFaceTB/SmolLM2-135M-Instruct \
        --candidate seed-0=adapters/seed-0 --candidate seedlora=merged-seedlora \
        --tasks seedlora_sentiment --output eval/results/lm_eval

`--backend vllm` runs lm_eval's vLLM backend instead (eval/lm_eval_vllm.py); a candidate that is
a full model folder (a `--fuse` merge) is evaluated as the model itself.
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


def model_args(backend: str, base: str, candidate: str | None) -> str:
    """lm_eval's --model_args for the base alone, base + adapter, or a full (fused) model folder."""
    if candidate and (Path(candidate) / "config.json").is_file():
        model, adapter = candidate, None
    else:
        model, adapter = base, candidate
    args = f"pretrained={model},dtype=float32"
    if backend == "hf":
        return args + (f",peft={adapter}" if adapter else "")
    args += ",enforce_eager=True,max_model_len=256"
    if adapter:
        rank = json.loads((Path(adapter) / "adapter_config.json").read_text())["r"]
        bucket = next(b for b in (8, 16, 32, 64, 128, 256, 320, 512) if b >= rank)  # vLLM's max_lora_rank values
        args += f",enable_lora=True,lora_local_path={adapter},max_lora_rank={bucket}"
    return args


def run_candidate(backend: str, base: str, candidate: str | None, tasks: list, output: Path, batch_size: str) -> dict:
    """One `lm_eval` run; {task: metric value} from the results file it writes."""
    runner = ["-m", "lm_eval"] if backend == "hf" else ["-m", "eval.lm_eval_vllm"]
    command = [sys.executable, *runner, "--model", backend, "--model_args", model_args(backend, base, candidate),
               "--tasks", ",".join(tasks), "--include_path", "eval/lm_eval_tasks", "--batch_size", batch_size,
               "--output_path", str(output)]
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
    parser.add_argument("--candidate", action="append", default=[], metavar="NAME=FOLDER",
                        help="an adapter folder or a full (fused) model folder (repeatable)")
    parser.add_argument("--backend", choices=("hf", "vllm"), default="hf",
                        help="lm_eval's model backend: hf (transformers + PEFT) or vllm (through eval/lm_eval_vllm.py)")
    parser.add_argument("--tasks", default="seedlora_sentiment", help="comma-separated task names from eval/lm_eval_tasks")
    parser.add_argument("--batch-size", default="8", help="an integer, or auto")
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args(argv)
    tasks = args.tasks.split(",")
    candidates = {"base": None, **dict(item.split("=", 1) for item in args.candidate)}
    rows, seconds = {}, {}
    for name, adapter in candidates.items():
        started = time.perf_counter()
        rows[name] = run_candidate(args.backend, args.base, adapter, tasks, args.output.resolve() / "runs" / name, args.batch_size)
        seconds[name] = round(time.perf_counter() - started, 1)
        print(name, rows[name], f"{seconds[name]} s", flush=True)
    args.output.mkdir(parents=True, exist_ok=True)
    record = {"backend": args.backend, "base": args.base, "candidates": candidates, "tasks": tasks, "results": rows, "seconds": seconds}
    (args.output / "results.json").write_text(json.dumps(record, indent=1) + "\n")
    (args.output / "table.md").write_text(table(rows, tasks))
    print(table(rows, tasks))


if __name__ == "__main__":
    main()
