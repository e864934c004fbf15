"""Magnitude-trim merges (ties, magnitude_prune) of LoRA inputs, a block of rows at a time.

The dense path materialises the K out x in updates, then trims and combines them: K float32
matrices in memory (3 x 0.94 GB for one 70B MLP module). A LoRA update's rows are one small
product B[rows] @ A, so neither step needs the whole matrix: one pass per input forms its
blocks of rows and finds its exact k-th largest |τ_i| (methods.topk), and a second pass forms
the K blocks again, trims and combines them while they are in cache. Memory: K + 1 blocks of
1 MB and the combine's scratch rows. The result comes out block by block: a fused model adds it to the base as it
streams (`add_to`), an adapter writes it into the one out x in matrix it cuts to rank N (`dense`).

Both passes form the products on one grid of row blocks, so the trims are decided on exactly
the values the combine uses. The grid has an even number of rows: MKL's sgemm gives an even
number of rows of B @ A the same bits as the whole product (odd counts take another kernel; seen
with torch 2.13's MKL on 4096- and 11008-wide products), so on the CPU the result is the dense
path's bit for bit (tests/test_rowwise.py checks it; where it would not be, the trims still
match the values combined, and the result differs from the dense path's by float32 rounding).

One thread: every kernel here is small (a block of rows, a CPU_BLOCK chunk of the combine),
and splitting small kernels over OpenMP threads costs more than it gains (on the 2-core
development machine, 2 threads took 1.4x the time of one; Python threads over the blocks gained
1.2x, held back by the GIL). So the row-block work runs with torch set to one thread, and the
caller's count is restored after each call.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import numpy as np
import torch

from ..lowrank import LowRank
from .sparsify import CPU_BLOCK, Trim, combine_block, combine_work, keep_count
from .topk import (
    SMALL, bracket_from_sample, count_in_bracket, kth_largest_magnitude, odd_stride, positions_of, shrink_level,
    threshold_from_counts,
)

GRID_ENTRIES = 1 << 18  # entries per block of rows: K products of 1 MB (fewer, larger products are faster)
COMBINE_CHUNK = CPU_BLOCK  # entries per step of the combine: its K + 6 rows stay in L2
FACTOR_SAMPLE = 1 << 16  # entries that place each input's bracket


def grid_rows(in_features: int) -> int:
    """Rows per block: about GRID_ENTRIES entries, and even (see the module docstring)."""
    return max(2, (GRID_ENTRIES // max(1, in_features)) // 2 * 2)


@contextmanager
def one_thread():
    """torch on one thread inside the block, the caller's thread count restored after it."""
    threads = torch.get_num_threads()
    if threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class RowBuffers:
    """The buffers of the row-block work: the K products of a grid block, the combine's scratch rows, the merged block."""

    def __init__(self, k: int, entries: int):
        self.products = torch.empty(k, entries, dtype=torch.float32)
        self.work = combine_work(k, min(COMBINE_CHUNK, entries))
        self.merged = torch.empty(entries, dtype=torch.float32)


def product_rows(factors: LowRank, start: int, rows: int, out: torch.Tensor) -> torch.Tensor:
    """B[start:start+rows] @ A written into `out` (flat, at least rows x in entries); the flat result."""
    cols = factors.shape[1]
    return torch.mm(factors.B[start : start + rows], factors.A, out=out[: rows * cols].view(rows, cols)).view(-1)


