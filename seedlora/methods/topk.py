"""Top-k by magnitude without a full sort: the exact k-th largest |x|, then one comparison.

torch.topk / kthvalue on one 4096 x 11008 update take about a second per CPU core; TIES needs
one per input and module. Here a strided sample brackets the k-th largest magnitude, one pass in
cache-sized blocks counts the entries above the bracket and collects the few inside it (numpy's
vectorised comparisons on zero-copy views), and np.partition picks the exact value among those.
If the bracket misses (a layout the stride happens to alias), an exact partition of all entries
takes over: the answer is exact either way, only the time differs. Other devices use
torch.kthvalue, which is fast there.

Tie rule (methods.md: keep the ⌈ρ·n⌉ largest): every entry above the threshold v is kept, and of
the entries equal to v, the first ones in row-major order until k are kept. Small updates rarely
have equal magnitudes at the cut, but a 4096 x 11008 float32 update typically has a few entries
within one ulp of each other there; torch.topk (used before) kept an unspecified subset of them
(whatever std::nth_element left in front), so those few entries may differ from earlier
releases. Tied zeros change nothing: a kept zero contributes zero.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch

SAMPLE = 1 << 18  # sampled magnitudes that place the bracket
BLOCK = 1 << 18  # entries per step of the counting pass (1 MB of float32: a core's L2)
SMALL = 1 << 20  # at most this many entries: one exact partition is fastest
SIGMAS = 5.0  # bracket half-width in standard deviations of the sample's rank (misses ~1e-6)


@dataclass(frozen=True)
class Threshold:
    """The k-th largest magnitude `value` of a tensor, and how many entries lie above / at it."""

    value: float
    above: int  # entries with |x| > value
    tied: int  # entries with |x| == value
    k: int
    kept_ties: Optional[torch.Tensor] = field(default=None, compare=False)  # flat indices of the k − above ties kept

    def ties_kept(self, flat: torch.Tensor) -> torch.Tensor:
        """Flat indices (row-major order) of the tied entries the top k keep: the first k − above."""
        if self.kept_ties is not None:
            return self.kept_ties
        tied = torch.nonzero(flat.abs() == self.value).squeeze(1)
        return tied[: self.k - self.above]

    @property
    def takes_all_tied(self) -> bool:
        """True when keeping |x| >= value keeps exactly the top k (or the surplus ties are zeros)."""
        return self.above + self.tied == self.k or self.value == 0.0


def kth_largest_magnitude(x: torch.Tensor, k: int) -> Threshold:
    """The exact k-th largest |x| (1 <= k <= numel) with counts above and at it."""
    n = x.numel()
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, {n}], got {k}")
    flat = x.reshape(-1)
    if flat.device.type != "cpu" or flat.dtype not in (torch.float32, torch.float64):
        return _threshold_torch(flat, k)
    values = flat.numpy()
    if n <= SMALL:
        return _exact(np.abs(values), k, n)
    found = _bracketed(values, k)
    return found if found is not None else _exact(np.abs(values), k, n)


def _exact(magnitudes: np.ndarray, k: int, n: int) -> Threshold:
    value = np.partition(magnitudes, n - k)[n - k]
    above = int(np.count_nonzero(magnitudes > value))
    tied = np.flatnonzero(magnitudes == value)
    return Threshold(float(value), above, tied.size, k, torch.from_numpy(tied[: k - above]))


def _bracket(values: np.ndarray, k: int) -> tuple:
    """(lo, hi) magnitudes that hold the k-th largest with overwhelming probability."""
    return bracket_from_sample(values[:: sample_stride(values.size)], values.size, k)


def sample_stride(n: int) -> int:
    """The stride of the bracket's sample of n entries (about SAMPLE of them)."""
    return odd_stride(n // SAMPLE)


def bracket_from_sample(sample: np.ndarray, n: int, k: int) -> tuple:
    """(lo, hi) from magnitudes (or values) sampled evenly from n entries."""
    sample = np.sort(np.abs(sample))[::-1]  # descending
    m = sample.size
    rank, q = k * m / n, k / n
    half = SIGMAS * math.sqrt(m * q * (1.0 - q)) + 8
    hi = np.float32(np.inf) if rank - half < 0 else sample[int(rank - half)]
    lo = np.float32(0.0) if rank + half >= m else sample[int(rank + half)]
    return lo, hi


def odd_stride(wanted: int) -> int:
    """An odd stride near `wanted` sharing no factor with common row lengths (powers of 2, 3, 7, 43)."""
    stride = max(1, wanted) | 1
    while any(stride % p == 0 for p in (3, 7, 43)):
        stride += 2
    return stride


def _slices(values: np.ndarray):
    """A callable giving `values` as consecutive flat blocks of BLOCK entries."""
    return lambda: (values[start : start + BLOCK] for start in range(0, values.size, BLOCK))


def _bracketed(values: np.ndarray, k: int):
    """The threshold from one blocked pass over `values`, or None when the bracket missed k."""
    lo, hi = _bracket(values, k)
    return threshold_in_bracket(_slices(values), k, lo, hi)


def threshold_in_bracket(blocks, k: int, lo, hi) -> Optional[Threshold]:
    """The exact k-th largest |x| of a tensor given as consecutive flat blocks, or None when [lo, hi] misses it.

    `blocks()` yields the tensor's entries in row-major order as numpy arrays (each may be a
    reused buffer: only copies are kept); it is called once, and a second time only when the
    first entries tied at the cut must be located.
    """
    above, candidates = count_in_bracket(blocks(), lo, hi)
    return threshold_from_counts(above, candidates, k, lambda value, count: positions_of(blocks(), value, count))


def count_in_bracket(blocks, lo, hi) -> tuple:
    """(entries with |x| > hi, the magnitudes in [lo, hi]) over an iterable of flat numpy blocks.

    Partial counts of disjoint parts of a tensor add up: above counts sum, candidates concatenate.
    """
    above, inside = 0, []
    magnitude = over = within = None
    for block in blocks:
        if magnitude is None or magnitude.size < block.size:
            magnitude = np.empty(block.size, dtype=block.dtype)
            over, within = (np.empty(block.size, dtype=bool) for _ in range(2))
        a, gt, ok = magnitude[: block.size], over[: block.size], within[: block.size]
        np.abs(block, out=a)
        np.greater(a, hi, out=gt)
        above += int(np.count_nonzero(gt))
        np.less_equal(a, hi, out=gt)
        np.greater_equal(a, lo, out=ok)
        np.logical_and(ok, gt, out=ok)
        inside.append(a[ok])
    return above, (np.concatenate(inside) if inside else np.empty(0, dtype=np.float32))


def threshold_from_counts(above: int, candidates: np.ndarray, k: int, positions) -> Optional[Threshold]:
    """The k-th largest from count_in_bracket's result, or None when the bracket missed it.

    positions(value, count): flat indices of the first `count` entries with |x| == value (asked
    only when some of the entries tied at the cut are dropped).
    """
    need = k - above
    if not 1 <= need <= candidates.size:
        return None
    value = np.partition(candidates, candidates.size - need)[candidates.size - need]
    above += int(np.count_nonzero(candidates > value))
    tied = int(np.count_nonzero(candidates == value))
    kept = positions(value, k - above) if above + tied > k else None
    return Threshold(float(value), above, tied, k, kept)


def positions_of(blocks, value, count: int) -> torch.Tensor:
    """Flat indices of the first `count` entries with |x| == value, in row-major order."""
    found, start, total = [], 0, 0
    for block in blocks:
        plus, minus = block.dtype.type(value), block.dtype.type(-value)
        hits = np.flatnonzero((block == plus) | (block == minus)) + start
        found.append(hits)
        start, total = start + block.size, total + hits.size
        if total >= count:
            break
    return torch.from_numpy(np.concatenate(found)[:count].astype(np.int64))


def _threshold_torch(flat: torch.Tensor, k: int) -> Threshold:
    """Any device / dtype: torch.kthvalue (a radix select on GPUs)."""
    magnitudes = flat.abs()
    value = torch.kthvalue(magnitudes, flat.numel() - k + 1).values
    above = int(torch.count_nonzero(magnitudes > value))
    return Threshold(float(value), above, int(torch.count_nonzero(magnitudes == value)), k)


def keep_mask(x: torch.Tensor, threshold: Threshold) -> torch.Tensor:
    """Boolean mask of exactly k entries: all with |x| > v, then ties at v in row-major order."""
    mask = x.abs() > threshold.value
    if threshold.k > threshold.above:
        mask.view(-1)[threshold.ties_kept(x.reshape(-1)).to(x.device)] = True
    return mask


def shrink_level(threshold: Threshold, dtype: torch.dtype) -> float:
    """λ with hardshrink(x, λ) = x·[keep] when the threshold takes all ties: |x| > λ ⟺ |x| >= v.

    λ is the largest number of x's dtype below v, so the comparison hardshrink makes in that
    dtype is exactly |x| >= v.
    """
    if threshold.value == 0.0:
        return 0.0  # |x| > 0: the tied zeros would contribute zero anyway
    value = torch.tensor(threshold.value, dtype=dtype)
    return float(torch.nextafter(value, torch.zeros((), dtype=dtype)))
