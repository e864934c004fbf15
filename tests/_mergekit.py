"""mergekit in its own virtualenv, for the parity test, and a driver running many merges in one process.

mergekit's pins (pydantic, accelerate, safetensors, transformers ≥ 5) conflict with seedlora's, so it
lives in a separate venv, built and reused by eval/compare/mergekit_env.py (the one builder: the
README's comparisons and these tests share it). Raises MergekitUnavailable with the reason when
mergekit cannot be installed.
"""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
from pathlib import Path

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
    """The python of a ready mergekit venv, built on first use by eval/compare/mergekit_env.py."""
    from eval.compare.mergekit_env import MergekitUnavailable as Unavailable
    from eval.compare.mergekit_env import ensure_mergekit
    try:
        return ensure_mergekit(log=lambda message: None).python
    except Unavailable as exc:
        raise MergekitUnavailable(str(exc)) from None


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
