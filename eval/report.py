"""Turn evaluate_models results into the papers' table shape, a bar chart and files on disk.

Why: the question is whether a merge beats the single seed adapters, so the table lists the
base model, each single adapter, their mean ± std (population std over seeds) and best, then
every merged (and other) candidate with its gain over the singles' mean and over the best
single. Loss gains are signed so that negative is better; accuracy gains are in points.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path


def single_stats(result: dict) -> dict | None:
    """Mean, std and best of loss and accuracy over the models whose role is 'single'."""
    singles = [m for m in result["models"].values() if m.get("role") == "single"]
    if not singles:
        return None
    losses, accs = [m["loss"] for m in singles], [m["accuracy"] for m in singles]
    return {
        "n": len(singles),
        "loss_mean": statistics.fmean(losses), "loss_std": statistics.pstdev(losses), "loss_best": min(losses),
        "accuracy_mean": statistics.fmean(accs), "accuracy_std": statistics.pstdev(accs), "accuracy_best": max(accs),
    }


def gains(model: dict, stats: dict | None) -> dict:
    """Loss and accuracy differences of one model from the singles' mean and best."""
    if stats is None:
        return {}
    return {
        "loss_vs_mean": model["loss"] - stats["loss_mean"], "loss_vs_best": model["loss"] - stats["loss_best"],
        "accuracy_vs_mean": model["accuracy"] - stats["accuracy_mean"],
        "accuracy_vs_best": model["accuracy"] - stats["accuracy_best"],
    }


def _row(name: str, loss: str, acc: str, gain: dict) -> str:
    cells = [name, loss, acc]
    if gain:
        cells += [f"{gain['loss_vs_mean']:+.4f}", f"{gain['loss_vs_best']:+.4f}",
                  f"{100 * gain['accuracy_vs_mean']:+.1f}", f"{100 * gain['accuracy_vs_best']:+.1f}"]
    else:
        cells += [""] * 4
    return "| " + " | ".join(cells) + " |"


def markdown_table(result: dict) -> str:
    """A markdown table: base, singles, singles' mean ± std and best, then the others with gains."""
    stats, models = single_stats(result), result["models"]
    lines = [
        f"Task `{result['task']}` ({result['kind']}), {result['examples']} held-out examples; "
        "loss = mean NLL per completion token (lower is better); Δ loss < 0 and Δ acc > 0 are gains.",
        "",
        "| model | loss | accuracy (%) | Δ loss vs mean | Δ loss vs best | Δ acc vs mean | Δ acc vs best |",
        "|---|---|---|---|---|---|---|",
    ]
    ordered = sorted(models.items(), key=lambda kv: ("base", "single").index(kv[1]["role"]) if kv[1]["role"] in ("base", "single") else 2)
    for name, m in ordered:
        if m["role"] in ("base", "single"):
            lines.append(_row(name, f"{m['loss']:.4f}", f"{100 * m['accuracy']:.1f}", {}))
    if stats is not None:
        lines.append(_row(f"single mean ± std (n={stats['n']})", f"{stats['loss_mean']:.4f} ± {stats['loss_std']:.4f}",
                          f"{100 * stats['accuracy_mean']:.1f} ± {100 * stats['accuracy_std']:.1f}", {}))
        lines.append(_row("single best", f"{stats['loss_best']:.4f}", f"{100 * stats['accuracy_best']:.1f}", {}))
    for name, m in ordered:
        if m["role"] not in ("base", "single"):
            label = name if m["role"] in ("merged", "candidate") else f"{name} ({m['role']})"
            lines.append(_row(label, f"{m['loss']:.4f}", f"{100 * m['accuracy']:.1f}", gains(m, stats)))
    return "\n".join(lines) + "\n"


def chart_rows(result: dict) -> tuple[list[dict], dict | None]:
    """Rows (base, singles, others) and the singles' mean/best lines for eval.charts.dot_chart."""
    order = {"base": 0, "single": 1}
    models = sorted(result["models"].items(), key=lambda kv: order.get(kv[1]["role"], 2))
    rows = [{"name": n, "role": m["role"], "loss": m["loss"], "accuracy": m["accuracy"]} for n, m in models]
    stats = single_stats(result)
    if stats is None:
        return rows, None
    return rows, {"single mean": {"loss": stats["loss_mean"], "accuracy": stats["accuracy_mean"]},
                  "single best": {"loss": stats["loss_best"], "accuracy": stats["accuracy_best"]}}


def write_report(result: dict, folder: Path) -> dict[str, Path]:
    """Write results.json, table.md and chart.png into `folder`; return their paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    summary = {**result, "single_stats": single_stats(result),
               "gains": {n: gains(m, single_stats(result)) for n, m in result["models"].items() if m["role"] not in ("base", "single")}}
    paths = {"json": folder / "results.json", "table": folder / "table.md", "chart": folder / "chart.png"}
    paths["json"].write_text(json.dumps(summary, indent=1) + "\n")
    paths["table"].write_text(markdown_table(result))
    from .charts import dot_chart

    rows, references = chart_rows(result)
    dot_chart(rows, f"{result['task']}: {result['examples']} held-out examples", paths["chart"], references)
    return paths
