"""The experiment's steps, each resumable: train, merge, evaluate, with finished work reused.

- training: `seedlora.train.train_adapters` keeps finished seeds and resumes interrupted ones
  from their last checkpoint (one per epoch and every `save_steps`);
- merging: a merge whose `done.json` lists the same inputs (weights size and mtime) is kept;
- evaluation: one JSON per (split, model) under the task's work folder, keyed by the model
  files' size and mtime, so a rerun scores only what changed or is new.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from seedlora.errors import SeedLoraError

from .evaluate import evaluate_models

TASKS = {  # evaluation kind, max tokens per example, tokens to generate
    "sentiment": {"kind": "sentiment", "max_length": 64, "max_new_tokens": 4},
    "gsm": {"kind": "gsm", "max_length": 160, "max_new_tokens": 8},
}


def fingerprint(path: Path | None) -> list:
    """Size and mtime of the weight files of an adapter or model folder ('base' for None)."""
    if path is None:
        return ["base"]
    files = sorted(list(path.glob("*.safetensors")) + list(path.glob("*.safetensors.index.json")))
    if not files:
        raise SeedLoraError(f"{path} holds no safetensors weights (eval/pipeline.py): rerun the step that writes it")
    return [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files]


def finished(folder: Path) -> bool:
    """True when a seed folder holds a completed training run."""
    try:
        return bool(json.loads((folder / "train_log.json").read_text()).get("complete"))
    except (OSError, ValueError):
        return False


def train(base: Path, data: Path, out: Path, seeds: list[int], settings: dict, quiet: bool, report_only: bool = False) -> list[Path]:
    """Seed adapters in out/seed-<s> (kept when finished, resumed when interrupted); `report_only`: never train."""
    from seedlora.train import train_adapters

    if report_only:
        folders = [out / f"seed-{s}" for s in seeds]
        missing = [str(f) for f in folders if not finished(f)]
        if missing:
            raise SeedLoraError(f"--report-only but {', '.join(missing)} not trained yet (eval/experiment.py): rerun without it")
        return folders

    return [Path(p) for p in train_adapters(base, data, out, seeds, progress=not quiet, log_every=16, **settings)]


def merge(base: Path, singles: list[Path], method, out: Path, fused: bool) -> dict:
    """Merge the singles with `method` into `out` (exact adapter, or fused model for dense methods)."""
    from seedlora import fuse_adapters, merge_adapters

    inputs = [fingerprint(p) for p in singles]
    done = out / "done.json"
    if done.is_file() and json.loads(done.read_text()).get("inputs") == inputs:
        return json.loads(done.read_text())["info"]
    if fused:
        report = fuse_adapters(singles, base, out, method=method.name, seed=0, overwrite=True)
        info = {"output": "fused model (exact)", "seconds": report.seconds}
    else:
        report = merge_adapters(singles, out, method=method.name, seed=0, overwrite=True)
        info = {"output": "adapter", "rank": report.rank, "relative_error": report.relative_error, "seconds": report.seconds}
    done.write_text(json.dumps({"inputs": inputs, "info": info}))
    return info


def evaluate(base: Path, candidates: dict, data: Path, task: dict, cache: Path, settings: dict) -> dict:
    """name -> evaluation entry for every candidate (None: the base model), scoring only what is not cached."""
    cache.mkdir(parents=True, exist_ok=True)
    found, missing = {}, {}
    for name, path in candidates.items():
        file = cache / f"{name}.json"
        stored = json.loads(file.read_text()) if file.is_file() else {}
        key = {"fingerprint": fingerprint(path), "data": hashlib.sha256(Path(data).read_bytes()).hexdigest(), "batch_size": settings["batch_size"],
               "max_length": task["max_length"], "max_new_tokens": task["max_new_tokens"]}
        if stored.get("key") == key:
            found[name] = stored["entry"]
        else:
            missing[name] = (path, key)
    paths = {name: path for name, (path, _) in missing.items() if path is not None}
    if missing:
        started = time.perf_counter()
        result = evaluate_models(base, paths, data, task["kind"], include_base="base" in missing,
                                 batch_size=settings["batch_size"], max_length=task["max_length"],
                                 max_new_tokens=task["max_new_tokens"], progress=not settings["quiet"])
        for name, entry in result["models"].items():
            (cache / f"{name}.json").write_text(json.dumps({"key": missing[name][1], "entry": entry}))
            found[name] = entry
        print(f"evaluated {len(missing)} model(s) on {data.name} in {time.perf_counter() - started:.0f} s", flush=True)
    return {name: found[name] for name in candidates}
