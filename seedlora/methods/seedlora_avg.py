"""seedlora: average, then match the average's distribution to the inputs' (SeedLoRA §3.4).

τ_avg = (1/K) Σ w_i τ_i; μ̂, σ̂ = means of the inputs' entry mean and population std;
τ_m = a·τ_avg + c with a = σ̂/σ(τ_avg), c = μ̂ − a·μ(τ_avg). The constant c is the rank-1
matrix c·1·1ᵀ, so in factor form τ_m is exactly rank Σ r_i + 1:
B = [a·B_avg, c·1_out], A = [A_avg; 1_inᵀ], with every statistic from factor identities.
σ(τ_avg) = 0 leaves the module's update zero.
"""

from __future__ import annotations

import math

import torch

from ..lowrank import LowRank, concat, frobenius_sq, mean_std
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
    """τ_m exactly as a rank Σ r_i + 1 LowRank, no out x in matrix formed."""
    k = len(terms)
    stats = [mean_std(t) for t in terms]
    ref_mean = sum(s[0] for s in stats) / k
    ref_std = sum(s[1] for s in stats) / k
    avg = concat(terms, [w / k for w in weights.tolist()])  # B_avg, A_avg
    out, inp = avg.shape
    avg_mean, avg_std = mean_std(avg)
    mapping = affine_map(ref_mean, ref_std, avg_mean, avg_std**2, frobenius_sq(avg) / (out * inp))
    if mapping is None:
        return LowRank(B=avg.B.new_zeros(out, avg.rank + 1), A=avg.A.new_zeros(avg.rank + 1, inp))
    a, c = mapping
    B = torch.cat([avg.B * a, avg.B.new_full((out, 1), c)], dim=1)  # out x (Σr+1)
    A = torch.cat([avg.A, avg.A.new_ones(1, inp)], dim=0)  # (Σr+1) x in
    return LowRank(B=B, A=A)


METHOD = MergeMethod(
    name="seedlora",
    summary="average, then match mean/std to the inputs' (SeedLoRA), exact rank Σr+1",
    paper="https://openreview.net/forum?id=7QH48TtFZX",
    merge_deltas=merge_deltas,
    merge_factors=merge_factors,
    params=(),
    default_weight=lambda k: 1.0,
    extra_rank=1,  # the constant c·1·1ᵀ
)
