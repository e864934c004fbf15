"""Specification of seedlora.lowrank: every identity equals the dense computation, truncation
is the optimal (SVD) one, and dense truncation is exact for small matrices and near-optimal
and seeded for big ones."""

import math

import pytest
import torch

from seedlora.dense_lowrank import EXACT_SVD_MAX_DIM
from seedlora.lowrank import (
    LowRank,
    concat,
    entry_sum,
    frobenius_sq,
    grams,
    inner,
    mean_std,
    pad_rank,
    truncate,
)
from seedlora.dense_lowrank import truncate_dense


def random_lowrank(out, inp, rank, seed, offset=0.0):
    g = torch.Generator().manual_seed(seed)
    return LowRank(B=torch.randn(out, rank, generator=g) + offset, A=torch.randn(rank, inp, generator=g))


def dense64(x):
    return x.B.double() @ x.A.double()


def test_concat_is_the_weighted_sum_of_updates():
    terms = [random_lowrank(12, 9, r, seed) for r, seed in [(2, 0), (4, 1), (8, 2)]]
    coeffs = [0.5, -1.25, 2.0]
    result = concat(terms, coeffs)
    assert result.rank == 14 and result.shape == (12, 9)
    expected = sum(c * dense64(t) for t, c in zip(terms, coeffs))
    torch.testing.assert_close(dense64(result), expected, rtol=1e-5, atol=1e-5)


def test_identities_equal_dense_statistics():
    x = random_lowrank(30, 20, 5, seed=3, offset=0.3)
    y = random_lowrank(30, 20, 3, seed=4)
    dx, dy = dense64(x), dense64(y)
    assert entry_sum(x) == pytest.approx(float(dx.sum()), rel=1e-9)
    assert frobenius_sq(x) == pytest.approx(float(dx.square().sum()), rel=1e-9)
    assert inner(x, y) == pytest.approx(float((dx * dy).sum()), rel=1e-9)
    mean, std = mean_std(x)
    assert mean == pytest.approx(float(dx.mean()), rel=1e-9)
    assert std == pytest.approx(float(dx.std(unbiased=False)), rel=1e-9)


def test_pad_rank_adds_zero_factors_and_keeps_the_update():
    x = random_lowrank(7, 5, 2, seed=5)
    padded = pad_rank(x, 6)
    assert padded.rank == 6
    assert torch.equal(padded.dense(), x.dense())
    with pytest.raises(ValueError):
        pad_rank(x, 1)


def test_truncate_matches_svd_of_the_dense_matrix():
    x = random_lowrank(40, 30, 10, seed=6)
    result, energy = truncate(x, 4)
    assert result.rank == 4 and result.B.dtype == torch.float32 and result.A.dtype == torch.float32
    s = torch.linalg.svdvals(dense64(x))
    torch.testing.assert_close(torch.linalg.svdvals(dense64(result))[:4], s[:4], rtol=1e-5, atol=1e-5)
    assert energy == pytest.approx(float(s[:4].square().sum() / s.square().sum()), rel=1e-6)
    # optimal: the error is exactly the tail of the spectrum (Eckart–Young)
    err = float((dense64(x) - dense64(result)).square().sum())
    assert err == pytest.approx(float(s[4:].square().sum()), rel=1e-4)
    # balanced factors: column norms of B equal row norms of A (both √σ)
    torch.testing.assert_close(result.B.norm(dim=0), result.A.norm(dim=1), rtol=1e-4, atol=1e-6)


def test_truncate_to_rank_at_least_r_is_lossless():
    x = random_lowrank(20, 15, 6, seed=7)
    for rank in (6, 9):
        result, energy = truncate(x, rank)
        assert result is x and energy == 1.0


def test_truncate_rank_above_the_matrix_dimension_pads():
    x = random_lowrank(4, 30, 10, seed=8)  # R = 10 > out = 4: true rank is 4
    result, energy = truncate(x, 6)
    assert result.rank == 6 and energy == pytest.approx(1.0, abs=1e-12)
    torch.testing.assert_close(dense64(result), dense64(x), rtol=1e-4, atol=1e-4)


def test_truncate_zero_update_keeps_all_energy():
    x = LowRank(B=torch.zeros(5, 3), A=torch.randn(3, 4))
    result, energy = truncate(x, 2)
    assert energy == 1.0 and torch.count_nonzero(result.dense()) == 0


