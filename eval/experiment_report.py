"""The experiment's table: every row with its 95 % interval, every merge tested against the singles.

Rows: base, each single, the singles' mean, the best single (chosen on the validation split;
in a regime without one, on the test split, and flagged as optimistic), the run trained K×
as long (same compute as the K seeds), and each merge. For the merges and the long run:
Δ against the best single and against the singles' mean, with the paired-bootstrap p-value
(and McNemar's for accuracy against the best single). Statistics: eval/stats.py.
"""

from __future__ import annotations

from .stats import Resampler, compare, interval, metric_draws


def member(entry: dict) -> dict:
    """Per-example records of one evaluated model, as eval/stats.py reads them."""
    per = entry["per_example"]
    return {"totals": [l * t for l, t in zip(per["loss"], per["tokens"])], "tokens": per["tokens"], "correct": per["correct"]}


def _row(name: str, role: str, members: list[dict], resampler: Resampler) -> dict:
    row = {"name": name, "role": role}
    for metric in ("loss", "accuracy"):
        value, draws = metric_draws(resampler, members, metric)
        row[metric], row[f"{metric}_ci"] = value, interval(draws)
    return row


def build_rows(models: dict, roles: dict, best: str, best_on: str, draws: int = 10_000, seed: int = 0) -> list[dict]:
    """Table rows with intervals and comparisons; `best` names the chosen best single."""
    n = len(next(iter(models.values()))["per_example"]["loss"])
    resampler = Resampler(n, draws, seed)
    singles = [name for name in models if roles[name] == "single"]
    rows = [_row(name, roles[name], [member(models[name])], resampler) for name in models if roles[name] in ("base", "single")]
    mean_members, best_members = [member(models[s]) for s in singles], [member(models[best])]
    rows.append({**_row(f"single mean (n={len(singles)})", "summary", mean_members, resampler), "key": "single mean"})
    label = f"single best: {best}" + ("" if best_on == "validation" else " (chosen on test: optimistic)")
    rows.append({**_row(label, "summary", best_members, resampler), "key": "single best"})
    for name in models:
        if roles[name] in ("base", "single"):
            continue
        row = _row(name, roles[name], [member(models[name])], resampler)
        for ref, members in (("best", best_members), ("mean", mean_members)):
            row[f"vs_{ref}"] = {m: compare(resampler, [member(models[name])], members, m) for m in ("loss", "accuracy")}
        rows.append(row)
    return rows


def _p(value: float) -> str:
    return f"{value:.3f}" if value >= 0.001 else "<0.001"


def _delta(cmp: dict, metric: str) -> str:
    scale, fmt = (1, "{:+.4f}") if metric == "loss" else (100, "{:+.1f}")
    text = fmt.format(scale * cmp["diff"]) + f" [{fmt.format(scale * cmp['ci'][0])}, {fmt.format(scale * cmp['ci'][1])}]"
    p = f"p={_p(cmp['p_bootstrap'])}"
    if "p_mcnemar" in cmp:
        p += f", McNemar {_p(cmp['p_mcnemar'])}"
    return f"{text} {p}"


def markdown(rows: list[dict], extra: dict | None = None) -> str:
    """The table: value [95 % CI] per row; Δ [CI] p for merges and the long run."""
    header = ("| model | loss [95% CI] | accuracy % [95% CI] | Δ loss vs best single | Δ acc vs best single "
              "| Δ loss vs single mean | Δ acc vs single mean |" + (" a |" if extra else ""))
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for row in rows:
        cells = [row["name"], f"{row['loss']:.4f} [{row['loss_ci'][0]:.4f}, {row['loss_ci'][1]:.4f}]",
                 f"{100 * row['accuracy']:.1f} [{100 * row['accuracy_ci'][0]:.1f}, {100 * row['accuracy_ci'][1]:.1f}]"]
        for ref in ("best", "mean"):
            cmp = row.get(f"vs_{ref}")
            cells += [_delta(cmp["loss"], "loss"), _delta(cmp["accuracy"], "accuracy")] if cmp else ["", ""]
        if extra:
            cells.append(f"{extra[row['name']]:.3f}" if row["name"] in extra else "")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def references(rows: list[dict]) -> dict:
    """The singles' mean and best rows, for the chart's vertical lines."""
    return {row["key"]: row for row in rows if "key" in row}
