"""mergekit in its own virtualenv, for the parity test, and a driver running many merges in one process.

mergekit's pins (pydantic, accelerate, safetensors, transformers ≥ 5) conflict with seedlora's, so it
lives in a separate venv. eval/compare/mergekit_env.py (branch `compare`) builds and reuses that venv;
when it is not there yet, `_build_minimal` makes the same venv (same place, same stamp file, same
pins: torch==2.13.0 first so pip keeps the CPU wheel, then mergekit==0.1.5), so either builder's
venv serves both. Raises MergekitUnavailable with the reason when mergekit cannot be installed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

MERGEKIT_VERSION = "0.1.5"
TORCH_VERSION = "2.13.0"
STAMP = "seedlora-mergekit.json"

DRIVER = textwrap.dedent(
    """
    import json, sys
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions
    for job in json.load(open(sys.argv[1])):
        options = MergeOptions(copy_tokenizer=False, write_model_card=False, quiet=True, random_seed=job.get("seed"))
        run_merge(MergeConfiguration.model_validate(job["config"]), job["out"], options)
    """
)


class MergekitUnavailable(RuntimeError):
    """mergekit could not be installed or run here."""


def mergekit_python() -> Path:
    """The python of a ready mergekit venv, building it on first use."""
    try:
        from eval.compare.mergekit_env import MergekitUnavailable as Unavailable
        from eval.compare.mergekit_env import ensure_mergekit
    except ImportError:
        return _build_minimal()
    try:
        return ensure_mergekit(log=lambda message: None).python
    except Unavailable as exc:
        raise MergekitUnavailable(str(exc)) from None


def _build_minimal() -> Path:
    chosen = os.environ.get("SEEDLORA_MERGEKIT_VENV")
    venv = Path(chosen).expanduser() if chosen else Path.home() / ".cache" / "seedlora" / "mergekit-venv"
    python = venv / "bin" / "python"
    try:
        if json.loads((venv / STAMP).read_text()).get("mergekit") == MERGEKIT_VERSION and python.exists():
            return python
    except (OSError, ValueError):
        pass
    steps = [[sys.executable, "-m", "venv", "--clear", str(venv)],
             [str(python), "-m", "pip", "install", "-q", f"torch=={TORCH_VERSION}"],
             [str(python), "-m", "pip", "install", "-q", f"mergekit=={MERGEKIT_VERSION}", f"torch=={TORCH_VERSION}"]]
    for step in steps:
        done = subprocess.run(step, capture_output=True, text=True)
        if done.returncode != 0:
            tail = " | ".join((done.stderr or done.stdout).strip().splitlines()[-2:])
            raise MergekitUnavailable(f"{' '.join(step[2:5])} failed: {tail}")
    (venv / STAMP).write_text(json.dumps({"mergekit": MERGEKIT_VERSION}))
    return python


def run_mergekit(python: Path, jobs: list, workdir: Path) -> None:
    """Run every {config, out, seed} job with mergekit's run_merge, offline, in one process."""
    (workdir / "driver.py").write_text(DRIVER)
    (workdir / "jobs.json").write_text(json.dumps(jobs))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the venv's packages only
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE")
    done = subprocess.run([str(python), str(workdir / "driver.py"), str(workdir / "jobs.json")], cwd=workdir,
                          env=env, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError("mergekit failed: " + done.stderr[-3000:])
