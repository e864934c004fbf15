"""Low-rank factors of a dense update (the result of TIES, DARE, selection, DoRA), with the error
known exactly and without a second pass over the matrix.

Small updates (min(out, in) <= EXACT_SVD_MAX_DIM and out·in·min <= EXACT_SVD_MAX_WORK) take an
exact SVD. Large ones take a seeded
randomized range finder (Halko, Martinsson & Tropp 2011) in the blocked form of Yu, Gu & Li
(2018, randQB_EI): Q grows by blocks of orthonormal columns, each refined by power iterations
and re-orthogonalised against the earlier ones, and B = Qᵀτ. Then ‖τ − QB‖² = ‖τ‖² − ‖B‖²
(Q orthonormal), and the rank-N truncation of QB through the small SVD B = U S Vᵀ leaves
‖τ − τ_N‖² = (‖τ‖² − ‖B‖²) + Σ_{j>N} s_j², so the error comes from ‖τ‖² and the small SVD.
A fixed rank N is one block of N + OVERSAMPLE columns; `energy` (--rank auto) adds blocks until
‖B‖² ≥ E‖τ‖² and then keeps the fewest triplets that reach E.

Reported errors come from that formula, exact up to float32 rounding of ‖τ‖² and ‖B‖² (about
1e-6 of ‖τ‖²); an error below DIRECT_ERROR_BELOW, where that rounding would dominate, is measured
directly instead (one more pass over τ). Random
draws come from the CPU generator passed in and are moved to τ's device: the same seed draws the
same test matrices on every device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from .lowrank import LowRank, pad_rank, rank_for_energy

EXACT_SVD_MAX_DIM = 1024  # exact SVD up to this smaller dimension ...
EXACT_SVD_MAX_WORK = 1 << 31  # ... while out·in·min(out, in) stays below this (1024 x 8192 took 7 s)
OVERSAMPLE = 10  # extra columns of the range finder beyond the rank asked for
POWER_ITERS = 2  # power iterations per block (flat spectra, as TIES results have, need them)
FIRST_BLOCK, MAX_BLOCK = 64, 1024  # adaptive (energy) blocks double from FIRST_BLOCK up to MAX_BLOCK
# Below this relative error, ‖τ‖² − ‖kept‖² in float32 is dominated by rounding (~1e-6 of ‖τ‖²):
# the randomized path then measures the residual directly (one more pass; dense merges at the
# ranks people ask for lose far more than 1%, so they never take it).
DIRECT_ERROR_BELOW = 0.03
NORM_CHUNK = 1 << 16
ORTH_MIN_PIVOT = 1e-7  # CholeskyQR's smallest/largest pivot; below it, Householder QR


@dataclass(frozen=True)
class Factorized:
    """Factors of rank `rank` (zero-padded to the rank asked for) and what they leave out."""

    factors: LowRank
    rank: int  # triplets kept (<= the factors' columns)
    norm_sq: float  # ‖τ‖²
    energy_kept: float  # ‖τ_N‖² / ‖τ‖²
    relative_error: float  # ‖τ − τ_N‖ / ‖τ‖


def factorize(delta: torch.Tensor, generator: torch.Generator, rank: Optional[int] = None,
              energy: Optional[float] = None, round_up: Callable[[int], int] = int) -> Factorized:
    """Rank-`rank` factors of `delta`, or the fewest triplets keeping `energy` of ‖τ‖² (one of them).

    With `energy`, `round_up` maps the fewest rank to the one kept (e.g. a vLLM bucket).
    """
    if (rank is None) == (energy is None):
        raise ValueError("factorize needs exactly one of rank and energy")
    if rank is not None and rank < 1:
        raise ValueError(f"truncation rank must be >= 1, got {rank}")
    delta = delta if delta.dtype == torch.float32 else delta.float()
    small = min(delta.shape)
    norm_sq = squared_norm(delta)
    exact = uses_exact_svd(delta.shape, rank)
    if exact:
        U, S, Vh = torch.linalg.svd(delta, full_matrices=False)
        total, beyond_range = float(S.double().square().sum()), 0.0
    else:
        Q, B = range_finder(delta, generator, norm_sq, rank=rank, energy=energy)
        U_small, S = small_svd(B)
        total, beyond_range = norm_sq, max(0.0, norm_sq - float(S.square().sum()))
    keep = min(rank, S.shape[0]) if rank is not None else min(round_up(rank_for_energy(S, energy * total)), S.shape[0])
    lost = beyond_range + float(S[keep:].double().square().sum())
    kept_share = max(0.0, 1.0 - lost / total) if total > 0 else 1.0
    columns = rank or keep
    factors = balanced(U, S, Vh, keep, columns) if exact else range_factors(Q, B, U_small, S, keep, columns)
    error = math.sqrt(max(0.0, 1.0 - kept_share))
    if 0.0 < error < DIRECT_ERROR_BELOW and not exact:
        error = direct_error(delta, factors)  # the formula's float32 cancellation would be noise here
        kept_share = 1.0 - error * error
    return Factorized(factors, keep, norm_sq, kept_share, error)


def direct_error(delta: torch.Tensor, approx: LowRank, rows: int = 4096) -> float:
    """‖τ − B A‖ / ‖τ‖ computed directly, a block of rows at a time (float64 sums)."""
    err_sq = norm_sq = 0.0
    for start in range(0, delta.shape[0], rows):
        block = delta[start : start + rows]
        diff = block - approx.B[start : start + rows] @ approx.A
        err_sq += float(diff.double().square().sum())
        norm_sq += float(block.double().square().sum())
    return math.sqrt(err_sq / norm_sq) if norm_sq > 0 else 0.0


def uses_exact_svd(shape, rank: Optional[int]) -> bool:
    """True when factorize takes the exact SVD: a small matrix, or a rank near its smaller side."""
    small = min(shape)
    cheap = small <= EXACT_SVD_MAX_DIM and shape[0] * shape[1] * small <= EXACT_SVD_MAX_WORK
    return cheap or (rank is not None and 2 * (rank + OVERSAMPLE) >= small)


def small_svd(B: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(U, σ) of the l x in matrix B, descending, float64, from the eigenpairs of the l x l Gram B Bᵀ.

    Only l x l LAPACK work: a multi-threaded gesdd of a 74 x 11008 matrix took 0.5 s per call on 2
    busy cores, the Gram's eigh milliseconds. σ² is accurate to ~1e-16·σ₁², plenty for truncation.
    """
    wide = B.double()
    values, vectors = torch.linalg.eigh(wide @ wide.T)
    order = torch.argsort(values, descending=True)
    return vectors[:, order], values[order].clamp(min=0.0).sqrt()


