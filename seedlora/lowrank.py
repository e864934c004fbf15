"""Exact algebra on LoRA factors: no out x in matrix is ever formed here.

A low-rank update is X = B @ A with B (out x R) and A (R x in). The identities used
(see methods.md): sum of entries = (1ᵀB)(A1); ‖X‖² = tr((BᵀB)(AAᵀ));
⟨B₁A₁, B₂A₂⟩ = tr((B₁ᵀB₂)(A₂A₁ᵀ)); best rank-N = QR of B and Aᵀ + SVD of the R x R core.
The one exception is truncate_dense, which factors an already dense delta (dense methods' output).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

# Dense truncation uses an exact SVD up to this smaller dimension, a randomized SVD above.
EXACT_SVD_MAX_DIM = 1024


@dataclass(frozen=True)
class LowRank:
    """An update B @ A with any LoRA scale already folded into B."""

    B: torch.Tensor  # out x R
    A: torch.Tensor  # R x in

    @property
    def rank(self) -> int:
        return self.A.shape[0]

    @property
    def shape(self) -> tuple[int, int]:
        return (self.B.shape[0], self.A.shape[1])

    def dense(self) -> torch.Tensor:
        """The out x in matrix; only for tests, fused output and dense methods."""
        return self.B @ self.A


def concat(terms: Sequence[LowRank], coeffs: Sequence[float]) -> LowRank:
    """Σ c_i B_i A_i exactly, as one LowRank: B = [c_1 B_1, …], A = [A_1; …] (float32)."""
    if not terms or len(terms) != len(coeffs):
        raise ValueError(f"concat needs one coefficient per term, got {len(terms)} terms and {len(coeffs)} coefficients")
    if len({t.shape for t in terms}) != 1:
        raise ValueError(f"concat needs terms of one shape, got {[t.shape for t in terms]}")
    B = torch.cat([t.B.float() * float(c) for t, c in zip(terms, coeffs)], dim=1)  # out x ΣR
    A = torch.cat([t.A.float() for t in terms], dim=0)  # ΣR x in
    return LowRank(B=B, A=A)


def entry_sum(x: LowRank) -> float:
    """Sum of all entries of B @ A: (1ᵀB)(A1)."""
    return float(x.B.double().sum(dim=0) @ x.A.double().sum(dim=1))


def inner(x: LowRank, y: LowRank) -> float:
    """Frobenius inner product ⟨B₁A₁, B₂A₂⟩ = tr((B₁ᵀB₂)(A₂A₁ᵀ))."""
    gram_b = x.B.double().T @ y.B.double()  # R1 x R2
    gram_a = x.A.double() @ y.A.double().T  # R1 x R2
    return float((gram_b * gram_a).sum())


def frobenius_sq(x: LowRank) -> float:
    """‖B A‖² = tr((BᵀB)(AAᵀ))."""
    return inner(x, x)


def mean_std(x: LowRank) -> tuple[float, float]:
    """Mean and population standard deviation over all entries of B @ A."""
    n = x.shape[0] * x.shape[1]
    mean = entry_sum(x) / n
    var = frobenius_sq(x) / n - mean * mean
    return mean, math.sqrt(max(var, 0.0))


def pad_rank(x: LowRank, rank: int) -> LowRank:
    """The same update with zero columns of B / zero rows of A up to `rank` (exact)."""
    extra = rank - x.rank
    if extra < 0:
        raise ValueError(f"cannot pad a rank-{x.rank} update down to rank {rank}; use truncate")
    if extra == 0:
        return x
    B = torch.cat([x.B, x.B.new_zeros(x.B.shape[0], extra)], dim=1)
    A = torch.cat([x.A, x.A.new_zeros(extra, x.A.shape[1])], dim=0)
    return LowRank(B=B, A=A)


def _balanced(U: torch.Tensor, S: torch.Tensor, Vh: torch.Tensor, rank: int) -> LowRank:
    """Factors U√S and √S Vh of the top `rank` triplets, float32, zero-padded to `rank`."""
    k = min(rank, S.shape[0])
    root = S[:k].clamp(min=0).sqrt()
    B = (U[:, :k] * root).float()
    A = (root[:, None] * Vh[:k]).float()
    return pad_rank(LowRank(B=B, A=A), rank)


def truncate(x: LowRank, rank: int) -> tuple[LowRank, float]:
    """Best rank-`rank` approximation in Frobenius norm, and the energy it keeps.

    QR of B and of Aᵀ, SVD of the small core R_B R_Aᵀ: O((out+in)·R²), no out x in matrix.
    Returns (factors, ‖x_N‖²/‖x‖²); lossless (x itself, 1.0) when rank >= x.rank.
    """
    if rank < 1:
        raise ValueError(f"truncation rank must be >= 1, got {rank}")
    if rank >= x.rank:
        return x, 1.0
    q_b, r_b = torch.linalg.qr(x.B.double())  # out x m, m x R
    q_a, r_a = torch.linalg.qr(x.A.double().T)  # in x m', m' x R
    U, S, Vh = torch.linalg.svd(r_b @ r_a.T, full_matrices=False)  # core m x m'
    energy = kept_energy(S, rank)
    return _balanced(q_b @ U, S, Vh @ q_a.T, rank), energy


def kept_energy(S: torch.Tensor, rank: int) -> float:
    """Share of Σσ² in the top `rank` singular values (1.0 for a zero matrix)."""
    total = float((S * S).sum())
    return float((S[:rank] ** 2).sum()) / total if total > 0 else 1.0


def approx_frobenius_sq(x: LowRank) -> float:
    """‖B A‖² from float32 Grams: cheap, for weighting reports, not for statistics."""
    return float(((x.B.T @ x.B) * (x.A @ x.A.T)).sum(dtype=torch.float64))


def _relative_error(delta: torch.Tensor, approx: LowRank, rows: int = 4096) -> float:
    """‖delta − B A‖ / ‖delta‖ computed directly, a block of rows at a time."""
    err_sq = norm_sq = 0.0
    for start in range(0, delta.shape[0], rows):
        block = delta[start : start + rows].float()
        diff = block - approx.B[start : start + rows] @ approx.A
        err_sq += float(diff.double().square().sum())
        norm_sq += float(block.double().square().sum())
    return math.sqrt(err_sq / norm_sq) if norm_sq > 0 else 0.0


def _randomized_svd(
    delta: torch.Tensor, rank: int, generator: torch.Generator, oversample: int = 10, power_iters: int = 2
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Halko–Martinsson–Tropp range finder with QR re-orthonormalised power iterations."""
    width = min(rank + oversample, min(delta.shape))
    omega = torch.randn(delta.shape[1], width, generator=generator, dtype=delta.dtype)  # in x l
    omega = omega.to(delta.device)  # drawn on the generator's device (CPU), used beside delta
    q, _ = torch.linalg.qr(delta @ omega)  # out x l
    for _ in range(power_iters):
        z, _ = torch.linalg.qr(delta.T @ q)  # in x l
        q, _ = torch.linalg.qr(delta @ z)  # out x l
    U_small, S, Vh = torch.linalg.svd(q.T @ delta, full_matrices=False)  # l x in
    return q @ U_small, S, Vh


def truncate_dense(delta: torch.Tensor, rank: int, generator: torch.Generator) -> tuple[LowRank, float]:
    """Rank-`rank` factors of a dense delta and the relative error ‖τ − τ_N‖/‖τ‖.

    Exact SVD when min(shape) <= EXACT_SVD_MAX_DIM or the rank is large against it;
    otherwise a randomized SVD drawing from `generator` (deterministic for its state).
    """
    if rank < 1:
        raise ValueError(f"truncation rank must be >= 1, got {rank}")
    delta = delta.float()
    small = min(delta.shape)
    if small <= EXACT_SVD_MAX_DIM or 2 * (rank + 10) >= small:
        U, S, Vh = torch.linalg.svd(delta, full_matrices=False)
    else:
        U, S, Vh = _randomized_svd(delta, rank, generator)
    factors = _balanced(U, S, Vh, rank)
    return factors, _relative_error(delta, factors)