def test_truncate_dense_exact_branch_is_the_svd():
    g = torch.Generator().manual_seed(9)
    delta = torch.randn(50, 70, generator=g)
    factors, rel_err = truncate_dense(delta, 8, torch.Generator().manual_seed(0))
    s = torch.linalg.svdvals(delta.double())
    assert factors.rank == 8
    assert rel_err == pytest.approx(math.sqrt(float(s[8:].square().sum() / s.square().sum())), rel=1e-5)
    full, full_err = truncate_dense(delta, 64, torch.Generator().manual_seed(0))  # rank >= min dim
    assert full.rank == 64 and full_err < 1e-5
    torch.testing.assert_close(full.dense(), delta, rtol=1e-4, atol=1e-4)


def test_truncate_dense_randomized_branch_is_near_optimal_and_seeded():
    g = torch.Generator().manual_seed(10)
    out, inp, true_rank = 1100, 1200, 20
    assert min(out, inp) > EXACT_SVD_MAX_DIM  # takes the randomized branch
    delta = torch.randn(out, true_rank, generator=g) @ torch.randn(true_rank, inp, generator=g)
    delta += 1e-2 * torch.randn(out, inp, generator=g)
    factors, rel_err = truncate_dense(delta, true_rank, torch.Generator().manual_seed(1))
    s = torch.linalg.svdvals(delta.double())
    optimum = math.sqrt(float(s[true_rank:].square().sum() / s.square().sum()))
    assert factors.rank == true_rank
    assert optimum <= rel_err <= 1.01 * optimum
    direct = float((delta.double() - dense64(factors)).norm() / delta.double().norm())
    assert rel_err == pytest.approx(direct, rel=1e-3)
    again, again_err = truncate_dense(delta, true_rank, torch.Generator().manual_seed(1))
    assert torch.equal(again.B, factors.B) and torch.equal(again.A, factors.A) and again_err == rel_err


def test_fast_grams_agree_with_exact_ones_to_float32_precision():
    x = random_lowrank(3000, 500, 12, seed=11, offset=0.2)
    exact, fast = grams(x, sums=True), grams(x, sums=True, exact=False)
    assert exact.exact and not fast.exact
    dense = dense64(x)
    assert exact.frobenius_sq() == pytest.approx(float(dense.square().sum()), rel=1e-12)
    assert exact.entry_sum() == pytest.approx(float(dense.sum()), rel=1e-12)
    for a, b in [(fast.gram_b, exact.gram_b), (fast.gram_a, exact.gram_a)]:
        assert float((a - b).abs().max() / b.abs().max()) < 1e-6


def nearly_collinear(out, inp, rank, tilt, seed):
    """Factors whose columns (of B) and rows (of A) are nearly parallel: cond grows like 1/tilt."""
    g = torch.Generator().manual_seed(seed)
    base_b, base_a = torch.randn(out, 1, generator=g), torch.randn(1, inp, generator=g)
    B = base_b + tilt * torch.randn(out, rank, generator=g)
    A = base_a + tilt * torch.randn(rank, inp, generator=g)
    return LowRank(B=B, A=A)


@pytest.mark.parametrize("tilt, path", [(1.0, "fast Grams"), (1e-2, "exact Grams"), (1e-6, "QR")])
def test_truncate_is_optimal_on_every_conditioning_path(tilt, path, monkeypatch):
    """Well-conditioned factors use fast Grams, ill-conditioned exact ones, near-singular QR:
    whichever path runs, the error is the SVD's tail (Eckart–Young)."""
    import seedlora.lowrank as lowrank_module

    calls = []
    monkeypatch.setattr(lowrank_module, "_truncate_qr", lambda *a, _f=lowrank_module._truncate_qr: calls.append("QR") or _f(*a))
    real_grams = lowrank_module.grams
    monkeypatch.setattr(lowrank_module, "grams", lambda x, sums=False, exact=True: calls.append("exact" if exact else "fast") or real_grams(x, sums, exact))
    x = nearly_collinear(300, 200, 8, tilt, seed=12)
    result, energy = truncate(x, 3)
    expected_calls = {"fast Grams": ["fast"], "exact Grams": ["fast", "exact"], "QR": ["fast", "exact", "QR"]}[path]
    assert calls == expected_calls
    s = torch.linalg.svdvals(dense64(x))
    err = float((dense64(x) - dense64(result)).square().sum())
    assert err == pytest.approx(float(s[3:].square().sum()), rel=1e-4, abs=1e-9 * float(s.square().sum()))
    assert energy == pytest.approx(float(s[:3].square().sum() / s.square().sum()), rel=1e-6)


def test_truncate_of_duplicated_terms_takes_the_qr_path_and_stays_optimal():
    x = random_lowrank(50, 40, 4, seed=13)
    doubled = concat([x, x], [0.5, 0.5])  # rank-8 factors of a rank-4 update: singular Grams
    result, energy = truncate(doubled, 4)
    assert energy == pytest.approx(1.0, abs=1e-9)
    torch.testing.assert_close(dense64(result), dense64(x), rtol=1e-4, atol=1e-5)
