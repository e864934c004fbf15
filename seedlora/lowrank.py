"""Exact algebra on LoRA factors: no out x in matrix is ever formed here.

A low-rank update is X = B @ A with B (out x R) and A (R x in). The identities used
(see methods.md): sum of entries = (1ᵀB)(A1); ‖X‖² = tr((BᵀB)(AAᵀ));
⟨B₁A₁, B₂A₂⟩ = tr((B₁ᵀB₂)(A₂A₁ᵀ)); best rank-N = SVD of the R x R core R_B R_Aᵀ, where
B = Q_B R_B and Aᵀ = Q_A R_A (R from a Cholesky of the Gram, or QR). Everything but the final
thin products works on R x R Grams, so a merge costs about one pass over the factors.
Dense deltas (dense methods' output) are factored by dense_lowrank, which builds on this module.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

# Grams convert factors to float64 this many entries at a time (512 KB, reused).
GRAM_BLOCK_ENTRIES = 1 << 16


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


def concat(terms: Sequence[LowRank], coeffs: Sequence[float], rank: Optional[int] = None) -> LowRank:
    """Σ c_i B_i A_i exactly, as one float32 LowRank: B = [c_1 B_1, …], A = [A_1; …].

    With `rank` above Σ r_i the extra columns of B and rows of A are zero (room for a method's
    own terms, filled in place). Written straight into the result: one pass over each factor.
    """
    if not terms or len(terms) != len(coeffs):
        raise ValueError(f"concat needs one coefficient per term, got {len(terms)} terms and {len(coeffs)} coefficients")
    if len({t.shape for t in terms}) != 1:
        raise ValueError(f"concat needs terms of one shape, got {[t.shape for t in terms]}")
    total = sum(t.rank for t in terms)
    rank = total if rank is None else rank
    if rank < total:
        raise ValueError(f"concat of rank-{total} terms cannot fit in rank {rank}")
    (out, inp), device = terms[0].shape, terms[0].B.device
    B = torch.empty(out, rank, dtype=torch.float32, device=device)
    A = torch.empty(rank, inp, dtype=torch.float32, device=device)
    start = 0
    for term, coeff in zip(terms, coeffs):
        stop = start + term.rank
        if float(coeff) == 1.0:
            B[:, start:stop].copy_(term.B)
        else:
            torch.mul(term.B, float(coeff), out=B[:, start:stop])
        A[start:stop].copy_(term.A)
        start = stop
    B[:, total:].zero_()
    A[total:].zero_()
    return LowRank(B=B, A=A)


@dataclass(frozen=True)
class Grams:
    """BᵀB and AAᵀ of a LowRank as float64 (and 1ᵀB, A1 when asked): every statistic and the
    truncation need only these. One pass over each factor, then only R x R work.

    `exact`: products and sums in float64 (exact for float32 factors up to float64 rounding);
    otherwise float32 BLAS products, off by ~1e-7 relative: the precision of float32 factors.
    """

    gram_b: torch.Tensor  # R x R, BᵀB
    gram_a: torch.Tensor  # R x R, AAᵀ
    col_sums: Optional[torch.Tensor] = None  # R, 1ᵀB
    row_sums: Optional[torch.Tensor] = None  # R, A1
    exact: bool = True

    def entry_sum(self) -> float:
        """Sum of the entries of B @ A: (1ᵀB)(A1)."""
        if self.col_sums is None or self.row_sums is None:
            raise ValueError("these Grams were computed without sums; use grams(x, sums=True)")
        return float(self.col_sums @ self.row_sums)

    def frobenius_sq(self) -> float:
        """‖B A‖² = tr((BᵀB)(AAᵀ))."""
        return float((self.gram_b * self.gram_a).sum())


def grams(x: LowRank, sums: bool = False, exact: bool = True) -> Grams:
    """The Grams of x's factors as float64, and their column/row sums if `sums`.

    exact: float64 products, converting a cache-sized block at a time into one reused buffer
    (no whole float64 copies of the factors). Otherwise one float32 BLAS product per factor,
    about twice as fast; callers that take this check whether rounding could matter to them.
    """
    if not exact:
        B, A = x.B.float(), x.A.float()
        gram_b, gram_a = (B.T @ B).double(), (A @ A.T).double()
        if not sums:
            return Grams(gram_b, gram_a, exact=False)
        return Grams(gram_b, gram_a, B.sum(dim=0, dtype=torch.float64), A.sum(dim=1, dtype=torch.float64), exact=False)
    rank = x.rank
    step = max(1, GRAM_BLOCK_ENTRIES // max(rank, 1))
    buffer = torch.empty(step * rank, dtype=torch.float64, device=x.B.device)
    gram_b, gram_a = (buffer.new_zeros(rank, rank) for _ in range(2))
    col_sums, row_sums = buffer.new_zeros(rank), buffer.new_zeros(rank)
    for block in x.B.split(step, dim=0):  # rows of B: out x R blocks
        wide = buffer[: block.numel()].view(block.shape).copy_(block)
        gram_b.addmm_(wide.T, wide)
        if sums:
            col_sums += wide.sum(dim=0)
    for block in x.A.split(step, dim=1):  # columns of A: R x in blocks
        wide = buffer[: block.numel()].view(block.shape).copy_(block)
        gram_a.addmm_(wide, wide.T)
        if sums:
            row_sums += wide.sum(dim=1)
    return Grams(gram_b, gram_a, col_sums, row_sums) if sums else Grams(gram_b, gram_a)


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
    return grams(x).frobenius_sq()


def mean_std(x: LowRank) -> tuple[float, float]:
    """Mean and population standard deviation over all entries of B @ A."""
    g = grams(x, sums=True)
    return moments(g.entry_sum(), g.frobenius_sq(), x.shape[0] * x.shape[1])


def moments(total: float, sum_sq: float, n: int) -> tuple[float, float]:
    """(mean, population std) of n numbers from their sum and sum of squares."""
    mean = total / n
    return mean, math.sqrt(max(sum_sq / n - mean * mean, 0.0))


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


# CholeskyQR loses orthogonality like ε·cond(B)² (ε of the Grams' products); above these bounds
# on a factor's condition number (after column scaling) truncation recomputes exact Grams, and
# above the exact bound it takes Householder QR, which is condition-independent.
CHOLESKY_MAX_COND = 1e4  # float64 Grams: orthogonality within ~1e-8
FAST_GRAM_MAX_COND = 30.0  # float32 products: within ~6e-5, whose effect on the result is second order


def truncate(x: LowRank, rank: int, g: Optional[Grams] = None) -> tuple[LowRank, float]:
    """Best rank-`rank` approximation in Frobenius norm, and the energy it keeps.

    B = Q_B R_B and Aᵀ = Q_A R_A; the SVD of the small core R_B R_Aᵀ gives the optimum:
    O((out+in)·R²), no out x in matrix. R_B and R_A are Cholesky factors of the Grams (`g`,
    computed if not given), so Q_B and Q_A are never formed. An error δ in R moves the result
    along the rank-N manifold, which the optimal residual is orthogonal to: the error grows only
    by O(δ²), so fast Grams suffice for well-conditioned factors; otherwise exact Grams, and for
    singular or ill-conditioned ones (duplicate inputs, zero padding) Householder QR of the factors.
    The R x R work runs in numpy: microseconds, not torch's per-call dispatch.
    Returns (factors, ‖x_N‖²/‖x‖²); lossless (x itself, 1.0) when rank >= x.rank.
    """
    if rank < 1:
        raise ValueError(f"truncation rank must be >= 1, got {rank}")
    if rank >= x.rank:
        return x, 1.0
    g = grams(x, exact=False) if g is None else g
    factors = _cholesky_factors(g)
    if factors is None and not g.exact:
        factors = _cholesky_factors(grams(x))
    if factors is None:
        return _truncate_qr(x, rank)
    (r_b, r_b_inv), (r_a, r_a_inv) = factors
    U, S, Vh = np.linalg.svd(r_b @ r_a.T)  # core R x R
    k = min(rank, S.shape[0])
    root = np.sqrt(np.clip(S[:k], 0.0, None))
    # Q_B U √S = B (R_B⁻¹ U √S) and √S Vh Q_Aᵀ = (√S Vh R_A⁻ᵀ) A: one thin product each
    on_device = dict(dtype=torch.float32, device=x.B.device)  # the factors may live on a GPU
    left = torch.from_numpy(r_b_inv @ (U[:, :k] * root)).to(**on_device)  # R x k
    right = torch.from_numpy((Vh[:k] * root[:, None]) @ r_a_inv.T).to(**on_device)  # k x R
    kept = LowRank(B=x.B.float() @ left, A=right @ x.A.float())
    return pad_rank(kept, rank), kept_energy(torch.from_numpy(S), rank)


def singular_values(x: LowRank, g: Optional[Grams] = None) -> torch.Tensor:
    """σ of B @ A (float64, descending, on the CPU) from the R x R core, by truncate's route."""
    g = grams(x, exact=False) if g is None else g
    factors = _cholesky_factors(g)
    if factors is None and not g.exact:
        factors = _cholesky_factors(grams(x))
    if factors is None:
        r_b, r_a = torch.linalg.qr(x.B.double()).R, torch.linalg.qr(x.A.double().T).R
        return torch.linalg.svdvals(r_b @ r_a.T).cpu()
    (r_b, _), (r_a, _) = factors
    return torch.from_numpy(np.linalg.svd(r_b @ r_a.T, compute_uv=False))


