"""The shared small core of K low-rank updates: where SVD-based methods run exactly.

K updates τ_i = B_i A_i (B_i out x r_i, A_i r_i x in) all live in span[B_1 … B_K] on the
left and span[A_1; …; A_K] on the right. Householder QR of the stacked factors gives
orthonormal bases Q_B (out x p) and Q_A (in x q), p, q ≤ R = Σ r_i, with
[B_1 … B_K] = Q_B R_B and [A_1; …; A_K]ᵀ = Q_A R_A, so τ_i = Q_B C_i Q_Aᵀ exactly, where
C_i = R_B[:, block i] R_A[:, block i]ᵀ is p x q. SVDs, projections and polar factors commute
with the isometries Q_B and Q_A, so TSV, Iso-C/CTS and KnOTS run on the p x q cores and map
back once: O((out + in)·R²), never an out x in matrix. A dense delta enters as the exact
factors (τ, I) or (I, τ), so the same code serves full fine-tuned checkpoints.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from ..lowrank import LowRank
from .base import split_stats

# Singular values at or below RANK_TOL·σ_max count as zero. The cores are float64 products of
# float32 factors (relative rounding ~1e-16); genuinely dependent inputs (a repeated adapter,
# zero-padded ranks) give "zeros" of that size, whose singular vectors are arbitrary.
RANK_TOL = 1e-10


@dataclass(frozen=True)
class Core:
    """τ_i = basis_b @ cores[i] @ basis_a.T for every input i (float64)."""

    basis_b: torch.Tensor  # out x p, orthonormal columns
    basis_a: torch.Tensor  # in x q, orthonormal columns
    cores: list  # p x q each
    ranks: list  # r_i of each input (columns of B_i)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.basis_b.shape[0], self.basis_a.shape[0])


def shared_core(terms: Sequence[LowRank], coeffs: Sequence[float]) -> Core:
    """The cores of c_i·τ_i: one QR of the stacked B's and one of the stacked A's."""
    B = torch.cat([t.B.double() * float(c) for t, c in zip(terms, coeffs)], dim=1)  # out x R
    A = torch.cat([t.A.double() for t in terms], dim=0)  # R x in
    basis_b, r_b = torch.linalg.qr(B)  # out x p, p x R
    basis_a, r_a = torch.linalg.qr(A.T)  # in x q, q x R
    cores, start = [], 0
    for term in terms:
        stop = start + term.rank
        cores.append(r_b[:, start:stop] @ r_a[:, start:stop].T)  # p x q
        start = stop
    return Core(basis_b, basis_a, cores, [t.rank for t in terms])


def nonzero_rank(S: torch.Tensor) -> int:
    """Number of singular values above RANK_TOL·σ_max (S sorted descending)."""
    if S.numel() == 0 or float(S[0]) <= 0.0:
        return 0
    return int((S > RANK_TOL * S[0]).sum())


def svd(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Thin SVD cut to the numerically non-zero singular values: U (m x k), S (k), Vh (k x n)."""
    U, S, Vh = torch.linalg.svd(matrix, full_matrices=False)
    k = nonzero_rank(S)
    return U[:, :k], S[:k], Vh[:k]


def polar(stacked: torch.Tensor) -> torch.Tensor:
    """The nearest matrix with orthonormal columns (or rows): U Vᵀ of the SVD (Procrustes).

    Where the stacked vectors are linearly dependent the polar factor is not unique (any
    completion of the zero singular directions); we take the partial isometry on the
    non-zero ones, the minimum-norm choice.
    """
    if stacked.shape[1] == 0:
        return stacked
    U, _, Vh = svd(stacked)
    return U @ Vh


def to_lowrank(core: Core, matrix: torch.Tensor) -> LowRank:
    """basis_b @ matrix @ basis_a.T as balanced float32 factors of its numerical rank (≥ 1)."""
    U, S, Vh = svd(matrix)
    if S.numel() == 0:  # a zero update: one zero column/row keeps every consumer's shapes valid
        out, inp = core.shape
        device = core.basis_b.device
        return LowRank(B=torch.zeros(out, 1, device=device), A=torch.zeros(1, inp, device=device))
    root = S.sqrt()
    B = core.basis_b @ (U * root)  # out x k
    A = (root[:, None] * Vh) @ core.basis_a.T  # k x in
    return LowRank(B=B.float(), A=A.float())


def as_factors(delta: torch.Tensor) -> LowRank:
    """A dense 2-D delta as exact factors: (τ, I) when out ≥ in, else (I, τ)."""
    delta = delta.float()
    out, inp = delta.shape
    if out >= inp:
        return LowRank(B=delta, A=torch.eye(inp, device=delta.device))
    return LowRank(B=torch.eye(out, device=delta.device), A=delta)


def dense_via_factors(factor_fn, deltas, weights, params):
    """merge_deltas for a factor method: exact factors in, dense out; non-2-D tensors averaged.

    Norm weights, biases and other non-matrix tensors have no SVD; like the TSV and Iso papers'
    code we merge them by the (weighted) mean (1/K) Σ w_i τ_i.
    """
    if deltas[0].dim() != 2:
        out = torch.zeros_like(deltas[0], dtype=torch.float32)
        for delta, w in zip(deltas, weights.tolist()):
            out.add_(delta.float(), alpha=w / len(deltas))
        return out
    result, stats = split_stats(factor_fn([as_factors(d) for d in deltas], weights, params))
    return (result.dense(), stats) if stats else result.dense()
