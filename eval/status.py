"""Where a regime's experiment stands, read from its work folder without running anything.

    python -m eval.experiment --regime papers --status

For each task: every training run the regime needs (seed s0 at each learning rate, the K
seeds, the K x long run) as done (steps, seconds per step), in progress (step reached at the
last checkpoint) or not started; the learning rates' validation losses once both are scored;
which merges exist. Written to eval/results/<regime>/STATUS.md, so a session that ends
mid-run leaves an exact record of what remains.
"""

from __future__ import annotations

import json
from pathlib import Path


def _json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _timing(log: dict) -> str:
    """Seconds per step over the steps of the last (possibly resumed) call."""
    steps = log.get("steps_run", None if log.get("resumed_from") else log["steps"])
    if not steps:
        return f" (resumed from {log['resumed_from']}: {log['wall_time_s']:.0f} s after resuming)"
    return f", {log['wall_time_s']:.0f} s for {steps} steps ({log['wall_time_s'] / steps:.1f} s/step)"


def run_state(folder: Path, total_steps: int) -> str:
    """'done ...', 'in progress ...' or 'not started' for one seed folder."""
    log = _json(folder / "train_log.json")
    if log.get("complete"):
        return f"done: {log['steps']} steps" + _timing(log)
    steps = [int(p.name.split("-")[1]) for p in (folder / "checkpoints").glob("checkpoint-*")]
    if steps:
        return f"in progress: step {max(steps)} of {total_steps} checkpointed"
    return "started, no checkpoint yet" if (folder / "checkpoints").is_dir() else "not started"


def task_status(regime: dict, task: str, work: Path, steps_per_epoch: int) -> list[str]:
    """Markdown lines for one task."""
    from seedlora.train.presets import PRESETS

    epochs, seeds, lrs = PRESETS[regime["preset"]]["epochs"], regime["seeds"], regime["lrs"]
    lines = [f"### {task}", ""]
    for lr in lrs:
        lines.append(f"- seed {seeds[0]} at lr {lr:g}: {run_state(work / f'lr-{lr:g}' / f'seed-{seeds[0]}', epochs * steps_per_epoch)}")
    scored = {lr: _json(work / "evals" / "validation" / f"lr-{lr:g}.json").get("entry") for lr in lrs}
    if len(lrs) > 1 and all(scored.values()):
        chosen = min(lrs, key=lambda lr: scored[lr]["loss"])
        lines.append("- learning rate by validation loss: " + ", ".join(
            f"{lr:g} → {scored[lr]['loss']:.4f} (acc {100 * scored[lr]['accuracy']:.1f} %)" for lr in lrs) + f"; chosen {chosen:g}")
    else:
        chosen = lrs[0] if len(lrs) == 1 else None
        lines.append("- learning rate: not chosen yet (needs seed %d at every rate)" % seeds[0] if chosen is None else f"- learning rate: {chosen:g}")
    if chosen is not None:
        for seed in seeds[1:]:
            lines.append(f"- seed {seed}: {run_state(work / f'lr-{chosen:g}' / f'seed-{seed}', epochs * steps_per_epoch)}")
        long = work / f"lr-{chosen:g}" / f"long-{len(seeds)}x" / f"seed-{seeds[0]}"
        lines.append(f"- long run ({len(seeds)} x {epochs} epochs): {run_state(long, len(seeds) * epochs * steps_per_epoch)}")
    merged = [m for m in regime["methods"] if (work / "merged" / m / "done.json").is_file()]
    lines += [f"- merges done: {', '.join(merged) or 'none'} (of {', '.join(regime['methods'])})", ""]
    return lines


def write_status(regime: dict, tasks: list[str], work_dir: Path, results_dir: Path, data: dict[str, Path], batch: int) -> Path:
    """Write and return eval/results/<regime>/STATUS.md."""
    import math

    lines = [f"# Experiment status: regime `{regime['name']}`", "", regime["about"], ""]
    for task in tasks:
        rows = len((data[task] / "train.jsonl").read_text().splitlines())
        lines += task_status(regime, task, work_dir / regime["name"] / task, math.ceil(rows / batch))
    out = results_dir / regime["name"] / "STATUS.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))
    return out
