"""What every comparison script shares: the header it prints, whole-process timing, the CLIs it runs.

Timings are of whole processes (start to exit), measured side by side in one run; peak memory is
the process's own maximum resident set size, read from os.wait4 (Linux: KiB). seedlora is run
as a user types it (`python -m seedlora merge ...`, from the repository root so the checkout's
code is the one measured); mergekit through its console scripts in its own venv.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


class CompareError(RuntimeError):
    """A comparison cannot run here (missing input, mergekit not installable, a tool failed): one line."""


def entry(main) -> int:
    """Run a script's main(); a CompareError becomes `error: ...` on stderr and exit status 2."""
    try:
        return main()
    except CompareError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
DEFAULT_WORK = Path.home() / ".cache" / "seedlora" / "compare"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def git_commit() -> str:
    done = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return done.stdout.strip() or "unknown"


def header(title: str, mergekit_versions: dict | None = None) -> str:
    """Date, machine and versions, printed first by every script (the README quotes them)."""
    import peft
    import torch
    import transformers

    lines = [f"== {title}",
             f"date {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; "
             f"{os.cpu_count()} CPU(s) {cpu_name()}; python {platform.python_version()}",
             f"seedlora {git_commit()}; torch {torch.__version__}, peft {peft.__version__}, "
             f"transformers {transformers.__version__}; OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}"]
    if mergekit_versions:
        lines.append("mergekit venv: " + ", ".join(f"{k} {v}" for k, v in sorted(mergekit_versions.items())))
    return "\n".join(lines)


def figure(claim: str, inputs: str, **values) -> None:
    """One machine-readable line per quoted figure: `FIGURE claim inputs key=value ...`."""
    text = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())
    print(f"FIGURE {claim} {inputs} {text}", flush=True)


# A tiny launcher (python -S: no site packages, ~10 MB): Linux carries a parent's resident size at
# fork into the child's ru_maxrss, so the measured process must not be forked from this one,
# which holds torch. It runs the command, then writes wall/CPU seconds and peak RSS as JSON.
LAUNCHER = """
import json, os, sys, time
result, command = sys.argv[1], sys.argv[2:]
started = time.perf_counter()
pid = os.fork()
if pid == 0:
    try:
        os.execvp(command[0], command)
    finally:
        os._exit(127)
_, status, usage = os.wait4(pid, 0)
seconds = time.perf_counter() - started
with open(result, "w") as out:
    json.dump({"seconds": seconds, "cpu_seconds": usage.ru_utime + usage.ru_stime,
               "peak_mb": usage.ru_maxrss / 1024, "code": os.waitstatus_to_exitcode(status)}, out)
"""


def run_measured(command: list, log: Path, env: dict | None = None) -> dict:
    """Run one whole process; wall seconds, CPU seconds and its own peak RSS in MB (os.wait4)."""
    environment = dict(os.environ if env is None else env)
    environment.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    log.parent.mkdir(parents=True, exist_ok=True)
    result = log.with_name(log.name + ".json")
    with open(log, "w") as sink:
        subprocess.run([sys.executable, "-S", "-c", LAUNCHER, str(result), *map(str, command)], stdout=sink,
                       stderr=subprocess.STDOUT, cwd=str(REPO), env=environment, check=False)
    try:
        measured = json.loads(result.read_text())
    except (OSError, ValueError):
        measured = {"code": -1}
    if measured.pop("code") != 0:
        tail = " | ".join(log.read_text(errors="replace").strip().splitlines()[-5:])
        raise CompareError(f"{Path(command[0]).name} {' '.join(map(str, command[1:4]))} ... failed "
                           f"(log {log}): {tail}")
    return measured


def seedlora_merge(*args) -> list:
    """The command line `python -m seedlora merge ARGS` (run from the repository root)."""
    return [sys.executable, "-m", "seedlora", "merge", *map(str, args)]


def mergekit_config(path: Path, method: str, base: Path | None, models: list, parameters: dict,
                    options: dict | None = None) -> Path:
    """A mergekit-yaml config (JSON is YAML): one entry per fused input, same parameters each."""
    config = {"merge_method": method, **({"base_model": str(base)} if base else {}),
              "models": [{"model": str(m), "parameters": dict(parameters)} for m in models],
              **(options or {})}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config, indent=1))
    return path


def folder_mb(folder: Path) -> float:
    return sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file()) / 1e6


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "n/a"


def arguments(doc: str, argv=None, inputs=("sample", "7b"), **extra):
    """The options every claim script takes: which inputs, how many 7B-shaped layers, the work folder."""
    import argparse

    parser = argparse.ArgumentParser(description=doc.splitlines()[0], epilog=doc,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inputs", choices=inputs, default=inputs[0], help="sample adapters or 7B-shaped synthetic")
    parser.add_argument("--layers", type=int, default=2, help="layers of the 7B-shaped inputs (default 2)")
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK, help=f"cache and scratch folder ({DEFAULT_WORK})")
    for flag, (kind, default, text) in extra.items():
        parser.add_argument(f"--{flag.replace('_', '-')}", type=kind, default=default, help=text)
    return parser.parse_args(argv)
