"""The training-imbalance picture: first-epoch position against final per-sample loss.

The parameter-selection paper (Fig. 1 and 3) finds that samples seen early in the first
epoch end training with a higher loss, and that merging runs with different orders flattens
this. `diagnose` reads each run's samples.jsonl (written by `seedlora train`), plots a
scatter and a binned mean line per run, and reports Pearson and Spearman correlations;
a merged adapter or model is scored on the same training rows and drawn against the
first run's (the anchor's) positions.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from ..errors import SeedLoraError


def pearson(x: list[float], y: list[float]) -> float:
    """Pearson correlation; NaN when either side is constant or has < 2 points."""
    if len(x) < 2:
        return math.nan
    a = torch.tensor(x, dtype=torch.float64)
    b = torch.tensor(y, dtype=torch.float64)
    a, b = a - a.mean(), b - b.mean()
    denominator = (a.norm() * b.norm()).item()
    return (a @ b).item() / denominator if denominator > 0 else math.nan


def ranks(values: list[float]) -> list[float]:
    """0-based ranks, ties given their average rank (as Spearman needs)."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    out = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for k in range(start, end + 1):
            out[order[k]] = (start + end) / 2
        start = end + 1
    return out


def spearman(x: list[float], y: list[float]) -> float:
    """Spearman rank correlation (Pearson of average ranks)."""
    return pearson(ranks(x), ranks(y))


def binned_means(x: list[float], y: list[float], bins: int, span: float) -> tuple[list[float], list[float]]:
    """Mean of y in `bins` equal-width bins of x over [0, span); empty bins are skipped."""
    sums, counts = [0.0] * bins, [0] * bins
    for xi, yi in zip(x, y):
        b = min(bins - 1, int(xi / span * bins))
        sums[b], counts[b] = sums[b] + yi, counts[b] + 1
    width = span / bins
    centers = [(b + 0.5) * width for b in range(bins) if counts[b]]
    return centers, [sums[b] / counts[b] for b in range(bins) if counts[b]]


def read_samples(run_dir: str | Path) -> list[dict]:
    """Rows of a run's samples.jsonl that have a final loss."""
    path = Path(run_dir) / "samples.jsonl"
    if not path.is_file():
        raise SeedLoraError(f"{path} does not exist; pass a seed folder written by `seedlora train`")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [row for row in rows if row.get("final_loss") is not None]


def summarize(positions: list[float], losses: list[float]) -> dict:
    """Correlations and size of one position/loss series."""
    return {"n": len(losses), "pearson": pearson(positions, losses), "spearman": spearman(positions, losses),
            "mean_loss": sum(losses) / len(losses) if losses else math.nan}


def merged_losses(anchor_dir: str | Path, merged: str | Path, batch_size: int = 8, progress: bool = False) -> dict[int, float]:
    """Per-sample losses (row index -> loss) of a merged adapter or fused model on the anchor's training rows."""
    from ..train.batches import per_sample_losses
    from ..train.config import make_config
    from ..train.run import prepare_run

    log_path, merged = Path(anchor_dir) / "train_log.json", Path(merged)
    if not log_path.is_file():
        raise SeedLoraError(f"{log_path} does not exist; pass a finished seed folder of `seedlora train` first")
    log = json.loads(log_path.read_text())
    split = log["config"]["eval_split"]  # a separate eval file does not change the training rows
    split = split if isinstance(split, float) else None
    config = make_config(**{**log["config"], "load_in_4bit": False, "eval_split": split})
    run = prepare_run(Path(log["base_model"]), log["data"], config, False)
    model = load_scoring_model(Path(log["base_model"]), merged)
    losses = per_sample_losses(model.to(run.device), run.train, run.tokenizer.pad_token_id, batch_size, progress)
    return {ex.index: loss for ex, loss in zip(run.train, losses)}


def load_scoring_model(base: Path, merged: Path):
    """A PEFT adapter folder on top of `base`, or a full (fused) model folder, in eval mode."""
    from transformers import AutoModelForCausalLM

    if (merged / "adapter_config.json").is_file():
        from peft import PeftModel

        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(base)), str(merged))
    elif (merged / "config.json").is_file():
        model = AutoModelForCausalLM.from_pretrained(str(merged))
    else:
        raise SeedLoraError(f"{merged} has neither adapter_config.json nor config.json; pass an adapter or model folder")
    return model.eval()


def diagnose(run_dirs: list[str | Path], output_png: str | Path, merged: str | Path | None = None,
             bins: int = 10, batch_size: int = 8, progress: bool = False) -> dict:
    """Plot position vs final loss per run (+ merged) to `output_png`; return correlations."""
    if not run_dirs:
        raise SeedLoraError("diagnose needs at least one run folder; pass seed folders written by `seedlora train`")
    if bins < 1:
        raise SeedLoraError(f"bins {bins} must be >= 1; fix --bins")
    series = {}
    for run_dir in run_dirs:
        rows = read_samples(run_dir)
        name = _unique_name(Path(run_dir), series)
        series[name] = ([r["first_epoch_position"] for r in rows], [r["final_loss"] for r in rows])
    result = {"runs": {name: summarize(*xy) for name, xy in series.items()}}
    merged_xy = None
    if merged is not None:
        anchor = {r["index"]: r["first_epoch_position"] for r in read_samples(run_dirs[0])}
        scored = merged_losses(run_dirs[0], merged, batch_size, progress)
        keep = [i for i in anchor if i in scored and not math.isnan(scored[i])]
        merged_xy = ([anchor[i] for i in keep], [scored[i] for i in keep])
        result["merged"] = {**summarize(*merged_xy), "anchor": next(iter(series))}
    plot(series, merged_xy, result, Path(output_png), bins)
    result["output"] = str(output_png)
    return result


def _unique_name(path: Path, taken: dict) -> str:
    name = path.name or str(path)
    return name if name not in taken else f"{path.parent.name}/{name}"


def plot(series: dict, merged_xy, result: dict, output: Path, bins: int) -> None:
    """Scatter + binned mean per run, merged model as a red line, correlations in the legend."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8, 6), dpi=120, layout="constrained")
    axes = figure.add_subplot()
    span = max([max(x) + 1 for x, _ in series.values() if x] + [1])
    for i, (name, (x, y)) in enumerate(series.items()):
        stats, color = result["runs"][name], f"C{i % 10}"
        axes.scatter(x, y, s=6, alpha=0.25, color=color)
        axes.plot(*binned_means(x, y, bins, span), "-o", ms=3, color=color,
                  label=f"{name}: pearson {stats['pearson']:.2f}, spearman {stats['spearman']:.2f}")
    if merged_xy is not None:
        stats = result["merged"]
        axes.plot(*binned_means(*merged_xy, bins, span), "-s", ms=4, lw=2, color="red",
                  label=f"merged (x: {stats['anchor']} order): pearson {stats['pearson']:.2f}, spearman {stats['spearman']:.2f}")
    axes.set_xlabel("position in the first epoch (sample rank)")
    axes.set_ylabel("final per-sample loss")
    axes.set_title("Training imbalance: first-epoch position vs final loss")
    axes.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=1, frameon=False)
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output, format="png")
