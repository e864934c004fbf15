"""seedlora: average, then match the average's distribution to the inputs' (SeedLoRA §3.4).

τ_avg = (1/K) Σ w_i τ_i; μ̂, σ̂ = means of the inputs' entry mean and population std;
τ_m = a·τ_avg + c with a = σ̂/σ(τ_avg), c = μ̂ − a·μ(τ_avg). The constant c is the rank-1
matrix c·1·1ᵀ, so in factor form τ_m is exactly rank Σ r_i + 1:
B = [a·B_avg, c·1_out], A = [A_avg; 1_inᵀ], with every statistic from factor identities.
σ(τ_avg) = 0 leaves the module's update zero.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..lowrank import LowRank, concat, grams
from .base import MergeMethod

# σ(τ_avg)² at or below this fraction of its mean square counts as zero: the entries are
# constant to float64 rounding, and rescaling them would only amplify rounding noise.
ZERO_VARIANCE = 1e-12


def affine_map(ref_mean: float, ref_std: float, avg_mean: float, avg_var: float, avg_meansq: float):
    """(a, c) with τ_m = a·τ_avg + c, or None when σ(τ_avg) is zero."""
    if avg_var <= ZERO_VARIANCE * avg_meansq or avg_meansq == 0.0:
        return None
    a = ref_std / math.sqrt(avg_var)
    return a, ref_mean - a * avg_mean


def _dense_stats(x: torch.Tensor, chunk: int = 1 << 22) -> tuple[float, float, float]:
    """(mean, population variance, mean square) of all entries, float64, chunk by chunk."""
    flat = x.reshape(-1)
    n = flat.numel()
    total = sum(float(c.double().sum()) for c in flat.split(chunk))
    mean = total / n
    centred = sum(float((c.double() - mean).square().sum()) for c in flat.split(chunk))
    var = centred / n
    return mean, var, var + mean * mean


def merge_deltas(
    deltas: list[torch.Tensor], weights: torch.Tensor, params: dict, generator: torch.Generator
) -> torch.Tensor:
    """τ_m on dense deltas; statistics in float64."""
    k = len(deltas)
    stats = [_dense_stats(d) for d in deltas]
    ref_mean = sum(s[0] for s in stats) / k
    ref_std = sum(math.sqrt(s[1]) for s in stats) / k
    avg = torch.zeros_like(deltas[0], dtype=torch.float32)
    for delta, w in zip(deltas, weights.tolist()):
        avg.add_(delta.float(), alpha=w / k)
    mapping = affine_map(ref_mean, ref_std, *_dense_stats(avg))
    if mapping is None:
        return torch.zeros_like(avg)
    a, c = mapping
    return avg.mul_(a).add_(c)


def merge_factors(terms: list[LowRank], weights: torch.Tensor, params: dict) -> LowRank:
    """τ_m exactly as a rank Σ r_i + 1 LowRank, no out x in matrix formed.

    All statistics come from one pair of Grams of the concatenated factors [B_1 … B_K 1],
    [A_1; …; A_K; 1ᵀ]: the ones column/row makes them carry 1ᵀB and A1 too. Input i's
    statistics come from its diagonal block, τ_avg's from the weights on the columns. Fast
    (float32-product) Grams are used unless a variance E[x²] − μ² cancels enough digits for
    their rounding to show; then the Grams are recomputed exactly in float64.
    """
    k, ranks = len(terms), [t.rank for t in terms]
    total = sum(ranks)
    out, inp = terms[0].shape
    joined = concat(terms, [1.0] * k, rank=total + 1)  # last column/row: ones now, c·1·1ᵀ at the end
    joined.B[:, total] = 1.0
    joined.A[total] = 1.0
    coeffs = np.repeat(weights.detach().double().cpu().numpy() / k, ranks)  # τ_avg = B diag(coeffs) A
    stats = _statistics(grams(joined, exact=False), ranks, coeffs, out * inp)
    if stats[-1] > CANCELLATION_LIMIT:
        stats = _statistics(grams(joined), ranks, coeffs, out * inp)
    mapping = affine_map(*stats[:-1])
    if mapping is None:
        return LowRank(B=joined.B.zero_(), A=joined.A.zero_())
    a, c = mapping
    joined.B[:, :total].mul_(torch.from_numpy(coeffs * a).to(device=joined.B.device, dtype=torch.float32))  # a·B_avg
    joined.B[:, total] = c
    return joined


# E[x²]/σ² above this: float32-product Grams (relative error ~1e-7) could move σ² by ~1e-4.
CANCELLATION_LIMIT = 1e3


def _statistics(g, ranks: list, coeffs: np.ndarray, n: int) -> tuple:
    """(μ̂, σ̂, μ(τ_avg), σ²(τ_avg), E[τ_avg²], worst E[x²]/σ²) from Grams of [B 1], [A; 1ᵀ].

    The (Σr+1)² arithmetic runs in numpy, where it costs microseconds.
    """
    total = sum(ranks)
    gram_b, gram_a = g.gram_b.cpu().numpy(), g.gram_a.cpu().numpy()  # R x R: the factors may be on a GPU
    hadamard = gram_b[:total, :total] * gram_a[:total, :total]  # ⟨b_j a_jᵀ, b_l a_lᵀ⟩ for columns j, l
    sums = gram_b[total, :total] * gram_a[total, :total]  # entry sum of each column's b_j a_jᵀ
    bounds = np.cumsum([0] + list(ranks))
    inputs = [(float(sums[i:j].sum()) / n, float(hadamard[i:j, i:j].sum()) / n) for i, j in zip(bounds, bounds[1:])]
    average = (float(sums @ coeffs) / n, float(coeffs @ hadamard @ coeffs) / n)
    variances = [max(meansq - mean * mean, 0.0) for mean, meansq in inputs + [average]]
    worst = max((meansq / var if var > 0 else math.inf) if meansq > 0 else 1.0
                for (_, meansq), var in zip(inputs + [average], variances))
    k = len(ranks)
    ref_mean = sum(mean for mean, _ in inputs) / k
    ref_std = sum(math.sqrt(var) for var in variances[:-1]) / k
    return ref_mean, ref_std, average[0], variances[-1], average[1], worst


METHOD = MergeMethod(
    name="seedlora",
    summary="average, then an affine map so mean/std equal the inputs' mean μ̂, σ̂: σ̂(τ_avg − μ(τ_avg))/σ(τ_avg) + μ̂",
    paper="https://openreview.net/forum?id=7QH48TtFZX",
    merge_deltas=merge_deltas,
    merge_factors=merge_factors,
    params=(),
    default_weight=lambda k: 1.0,
    extra_rank=1,  # the constant c·1·1ᵀ
)
