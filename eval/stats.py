"""Confidence intervals and paired tests for the experiment's table: can a gain be told from noise?

Every metric is a function of per-example values, so one seeded multinomial resampling of the
test examples (B bootstrap draws, the same draws for every model: paired) gives
- a 95 % percentile interval for each row's pooled loss (Σ token NLL / Σ tokens) and accuracy;
- for a difference between two rows (a merge minus the best single, or minus the mean of the
  singles), its 95 % interval and a two-sided bootstrap p-value: twice the share of draws on
  the far side of zero (Koehn 2004's paired bootstrap), at least 1/B;
- for accuracy against one other model, McNemar's exact test on the discordant examples
  (b won by one model, c by the other: p = min(1, 2 P[Binomial(b + c, 1/2) <= min(b, c)])).
A row may average several models (the singles' mean): its value is the mean of their values.
"""

from __future__ import annotations

import math

import numpy as np


class Resampler:
    """B paired bootstrap draws of n examples, as an (B, n) matrix of counts."""

    def __init__(self, n: int, draws: int = 10_000, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.counts = rng.multinomial(n, np.full(n, 1.0 / n), size=draws).astype(np.float64)  # B x n
        self.n, self.draws = n, draws

    def loss(self, totals, tokens) -> np.ndarray:
        """Pooled loss of each draw: Σ counts·totals / Σ counts·tokens."""
        return self.counts @ np.asarray(totals, float) / np.maximum(self.counts @ np.asarray(tokens, float), 1.0)

    def accuracy(self, correct) -> np.ndarray:
        """Accuracy of each draw."""
        return self.counts @ np.asarray(correct, float) / self.n


def pooled_loss(totals, tokens) -> float:
    return float(np.sum(totals) / max(1.0, float(np.sum(tokens))))


def metric_draws(resampler: Resampler, members: list[dict], metric: str) -> tuple[float, np.ndarray]:
    """(value, bootstrap draws) of `metric` for a row averaging `members` (per-example records)."""
    if metric == "loss":
        values = [pooled_loss(m["totals"], m["tokens"]) for m in members]
        draws = [resampler.loss(m["totals"], m["tokens"]) for m in members]
    else:
        values = [float(np.mean(m["correct"])) for m in members]
        draws = [resampler.accuracy(m["correct"]) for m in members]
    return float(np.mean(values)), np.mean(draws, axis=0)


def interval(draws: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of the draws."""
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(draws, [tail, 100 - tail])
    return float(low), float(high)


def bootstrap_p(diff_draws: np.ndarray) -> float:
    """Two-sided paired-bootstrap p-value of a difference being zero (at least 1/B)."""
    below, above = float(np.mean(diff_draws <= 0)), float(np.mean(diff_draws >= 0))
    return min(1.0, max(2 * min(below, above), 1.0 / len(diff_draws)))


def mcnemar_p(correct_a, correct_b) -> float:
    """McNemar's exact two-sided p-value for paired correct/incorrect outcomes."""
    a, b = np.asarray(correct_a, bool), np.asarray(correct_b, bool)
    only_a, only_b = int(np.sum(a & ~b)), int(np.sum(~a & b))
    n, k = only_a + only_b, min(only_a, only_b)
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


def compare(resampler: Resampler, row: list[dict], reference: list[dict], metric: str) -> dict:
    """Difference row − reference on `metric`: value, 95 % interval, paired-bootstrap p (and McNemar)."""
    value_a, draws_a = metric_draws(resampler, row, metric)
    value_b, draws_b = metric_draws(resampler, reference, metric)
    diff = draws_a - draws_b
    out = {"diff": value_a - value_b, "ci": interval(diff), "p_bootstrap": bootstrap_p(diff)}
    if metric == "accuracy" and len(row) == 1 and len(reference) == 1:
        out["p_mcnemar"] = mcnemar_p(row[0]["correct"], reference[0]["correct"])
    return out
