"""Every comparison the README quotes, one after another, then the FIGURE lines together.

Each claim runs as its own process (`python -m eval.compare.<claim> ...`, exactly the commands in
the README table), its output streamed and kept in WORK/logs/. --sample-only skips the 7B-shaped
runs (about 3 minutes instead of about 40 on a 2-core CPU).

    OMP_WAIT_POLICY=PASSIVE python -m eval.compare.all [--sample-only]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from eval.compare.common import DEFAULT_WORK, REPO

CLAIMS = [
    ("peft_linear", ["--inputs", "sample"]),
    ("peft_linear", ["--inputs", "7b", "--layers", "2"]),
    ("peft_ties", ["--inputs", "sample"]),
    ("peft_ties", ["--inputs", "7b", "--layers", "2", "--svd-layers", "1"]),
    ("mergekit_ties", ["--inputs", "sample"]),
    ("mergekit_ties", ["--inputs", "7b", "--layers", "2"]),
    ("mergekit_extract", ["--inputs", "sample", "--rank", "24"]),
    ("speed", ["--inputs", "sample", "--repeats", "3"]),
    ("speed", ["--inputs", "7b", "--layers", "2", "--repeats", "1"]),
]


def run_claim(module: str, options: list, logs: Path) -> list:
    """Run one claim script, echo its output, return its FIGURE lines (or one FAILED line)."""
    command = [sys.executable, "-m", f"eval.compare.{module}", *options]
    print("$ " + " ".join(["python", *command[1:]]), flush=True)
    log = logs / f"{module}-{options[1]}.log"
    with open(log, "w") as sink:
        proc = subprocess.Popen(command, cwd=str(REPO), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for line in proc.stdout:
            sink.write(line)
            if not line.startswith(("Warmup", "Executing", "Writing")):
                print(line, end="", flush=True)
    if proc.wait() != 0:
        return [f"FAILED {' '.join(command[1:])}: exit {proc.returncode} (log {log})"]
    return [line.strip() for line in log.read_text().splitlines() if line.startswith("FIGURE ")]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sample-only", action="store_true", help="skip the 7B-shaped runs")
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK)
    args = parser.parse_args(argv)
    logs = args.work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    figures = []
    for module, options in CLAIMS:
        if args.sample_only and options[1] != "sample":
            continue
        figures += run_claim(module, options + ["--work", str(args.work)], logs)
    print("\n== all figures")
    print("\n".join(figures))
    return 1 if any(line.startswith("FAILED") for line in figures) else 0


if __name__ == "__main__":
    raise SystemExit(main())
