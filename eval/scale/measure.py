"""Whole-process measurements: wall time, CPU time and peak RSS of one child process.

Peak RSS comes from GNU time (`/usr/bin/time -f %M`) wrapped around the command: a child forked
straight from this (large) benchmark process inherits its parent's RSS high-water mark in the
ru_maxrss that os.wait4 reports, which would put the benchmark's own 2 GB on every route. Without
GNU time, os.wait4's figure is used and marked as an upper bound.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
GNU_TIME = "/usr/bin/time"


def run_measured(command: list, log: Path, env: dict | None = None, cwd: Path = REPO) -> dict:
    """Run `command` to completion; seconds, cpu_seconds, peak_gb (its own max RSS) and its JSON line if any."""
    log.parent.mkdir(parents=True, exist_ok=True)
    peak_file = log.with_suffix(".peak")
    timer = [GNU_TIME, "-f", "%M", "-o", str(peak_file)] if Path(GNU_TIME).exists() else []
    wrapped = timer + [str(c) for c in command]
    started = time.perf_counter()
    with open(log, "w") as handle:
        proc = subprocess.Popen(wrapped, stdout=handle, stderr=subprocess.STDOUT, cwd=cwd,
                                env=env if env is not None else os.environ.copy())
        _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - started
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        tail = " | ".join(log.read_text().strip().splitlines()[-4:])
        raise RuntimeError(f"{command[0]} ... exited {code}: {tail}")
    exact_peak = peak_file.is_file()
    peak_kib = int(peak_file.read_text().split()[-1]) if exact_peak else usage.ru_maxrss
    result = {"seconds": seconds, "cpu_seconds": usage.ru_utime + usage.ru_stime, "peak_gb": peak_kib / 2**20,
              "peak_exact": exact_peak}
    lines = [line for line in log.read_text().splitlines() if line.startswith("{")]
    if lines:
        result["inner"] = json.loads(lines[-1])
    return result


def seedlora_command(*args) -> list:
    """`python -m seedlora ...` from the repository root: the checkout's code, as a user types it."""
    return [sys.executable, "-m", "seedlora", *map(str, args)]


def worker_command(name: str, spec: dict, out: Path) -> list:
    return [sys.executable, "-m", "eval.scale.workers", name, json.dumps(spec), str(out)]


def seedlora_env(threads: int | None) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_WAIT_POLICY=os.environ.get("OMP_WAIT_POLICY", "PASSIVE"))
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return env