class RowwiseMerge:
    """A dense merge of LoRA inputs that exists only block by block: `add_to` a base, or `dense()`."""

    def __init__(self, factors: list, density: float, coeffs: list, combine: str, majority_sign: str = "total"):
        self.factors, self.coeffs, self.combine, self.majority_sign = factors, coeffs, combine, majority_sign
        self.shape = factors[0].shape
        self.grid = grid_rows(self.shape[1])
        self.buffers = RowBuffers(len(factors), self.grid * self.shape[1])
        with one_thread():
            self.trims = [self._magnitude_trim(f, density) for f in factors]

    def cpu(self) -> "RowwiseMerge":
        return self

    def _blocks(self, start: int, stop: int) -> list:
        """(first row, rows) of the grid blocks covering rows [start, stop); `start` on the grid."""
        if start % self.grid:
            raise ValueError(f"row {start} is not on the merge's grid of {self.grid} rows")
        return [(first, min(self.grid, stop - first)) for first in range(start, stop, self.grid)]

    # ---- pass 1: each input's trim
    def _magnitude_trim(self, factors: LowRank, density: float) -> Trim:
        """The trim keeping the ⌈ρ·n⌉ largest |τ| of B @ A (methods.sparsify.magnitude_trim's rule)."""
        rows, cols = self.shape
        n = rows * cols
        k = keep_count(n, density)
        if k == n or factors.rank == 0:
            return Trim(None, level=0.0)  # keeps every nonzero: all of τ (a zero update stays zero)
        flat = None
        if n <= SMALL:
            flat = self._whole(factors)
            threshold = kth_largest_magnitude(flat, k)
        else:
            lo, hi = bracket_from_sample(self._sample(factors, n), n, k)
            blocks = self._blocks(0, rows)
            above, candidates = count_in_bracket(self._numpy_blocks(factors, blocks), lo, hi)
            threshold = threshold_from_counts(above, candidates, k, lambda value, count: positions_of(
                self._numpy_blocks(factors, blocks), value, count))
            if threshold is None:  # the bracket missed: exact over all entries, as the dense path does
                flat = self._whole(factors)
                threshold = kth_largest_magnitude(flat, k)
        if threshold.takes_all_tied:
            return Trim(None, level=shrink_level(threshold, torch.float32))
        if threshold.kept_ties is None:
            flat = self._whole(factors) if flat is None else flat
        return Trim(None, level=threshold.value, extra=threshold.ties_kept(flat))

    def _numpy_blocks(self, factors: LowRank, blocks: list) -> Iterator[np.ndarray]:
        for first, rows in blocks:
            yield product_rows(factors, first, rows, self.buffers.products[0]).numpy()

    def _whole(self, factors: LowRank) -> torch.Tensor:
        """The out x in product as one flat tensor, formed on the grid (small modules, rare fallbacks)."""
        flat, cols = torch.empty(self.shape[0] * self.shape[1], dtype=torch.float32), self.shape[1]
        for first, rows in self._blocks(0, self.shape[0]):
            product_rows(factors, first, rows, flat[first * cols : (first + rows) * cols])
        return flat

    def _sample(self, factors: LowRank, n: int) -> np.ndarray:
        """About FACTOR_SAMPLE evenly strided entries of the flat product, computed from the factors.

        Only the bracket uses them, so they need not be the grid's bits; fewer than topk's SAMPLE
        (gathering rows of B and columns of A costs more than a strided view) widen the bracket
        twofold, which costs nothing measurable. (A lattice of rows x columns would be cheaper, but
        it is a low-rank submatrix whose magnitudes spread far less evenly: the bracket missed.)
        """
        B, A, cols = factors.B, factors.A, self.shape[1]
        index = torch.arange(0, n, odd_stride(n // FACTOR_SAMPLE))
        rows, columns = torch.index_select(B, 0, index // cols), torch.index_select(A, 1, index % cols)
        return torch.einsum("sr,rs->s", rows, columns).numpy()

    # ---- pass 2: trim and combine
    def _merge_block(self, first: int, rows: int, out: torch.Tensor) -> torch.Tensor:
        """Merged rows [first, first + rows) into `out` (flat)."""
        cols, buffers = self.shape[1], self.buffers
        size = rows * cols
        values = [product_rows(f, first, rows, buffers.products[i]) for i, f in enumerate(self.factors)]
        step = -(-size // -(-size // COMBINE_CHUNK))  # equal chunks of at most COMBINE_CHUNK entries
        for begin in range(0, size, step):
            end = min(size, begin + step)
            combine_block([v[begin:end] for v in values], self.trims, first * cols + begin, self.coeffs,
                          self.combine, self.majority_sign, buffers.work, out[begin:end])
        return out[:size]

    def add_to(self, work: torch.Tensor, start: int) -> torch.Tensor:
        """work += the update's rows from `start` on (work: float32 rows x in; `start` on the grid)."""
        cols = self.shape[1]
        with one_thread():
            for first, rows in self._blocks(start, start + work.shape[0]):
                merged = self._merge_block(first, rows, self.buffers.merged)
                work[first - start : first - start + rows].add_(merged.view(rows, cols))
        return work

    def dense(self) -> torch.Tensor:
        """The whole out x in float32 update (for sinks that need it: an adapter's truncation)."""
        out = torch.empty(self.shape, dtype=torch.float32)
        flat, cols = out.view(-1), self.shape[1]
        with one_thread():
            for first, rows in self._blocks(0, self.shape[0]):
                self._merge_block(first, rows, flat[first * cols : (first + rows) * cols])
        return out


def merge_magnitude_rowwise(factors: list, weights: torch.Tensor, params: dict, *, combine: str) -> RowwiseMerge:
    """ties / magnitude_prune of LoRA factors (scales folded in), as a RowwiseMerge."""
    return RowwiseMerge(factors, params["density"], [float(w) for w in weights], combine,
                        params.get("majority_sign", "total"))
