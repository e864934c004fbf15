"""mergekit merges as a user writes them: a config per method, run as a whole, timed process.

TIES: density ρ and weight 1 per input with `normalize: true` (mergekit's default for ties),
which divides by the number of agreeing inputs: TIES' disjoint mean, the same as seedlora's
`ties` with its default weights. linear: weight 1 per input, normalized (the mean). `dtype`
is mergekit's compute dtype (unset: the inputs' own, bf16 for bf16 models); with dtype float32
`out_dtype` must name the inputs' dtype, or mergekit writes float32. Everything else is
mergekit's default.
"""

from __future__ import annotations

from pathlib import Path

from eval.compare.common import mergekit_config, run_measured
from eval.compare.mergekit_env import MergekitEnv


def config(path: Path, method: str, base: Path, models: list, density: float = 0.2,
           dtype: str | None = None, out_dtype: str | None = None) -> Path:
    """Write the mergekit-yaml config of `ties` or `linear` on the fused models."""
    parameters = {"weight": 1.0, "density": density} if method == "ties" else {"weight": 1.0}
    options = {"parameters": {"normalize": True}}
    options.update({key: value for key, value in (("dtype", dtype), ("out_dtype", out_dtype)) if value})
    # linear takes no base model: the mean of the K fused models is W + mean(τ_i)
    return mergekit_config(path, method, base if method != "linear" else None, models, parameters, options)


def has_tokenizer(folder: Path) -> bool:
    return any((Path(folder) / name).is_file() for name in ("tokenizer.json", "tokenizer.model"))


def merge_command(mk: MergekitEnv, config_path: Path, out: Path, base: Path) -> list:
    """`mergekit-yaml CONFIG OUT` (plus --no-copy-tokenizer when the base has none to copy)."""
    command = [mk.cli("mergekit-yaml"), config_path, out]
    return command if has_tokenizer(base) else command + ["--no-copy-tokenizer"]


def run_merge(mk: MergekitEnv, method: str, base: Path, models: list, out: Path, log: Path,
              density: float = 0.2, dtype: str | None = None, out_dtype: str | None = None) -> dict:
    """Write the config, run mergekit-yaml as one measured process; seconds, CPU s, peak MB."""
    path = config(out.parent / f"{out.name}.yml", method, base, models, density, dtype, out_dtype)
    return run_measured(merge_command(mk, path, out, base), log, env=mergekit_env_vars())


def mergekit_env_vars() -> dict:
    """The environment mergekit runs in: offline, no PYTHONPATH pointing into seedlora's tree."""
    import os

    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env.pop("PYTHONPATH", None)
    return env
