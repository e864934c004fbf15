"""The results chart: every model as a dot with its 95 % interval, the base model on an axis of its own.

Why: the base model's loss (≈ 5 against ≈ 0.2 after fine-tuning) used to dwarf the bars, so
the differences between fine-tuned models, which are the point, were invisible. Each metric
gets a broken axis: a narrow panel on the left scaled to the base model alone, a wide panel
scaled to the fine-tuned rows, with the singles' mean and the best single as vertical lines.
"""

from __future__ import annotations

from pathlib import Path

COLOURS = {"base": "#7f7f7f", "single": "#4c72b0", "summary": "#1f3f7f", "merged": "#dd8452", "equal-compute": "#55a868"}
METRICS = (("loss", "held-out loss per answer token (lower is better)", 1.0), ("accuracy", "accuracy % (higher is better)", 100.0))


def _limits(values: list[float], pad: float = 0.08) -> tuple[float, float]:
    low, high = min(values), max(values)
    span = (high - low) or max(abs(high), 1e-3) * 0.1
    return low - pad * span, high + pad * span


def _break_marks(left, right) -> None:
    """The two diagonal strokes of a broken axis between two panels."""
    size = dict(marker=[(-1, -1), (1, 1)], markersize=8, linestyle="none", color="k", mec="k", mew=1, clip_on=False)
    left.plot([1, 1], [0, 1], transform=left.transAxes, **size)
    right.plot([0, 0], [0, 1], transform=right.transAxes, **size)


def _points(axis, rows: list[dict], positions: list[int], metric: str, scale: float) -> None:
    for y, row in zip(positions, rows):
        value = scale * row[metric]
        ci = row.get(f"{metric}_ci")
        error = None if ci is None else [[value - scale * ci[0]], [scale * ci[1] - value]]
        axis.errorbar(value, y, xerr=error, fmt="o", color=COLOURS.get(row["role"], "#8172b2"), capsize=3, ms=5)


def dot_chart(rows: list[dict], title: str, path: Path, references: dict | None = None) -> Path:
    """Dot-and-interval chart of `rows` (name, role, loss, accuracy, optional *_ci) to `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [row["name"] for row in rows]
    base = [i for i, row in enumerate(rows) if row["role"] == "base"]
    tuned = [i for i, row in enumerate(rows) if row["role"] != "base"]
    figure = plt.figure(figsize=(12, 0.32 * len(rows) + 1.8))
    grid = figure.add_gridspec(1, 4, width_ratios=[1, 4, 1, 4], wspace=0.06)
    for col, (metric, label, scale) in enumerate(METRICS):
        left = figure.add_subplot(grid[0, 2 * col])
        right = figure.add_subplot(grid[0, 2 * col + 1], sharey=left)
        _points(left, [rows[i] for i in base], base, metric, scale)
        _points(right, [rows[i] for i in tuned], tuned, metric, scale)
        for name, style in (("single mean", "--"), ("single best", ":")):
            if references and name in references:
                right.axvline(scale * references[name][metric], color="#c44e52", linestyle=style, lw=1, label=name)
        if tuned:
            right.set_xlim(*_limits([scale * v for i in tuned for v in _span(rows[i], metric)]))
            if references:
                right.legend(fontsize=7, loc="lower right")
        if base:
            from matplotlib.ticker import MaxNLocator

            left.xaxis.set_major_locator(MaxNLocator(2))
            span = [scale * v for v in _span(rows[base[0]], metric)]
            left.set_xlim(*_limits(span + [span[0] * 0.98, span[0] * 1.02], pad=0.15))
            left.text(0.5, 1.01, "base", transform=left.transAxes, ha="center", fontsize=7)
        left.spines["right"].set_visible(False)
        right.spines["left"].set_visible(False)
        right.tick_params(labelleft=False, left=False)
        _break_marks(left, right)
        right.set_xlabel(label, fontsize=8)
        for axis in (left, right):
            axis.tick_params(axis="x", labelsize=7)
            axis.grid(axis="x", alpha=0.3)
        left.set_yticks(range(len(rows)), names if col == 0 else [""] * len(rows), fontsize=8)
        left.set_ylim(len(rows) - 0.5, -0.5)  # first row on top
    figure.suptitle(title, fontsize=10)
    figure.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(figure)
    return Path(path)


def _span(row: dict, metric: str) -> list[float]:
    ci = row.get(f"{metric}_ci")
    return [row[metric], *ci] if ci else [row[metric]]