def range_factors(Q: torch.Tensor, B: torch.Tensor, U: torch.Tensor, S: torch.Tensor, keep: int,
                  columns: int) -> LowRank:
    """Factors (Q U√S, √S⁻¹ Uᵀ B) of the top `keep` triplets (= Q U Uᵀ B), float32, zero-padded."""
    root = S[:keep].sqrt()
    inverse = torch.where(root > 0, 1.0 / root, torch.zeros_like(root))
    left = (Q.double() @ (U[:, :keep] * root)).float()
    right = ((U[:, :keep].T @ B.double()) * inverse[:, None]).float()
    return pad_rank(LowRank(B=left, A=right), max(columns, keep))


def balanced(U: torch.Tensor, S: torch.Tensor, Vh: torch.Tensor, keep: int, columns: int) -> LowRank:
    """Factors U√S and √S Vh of the top `keep` triplets, float32, zero-padded to `columns`."""
    root = S[:keep].clamp(min=0).sqrt()
    B = (U[:, :keep] * root).float()
    A = (root[:, None] * Vh[:keep]).float()
    return pad_rank(LowRank(B=B, A=A), max(columns, keep))


def range_finder(delta: torch.Tensor, generator: torch.Generator, norm_sq: float, rank: Optional[int] = None,
                 energy: Optional[float] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(Q, B = Qᵀτ): one block of rank + OVERSAMPLE columns, or blocks until ‖B‖² ≥ energy·‖τ‖²."""
    out, inp = delta.shape
    limit = min(out, inp)
    Q = delta.new_zeros(out, 0)
    B = delta.new_zeros(0, inp)
    width = min(rank + OVERSAMPLE, limit) if rank is not None else min(FIRST_BLOCK, limit)
    captured = 0.0
    while True:
        q_i = _block(delta, Q, B, width, generator)
        b_i = q_i.T @ delta  # width x in
        Q, B = torch.cat([Q, q_i], dim=1), torch.cat([B, b_i], dim=0)
        captured += squared_norm(b_i)
        if rank is not None or captured >= energy * norm_sq or Q.shape[1] >= limit:
            return Q, B
        width = min(2 * width, MAX_BLOCK, limit - Q.shape[1])


def _block(delta: torch.Tensor, Q: torch.Tensor, B: torch.Tensor, width: int,
           generator: torch.Generator) -> torch.Tensor:
    """`width` new orthonormal columns for the range of τ − QB, refined by power iterations."""
    omega = torch.randn(delta.shape[1], width, generator=generator, dtype=delta.dtype).to(delta.device)
    q_i = _orth(delta @ omega - Q @ (B @ omega))
    for _ in range(POWER_ITERS):
        z = _orth((q_i.T @ delta).T - B.T @ (Q.T @ q_i))  # (τ − QB)ᵀ q, as (qᵀτ)ᵀ: row-major friendly
        q_i = _orth(delta @ z - Q @ (B @ z))
    if Q.shape[1]:
        q_i = _orth(q_i - Q @ (Q.T @ q_i))  # re-orthogonalise against earlier blocks
    return q_i


def squared_norm(x: torch.Tensor) -> float:
    """‖x‖² to float64 accuracy without a float64 copy: float32 dots of 64K entries, summed in float64.

    (A float32 torch.linalg.vector_norm of a 4096 x 11008 matrix is off by ~1e-3 relative; this
    by ~1e-8, at the same speed.)
    """
    if x.device.type != "cpu":
        return float(torch.linalg.vector_norm(x, dtype=torch.float64)) ** 2
    flat = x.reshape(-1)
    return math.fsum(float(torch.dot(chunk, chunk)) for chunk in flat.split(NORM_CHUNK))


def _orth(x: torch.Tensor) -> torch.Tensor:
    """Orthonormal columns spanning x (out x l): CholeskyQR2 in float64, i.e. GEMMs and an l x l
    Cholesky, twice; Householder QR when x is (nearly) rank-deficient.

    LAPACK's Householder QR of a tall 4096 x 74 matrix took 0.5 s per call with 2 threads on busy
    cores (10 ms on one); two float64 Cholesky passes give orthogonality to ~1e-15 for cond(x) up
    to ~1e7, then one rounding to float32.
    """
    wide = x.double()
    for _ in range(2):
        factor, info = torch.linalg.cholesky_ex(wide.T @ wide, upper=True)
        diagonal = factor.diagonal()
        if int(info) != 0 or not bool(diagonal.min() > ORTH_MIN_PIVOT * diagonal.max()):
            return torch.linalg.qr(x).Q
        wide = torch.linalg.solve_triangular(factor, wide, upper=True, left=False)
    return wide.to(x.dtype)


def truncate_dense(delta: torch.Tensor, rank: int, generator: torch.Generator) -> tuple[LowRank, float]:
    """Rank-`rank` factors of a dense delta and the relative error ‖τ − τ_N‖/‖τ‖.

    Exact SVD for small matrices, a seeded randomized range finder above (see factorize).
    """
    found = factorize(delta, generator, rank=rank)
    return found.factors, found.relative_error
