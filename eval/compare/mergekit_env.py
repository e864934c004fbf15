"""mergekit in its own virtualenv, built once and reused: comparisons, benchmarks and tests.

mergekit requires transformers >= 5, pydantic, accelerate, datasets …; installed into seedlora's
environment it could move our pins, so it lives in a separate venv (default
~/.cache/seedlora/mergekit-venv, or $SEEDLORA_MERGEKIT_VENV). torch==2.13.0 is installed first so
that pip keeps the CPU wheel on disk instead of fetching a multi-GB CUDA build for mergekit's bare
`torch>=2.0.0`. mergekit 0.1.5 pins nothing exactly (ranges only: transformers>=5,<6, peft>=0.18,
...), so no --no-deps work-around is needed; the packages that decide its numbers are pinned to
what pip resolved when the README figures were measured (PINS), the rest (datasets, pydantic,
scipy, ...) resolved by pip. A venv is ready only once its stamp file exists (written last, with
the installed versions), so an interrupted build is detected and rebuilt; a file lock stops two
processes from building the same venv at once. Built in 54 s here (104 s with pip's cache off).

    from eval.compare.mergekit_env import ensure_mergekit
    mk = ensure_mergekit()            # builds on first use
    mk.run("mergekit-yaml", "config.yml", "out/")
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from eval.compare.common import CompareError, entry

MERGEKIT_VERSION = "0.1.5"
TORCH_VERSION = "2.13.0"
# what pip resolved for mergekit 0.1.5 on 2026-12-04, pinned so the comparisons reproduce
PINS = ("transformers==5.25.0", "peft==0.21.2", "accelerate==1.16.0", "safetensors==0.8.0")
STAMP = "seedlora-mergekit.json"
REPORTED = ("mergekit", "torch", "transformers", "peft", "safetensors", "accelerate")


class MergekitUnavailable(CompareError):
    """mergekit could not be installed or run here; the message says which step failed."""


@dataclass(frozen=True)
class MergekitEnv:
    """A ready mergekit venv: its python, its console scripts and the versions it holds."""

    venv: Path
    versions: dict = field(default_factory=dict)

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    def cli(self, name: str) -> Path:
        """Path of one of mergekit's console scripts (mergekit-yaml, mergekit-extract-lora, …)."""
        return self.venv / "bin" / name

    def run(self, name: str, *args, threads: int | None = None, **kwargs) -> subprocess.CompletedProcess:
        """Run a mergekit command offline; raise MergekitUnavailable with its stderr tail on failure."""
        env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        if threads:
            env["OMP_NUM_THREADS"] = str(threads)
        env.pop("PYTHONPATH", None)  # never let seedlora's tree shadow the venv's packages
        done = subprocess.run([str(self.cli(name)), *map(str, args)], env=env, capture_output=True,
                              text=True, **kwargs)
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
            raise MergekitUnavailable(f"{name} exited {done.returncode}: " + " | ".join(tail))
        return done


def default_venv() -> Path:
    """Where the venv lives: $SEEDLORA_MERGEKIT_VENV, else ~/.cache/seedlora/mergekit-venv."""
    chosen = os.environ.get("SEEDLORA_MERGEKIT_VENV")
    return Path(chosen).expanduser() if chosen else Path.home() / ".cache" / "seedlora" / "mergekit-venv"


def find_mergekit(venv: Path | None = None) -> MergekitEnv | None:
    """The venv if it was built completely for MERGEKIT_VERSION, else None (nothing installed)."""
    venv = Path(venv) if venv else default_venv()
    try:
        stamp = json.loads((venv / STAMP).read_text())
    except (OSError, ValueError):
        return None
    pinned = dict(pin.split("==") for pin in PINS)
    if (stamp.get("mergekit") != MERGEKIT_VERSION or any(stamp.get(k) != v for k, v in pinned.items())
            or not (venv / "bin" / "mergekit-yaml").exists()):
        return None
    return MergekitEnv(venv, stamp)


def _pip(venv: Path, *args: str, log) -> None:
    command = [str(venv / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check", *args]
    log(f"mergekit venv: {' '.join(command[3:])}")
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        tail = " | ".join(done.stderr.strip().splitlines()[-3:])
        raise MergekitUnavailable(f"pip install {' '.join(args)} failed in {venv}: {tail}")


def _installed_versions(venv: Path) -> dict:
    code = ("import importlib.metadata as m, json, sys; "
            "print(json.dumps({n: m.version(n) for n in sys.argv[1:]}))")
    done = subprocess.run([str(venv / "bin" / "python"), "-c", code, *REPORTED], capture_output=True, text=True)
    if done.returncode != 0:
        raise MergekitUnavailable(f"{venv}: cannot read installed versions: {done.stderr.strip()[-200:]}")
    return json.loads(done.stdout)


def _build(venv: Path, log) -> MergekitEnv:
    if venv.exists():
        shutil.rmtree(venv)  # an earlier build was interrupted (no stamp): start clean
    done = subprocess.run([sys.executable, "-m", "venv", str(venv)], capture_output=True, text=True)
    if done.returncode != 0:
        raise MergekitUnavailable(f"python -m venv {venv} failed: {done.stderr.strip()[-200:]}")
    _pip(venv, f"torch=={TORCH_VERSION}", log=log)
    _pip(venv, f"mergekit=={MERGEKIT_VERSION}", f"torch=={TORCH_VERSION}", *PINS, log=log)
    versions = _installed_versions(venv)
    (venv / STAMP).write_text(json.dumps(versions, indent=1, sort_keys=True))
    return MergekitEnv(venv, versions)


def ensure_mergekit(venv: Path | None = None, log=print) -> MergekitEnv:
    """The ready venv, building it first if needed (pip from the configured indexes)."""
    venv = Path(venv) if venv else default_venv()
    found = find_mergekit(venv)
    if found:
        return found
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / f"{venv.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be building it right now
        found = find_mergekit(venv)
        return found if found else _build(venv, log)


def main() -> int:
    ready = ensure_mergekit()
    print(f"mergekit venv ready: {ready.venv}")
    print(json.dumps(ready.versions, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(entry(main))
