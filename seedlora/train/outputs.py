"""A seed folder's life: claim it (keep, resume or start), then write what the run produced.

While training, a seed folder holds `checkpoints/` (the Trainer's checkpoint-<step>/ folders
and `identity.json`, the settings the run belongs to). When it finishes: the adapter files,
`samples.jsonl` (first-epoch position and final loss of every training row) and
`train_log.json`, the last written with "complete": true as the marker that the seed is done;
then the checkpoints are removed. Only the main process writes.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from ..errors import OutputExistsError
from .batches import plan_epoch
from .config import NOT_RESULT

_ENV = ("CUDA_LAUNCH_BLOCKING", "CUBLAS_WORKSPACE_CONFIG", "ASCEND_LAUNCH_BLOCKING", "HCCL_DETERMINISTIC",
        "FLASH_ATTENTION_DETERMINISTIC")


def identity(run, seed: int) -> dict:
    """What must match for an existing seed folder to be kept or resumed."""
    config = {k: v for k, v in asdict(run.config).items() if k not in NOT_RESULT}
    return {"base_model": str(Path(run.base_model).resolve()), "data": run.data_digest, "seed": seed, "config": config}


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def last_checkpoint(folder: Path) -> Path | None:
    """The newest checkpoint-<step> folder of a seed, if any."""
    found = sorted((folder / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
    return found[-1] if found else None


def claim_folder(folder: Path, ident: dict, resume: bool, overwrite: bool) -> str | Path | None:
    """'done' (finished: keep it), a checkpoint to resume from, or None (start fresh). Reads only."""
    if overwrite or not folder.exists() or not any(folder.iterdir()):
        return None
    log = _read_json(folder / "train_log.json") or {}
    started = _read_json(folder / "checkpoints" / "identity.json") or {}
    if resume and log.get("complete") and log.get("identity") == ident:
        return "done"
    if resume and not log.get("complete") and started == ident:
        return last_checkpoint(folder)
    if resume and (log.get("identity") or started):
        raise OutputExistsError(f"{folder} was trained with other settings; pass --overwrite or another -o folder")
    raise OutputExistsError(f"{folder} is not empty; pass --overwrite to replace it or drop --no-resume to continue")


def prepare_folder(folder: Path, ident: dict, checkpoint) -> None:
    """Main process: empty the folder unless resuming, and record the run's identity."""
    if checkpoint is None:
        shutil.rmtree(folder, ignore_errors=True)
    (folder / "checkpoints").mkdir(parents=True, exist_ok=True)
    (folder / "checkpoints" / "identity.json").write_text(json.dumps(ident, indent=1))


@contextlib.contextmanager
def restored_globals(device: str):
    """Undo what the Trainer sets process-wide (seeds, deterministic mode, env vars) afterwards."""
    env = {k: os.environ.get(k) for k in _ENV}
    flags = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    py_state, np_state = random.getstate(), np.random.get_state()
    devices = list(range(torch.cuda.device_count())) if device == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        torch.use_deterministic_algorithms(flags[0], warn_only=flags[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = flags[2], flags[3]
        random.setstate(py_state)
        np.random.set_state(np_state)
        for key, value in env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _clean(value) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


def sample_rows(run, seeds: dict, records: dict, steps: int) -> list[dict]:
    """One record per training row: first-epoch position/step and the loss of its last step."""
    plan = plan_epoch(len(run.train), run.global_batch, 0, seeds["order"], seeds["compose"])
    positions, rank = {}, 0
    for step, batch in enumerate(plan):
        for position in batch:
            positions[run.train[position].index] = (rank, step)
            rank += 1
    rows = []
    for example in run.train:
        rank, step = positions[example.index]
        total, count, seen = records.get(example.index, (math.nan, 0, None))
        rows.append({
            "index": example.index, "first_epoch_position": rank, "first_epoch_step": step,
            "seen_in_first_epoch": step < steps, "final_loss": _clean(total / count) if count else None,
            "final_loss_step": seen, "tokens": count,
        })
    return rows


def write_outputs(run, seed: int, seeds: dict, folder: Path, model, history: dict) -> None:
    """Adapter, samples.jsonl and train_log.json ("complete" marker last); drop the checkpoints."""
    model.save_pretrained(str(folder))
    rows = sample_rows(run, seeds, history["records"], history["steps"])
    (folder / "samples.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    scored = [(r["final_loss"], r["tokens"]) for r in rows if r["final_loss"] is not None]
    log = {
        "complete": True, "identity": history["identity"], "seed": seed, "seeds": seeds, "preset": run.config.preset,
        "init_digest": history["init_digest"], "base_model": str(Path(run.base_model).resolve()), "data": run.data_path,
        "data_digest": history["identity"]["data"],
        "config": asdict(run.config), "n_train": len(run.train), "n_eval": len(run.held), "steps": history["steps"],
        "steps_per_epoch": run.steps_per_epoch, "epochs": run.epochs, "device": run.device,
        "processes": run.processes, "global_batch": run.global_batch,
        "final_train_loss": sum(l * c for l, c in scored) / max(1, sum(c for _, c in scored)),
        "losses": history["losses"], "eval_losses": history["eval_losses"], "wall_time_s": round(history["wall_s"], 3),
        "resumed_from": history["resumed_from"], "steps_run": history["steps_run"],
    }
    (folder / "train_log.json").write_text(json.dumps(log, indent=1))
    shutil.rmtree(folder / "checkpoints", ignore_errors=True)
