"""mergekit on the K fused models, as its users run it: a YAML config and `mergekit-yaml`, in its own venv.

The venv comes from eval/compare/mergekit_env.py (the `compare` work) when that module is present;
otherwise a minimal builder here makes the same venv (torch==2.13.0 first, so pip keeps the CPU
wheel, then mergekit==0.1.5) at ~/.cache/seedlora/mergekit-venv. Configs: ties/dare_ties with
weight 1 and the density per input, `normalize: true` (the disjoint mean, like seedlora's ties);
linear with weight 1, normalized (the mean). Everything else is mergekit's default (compute in
the inputs' bf16). `--random-seed` fixes mergekit's own DARE draws (not the same draws as ours).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

MERGEKIT_VERSION = "0.1.5"


def mergekit_venv() -> tuple:
    """(path of mergekit-yaml, versions dict), building the venv if needed."""
    try:
        from eval.compare.mergekit_env import ensure_mergekit
    except ImportError:
        return _minimal_venv()
    ready = ensure_mergekit(log=lambda text: print(text, file=sys.stderr))
    return ready.cli("mergekit-yaml"), ready.versions


def _minimal_venv() -> tuple:
    venv = Path(os.environ.get("SEEDLORA_MERGEKIT_VENV", Path.home() / ".cache" / "seedlora" / "mergekit-venv"))
    cli = venv / "bin" / "mergekit-yaml"
    if not cli.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
        subprocess.run(pip + ["torch==2.13.0"], check=True)
        subprocess.run(pip + [f"mergekit=={MERGEKIT_VERSION}", "torch==2.13.0"], check=True)
    code = "import importlib.metadata as m, json; print(json.dumps({n: m.version(n) for n in ('mergekit', 'torch')}))"
    versions = json.loads(subprocess.run([str(venv / "bin" / "python"), "-c", code], capture_output=True,
                                         text=True, check=True).stdout)
    return cli, versions


def write_config(path: Path, method: str, base: Path, models: list, density: float) -> Path:
    """A mergekit-yaml config (JSON is valid YAML) for ties, dare_ties or linear on the fused models."""
    parameters = {"weight": 1.0} if method == "linear" else {"weight": 1.0, "density": density}
    config = {"merge_method": method, "models": [{"model": str(m), "parameters": parameters} for m in models],
              "parameters": {"normalize": True}}
    if method != "linear":  # linear of the K fused models is W + mean(τ_i): no base needed
        config["base_model"] = str(base)
    path.write_text(json.dumps(config, indent=2))
    return path


def mergekit_command(cli: Path, config: Path, out: Path, threads: int | None) -> list:
    command = [cli, config, out, "--no-copy-tokenizer", "--random-seed", "0", "--quiet"]
    return command + (["--num-threads", threads] if threads else [])


def mergekit_env(threads: int | None) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_WAIT_POLICY="PASSIVE")
    env.pop("PYTHONPATH", None)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return env