# --rank auto keeps a little more than asked, so float32 rounding never takes it below E
ENERGY_MARGIN = 1e-6


def rank_for_energy(S: torch.Tensor, wanted_sq: float) -> int:
    """Fewest leading σ with Σσ² >= wanted_sq·(1 + margin) (all of them if none do; at least 1)."""
    if wanted_sq <= 0 or S.numel() == 0:
        return 1
    cumulative = S.double().cpu().square().cumsum(0)
    target = torch.tensor([wanted_sq * (1.0 + ENERGY_MARGIN)], dtype=torch.float64)
    return max(1, min(int(torch.searchsorted(cumulative, target).item()) + 1, S.shape[0]))


def _cholesky_factors(g: Grams):
    """((R_B, R_B⁻¹), (R_A, R_A⁻¹)) from the Grams, or None if either is not safely usable."""
    limit = CHOLESKY_MAX_COND if g.exact else FAST_GRAM_MAX_COND
    factor_b = _cholesky_factor(g.gram_b.cpu().numpy(), limit)
    factor_a = _cholesky_factor(g.gram_a.cpu().numpy(), limit) if factor_b is not None else None
    return None if factor_a is None else (factor_b, factor_a)


def _cholesky_factor(gram: np.ndarray, max_cond: float) -> Optional[tuple[np.ndarray, np.ndarray]]:
    """(R, R⁻¹) with gram = RᵀR upper triangular, or None when gram is not safely positive definite."""
    scale = np.sqrt(np.diagonal(gram))
    if not (scale > 0).all():
        return None
    try:  # the Gram of unit columns: column scaling removes cond that is only column scale
        r_unit = np.linalg.cholesky(gram / np.outer(scale, scale)).T
        r_unit_inv = np.linalg.inv(r_unit)
    except np.linalg.LinAlgError:
        return None
    # ‖R‖_F‖R⁻¹‖_F bounds the 2-norm condition number from above (within a factor R)
    if not np.isfinite(r_unit_inv).all() or np.linalg.norm(r_unit) * np.linalg.norm(r_unit_inv) > max_cond:
        return None
    return r_unit * scale[None, :], r_unit_inv / scale[:, None]  # R = R_unit D, R⁻¹ = D⁻¹ R_unit⁻¹


def _truncate_qr(x: LowRank, rank: int) -> tuple[LowRank, float]:
    """truncate() by Householder QR of B and Aᵀ: for factors whose Grams are ill-conditioned."""
    q_b, r_b = torch.linalg.qr(x.B.double())  # out x m, m x R
    q_a, r_a = torch.linalg.qr(x.A.double().T)  # in x m', m' x R
    U, S, Vh = torch.linalg.svd(r_b @ r_a.T, full_matrices=False)  # core m x m'
    return _balanced(q_b @ U, S, Vh @ q_a.T, rank), kept_energy(S, rank)


def kept_energy(S: torch.Tensor, rank: int) -> float:
    """Share of Σσ² in the top `rank` singular values (1.0 for a zero matrix)."""
    total = float((S * S).sum())
    return float((S[:rank] ** 2).sum()) / total if total > 0 else 1.0
