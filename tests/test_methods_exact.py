"""Model Stock, TSV, Iso-C/CTS, KnOTS, SLERP and Multi-SLERP against dense float64 references
written here from the papers' formulas (and their authors' / mergekit's code), on random
low-rank inputs of several shapes and ranks (ranks differing between inputs): the factor path
is exact (relative error < 1e-5), and the dense path equals the papers' code on full-rank deltas."""

import itertools
import math

import numpy as np
import pytest
import torch

from seedlora.lowrank import LowRank
from seedlora.methods import get_method, split_stats

CASES = [(24, 20, (2, 4, 8)), (40, 16, (3, 3)), (12, 30, (1, 5, 2, 4)), (64, 48, (8, 2))]
REL = 1e-5


def make_terms(out, inp, ranks, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [LowRank(B=0.3 * torch.randn(out, r, generator=g) + 0.05, A=torch.randn(r, inp, generator=g)) for r in ranks]


def dense64(terms):
    return [t.B.double() @ t.A.double() for t in terms]


def rel_error(x, ref):
    return float((x.double() - ref).norm() / ref.norm())


def factors_result(name, terms, weights=None, params=None):
    method = get_method(name)
    w = method.resolve_weights(weights, len(terms))
    return split_stats(method.merge_factors(terms, w, method.resolve_params(params)))


def deltas_result(name, deltas, weights=None, params=None, seed=0):
    method = get_method(name)
    w = method.resolve_weights(weights, len(deltas))
    return split_stats(method.merge_deltas([d.float() for d in deltas], w, method.resolve_params(params),
                                           torch.Generator().manual_seed(seed)))


def nonzero_svd(x):
    """SVD cut to the non-zero singular values (exact zeros of a low-rank matrix are ~1e-16)."""
    U, S, Vh = torch.linalg.svd(x, full_matrices=False)
    k = int((S > 1e-9 * S[0]).sum())
    return U[:, :k], S[:k], Vh[:k]


def polar(x):
    """Paper code: u @ vh of svd(x, full_matrices=False)."""
    u, _, vh = torch.linalg.svd(x, full_matrices=False)
    return u @ vh


# ------------------------------------------------------------------ model stock
def ref_model_stock(taus, weights, filter_wise=False):
    """Model Stock (arXiv 2403.19522): t = K cosθ / (1 + (K−1) cosθ), cosθ the mean pairwise cosine."""
    k = len(taus)
    rows = [t.reshape(t.shape[0], -1) if filter_wise else t.reshape(1, -1) for t in taus]
    cos = sum(torch.nn.functional.cosine_similarity(rows[i], rows[j], dim=1, eps=0)
              for i, j in itertools.combinations(range(k), 2)) / math.comb(k, 2)
    t = k * cos / (1 + (k - 1) * cos)
    t = torch.where(cos > 0, t, 0.0)
    return t[:, None] * sum(w * x for w, x in zip(weights, taus)), t


@pytest.mark.parametrize("out,inp,ranks", CASES)
@pytest.mark.parametrize("filter_wise", [0, 1])
def test_model_stock_factor_and_dense_paths_equal_the_formula(out, inp, ranks, filter_wise):
    g = torch.Generator().manual_seed(1)
    shared = LowRank(B=torch.randn(out, 2, generator=g), A=torch.randn(2, inp, generator=g))
    # seeds of one task: a shared direction plus each input's own, so cosθ > 0 and 0 < t < 1
    terms = [LowRank(B=torch.cat([shared.B, t.B], 1), A=torch.cat([shared.A, t.A], 0)) for t in make_terms(out, inp, ranks)]
    weights = torch.full((len(terms),), 1 / len(terms), dtype=torch.float64)
    expected, t = ref_model_stock(dense64(terms), weights.tolist(), bool(filter_wise))
    merged, stats = factors_result("model_stock", terms, params={"filter_wise": filter_wise})
    assert merged.rank == sum(r + 2 for r in ranks)
    assert rel_error(merged.dense(), expected) < REL
    dense, dense_stats = deltas_result("model_stock", [t.dense() for t in terms], params={"filter_wise": filter_wise})
    assert rel_error(dense, expected) < REL
    assert 0 < stats["t"] < 1 and stats["t"] == pytest.approx(float(t.mean()), rel=1e-9)
    assert dense_stats["t"] == pytest.approx(stats["t"], rel=1e-6)


def test_model_stock_one_input_and_negative_cosine():
    terms = make_terms(24, 20, (3,))
    merged, stats = factors_result("model_stock", terms)
    assert stats == {"t": 1.0} and rel_error(merged.dense(), dense64(terms)[0]) < REL  # K = 1: the input itself
    a = make_terms(24, 20, (3,), seed=5)[0]
    opposed = [a, LowRank(B=-a.B, A=a.A)]  # cosθ = −1 → t = 0: no update
    merged, stats = factors_result("model_stock", opposed)
    assert stats["t"] == 0.0 and stats["cos"] == pytest.approx(-1.0) and float(merged.dense().abs().max()) == 0.0


# ------------------------------------------------------------------ slerp / multislerp
def ref_slerp(t, v0, v1, threshold=0.9995, eps=1e-8):
    """mergekit's slerp (the numpy gist it cites), on flattened float64 updates."""
    a, b = v0.reshape(-1).numpy(), v1.reshape(-1).numpy()
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    dot = np.sum((a / na if na > eps else a) * (b / nb if nb > eps else b))
    if abs(dot) > threshold:
        return torch.from_numpy((1 - t) * a + t * b).reshape(v0.shape)
    theta = np.arccos(dot)
    s0, s1 = np.sin(theta - theta * t) / np.sin(theta), np.sin(theta * t) / np.sin(theta)
    return torch.from_numpy(s0 * a + s1 * b).reshape(v0.shape)


@pytest.mark.parametrize("out,inp,ranks", [(24, 20, (2, 8)), (12, 30, (5, 1)), (40, 16, (3, 3))])
@pytest.mark.parametrize("t", [0.0, 0.3, 0.5, 1.0])
def test_slerp_equals_mergekits_formula_exactly_at_rank_r1_plus_r2(out, inp, ranks, t):
    terms = make_terms(out, inp, ranks, seed=2)
    taus = dense64(terms)
    expected = ref_slerp(t, taus[0], taus[1])
    merged, stats = factors_result("slerp", terms, params={"t": t})
    assert merged.rank == sum(ranks) and rel_error(merged.dense(), expected) < REL
    assert rel_error(deltas_result("slerp", taus, params={"t": t})[0], expected) < REL
    ends = {0.0: taus[0], 1.0: taus[1]}
    if t in ends:  # t = 0 gives the first input's update, t = 1 the second's
        assert rel_error(merged.dense(), ends[t]) < REL


def test_slerp_of_nearly_parallel_updates_is_linear():
    a = make_terms(24, 20, (3,))[0]
    b = LowRank(B=a.B * 2.0, A=a.A)
    merged, stats = factors_result("slerp", [a, b], params={"t": 0.25})
    assert stats["cos"] == pytest.approx(1.0)
    assert rel_error(merged.dense(), 0.75 * dense64([a])[0] + 0.25 * dense64([b])[0]) < REL


def ref_multislerp(taus, weights, eps=1e-8):
    """mergekit's multislerp (with a base model), transcribed on flattened float64 updates."""
    x = torch.stack([t.reshape(-1) for t in taus])
    w = torch.tensor(weights, dtype=torch.float64)
    w = w / w.sum()
    norms = x.norm(dim=-1, keepdim=True)
    unit = x / (norms + eps)
    mean = (unit * w[:, None]).sum(0)
    mean = mean / mean.norm()
    tangent = ((unit - (unit * mean).sum(-1, keepdim=True) * mean) * w[:, None]).sum(0)
    length = tangent.norm() + eps
    result = mean * torch.cos(length) + tangent * (torch.sin(length) / length)
    return (result * (norms.squeeze(-1) * w).sum()).reshape(taus[0].shape)


@pytest.mark.parametrize("out,inp,ranks", CASES)
def test_multislerp_equals_mergekits_formula(out, inp, ranks):
    terms = make_terms(out, inp, ranks, seed=3)
    weights = [1.0 + i for i in range(len(ranks))]
    expected = ref_multislerp(dense64(terms), weights)
    merged, _ = factors_result("multislerp", terms, weights=weights)
    assert merged.rank == sum(ranks) and rel_error(merged.dense(), expected) < REL
    assert rel_error(deltas_result("multislerp", dense64(terms), weights=weights)[0], expected) < REL


# ------------------------------------------------------------------ TSV
def ref_tsv(taus, fraction=None, scale=1.0):
    """TSV-M as the authors' compute_and_sum_svd_mem_reduction, each input's kept triplets capped at
    its numerical rank (the documented adaptation; inactive for full-rank deltas)."""
    fraction = fraction or 1 / len(taus)
    keep = int(min(taus[0].shape) * fraction)
    us, ss, vs = zip(*[(U[:, :keep], S[:keep], Vh[:keep]) for U, S, Vh in map(nonzero_svd, taus)])
    sum_u, sum_s, sum_v = torch.cat(us, 1), torch.cat(ss), torch.cat(vs, 0)
    return scale * polar(sum_u) @ torch.diag(sum_s) @ polar(sum_v)


@pytest.mark.parametrize("out,inp,ranks", CASES)
@pytest.mark.parametrize("params", [{}, {"sv_reduction": 0.1, "lambda": 1.7}])
def test_tsv_factor_path_equals_reference(out, inp, ranks, params):
    terms = make_terms(out, inp, ranks, seed=4)
    weights = [0.5 + 0.25 * i for i in range(len(ranks))]
    taus = [w * t for w, t in zip(weights, dense64(terms))]
    expected = ref_tsv(taus, params.get("sv_reduction"), params.get("lambda", 1.0))
    merged, _ = factors_result("tsv", terms, weights=weights, params=params)
    assert merged.rank <= sum(ranks) and rel_error(merged.dense(), expected) < REL


# ------------------------------------------------------------------ Iso-C / Iso-CTS
def ref_iso_c(taus, scale=1.0):
    """Iso-C (authors' iso.py): σ̄ U Vᵀ of the sum; σ̄ over the non-zero singular values."""
    U, S, Vh = nonzero_svd(sum(taus))
    return scale * S.mean() * U @ Vh


def ref_iso_cts(taus, ranks, fraction=0.8, scale=1.0):
    """Iso-CTS (authors' iso.py) with min(shape) → min(out, in, Σr) and kept triplets capped at rank."""
    dim, k = min(*taus[0].shape, sum(ranks)), len(taus)
    common = int(dim * fraction)
    common = dim - round((dim - common) / k) * k
    per_task = (dim - common) // k
    U, S, Vh = nonzero_svd(sum(taus))
    cu, cs, cv = U[:, :common], S[:common], Vh[:common]
    parts = [nonzero_svd(t - cu @ cu.T @ t) for t in taus]
    us = torch.cat([u[:, :per_task] for u, _, _ in parts] + [cu], 1)
    ss = torch.cat([s[:per_task] for _, s, _ in parts] + [cs])
    vs = torch.cat([v[:per_task] for _, _, v in parts] + [cv], 0)
    return scale * ss.mean() * polar(us) @ polar(vs)


@pytest.mark.parametrize("out,inp,ranks", CASES)
def test_iso_c_and_iso_cts_factor_paths_equal_references(out, inp, ranks):
    terms = make_terms(out, inp, ranks, seed=5)
    taus = dense64(terms)
    merged, stats = factors_result("iso_c", terms, params={"lambda": 0.7})
    expected = ref_iso_c(taus, 0.7)
    assert rel_error(merged.dense(), expected) < REL
    assert stats["sigma"] == pytest.approx(float(nonzero_svd(sum(taus))[1].mean()), rel=1e-9)
    singular = torch.linalg.svdvals(merged.dense().double())  # a flat spectrum: all non-zero σ equal
    assert float(singular[0] / singular[len(nonzero_svd(sum(taus))[1]) - 1]) == pytest.approx(1.0, abs=1e-5)
    for fraction in (0.8, 0.5):
        merged, _ = factors_result("iso_cts", terms, params={"common_space_fraction": fraction})
        assert rel_error(merged.dense(), ref_iso_cts(taus, ranks, fraction)) < REL


# ------------------------------------------------------------------ KnOTS
def ref_trim(x, density):
    k = math.ceil(density * x.numel())
    order = x.reshape(-1).abs().argsort(descending=True)
    kept = torch.zeros(x.numel(), dtype=x.dtype)
    kept[order[:k]] = x.reshape(-1)[order[:k]]
    return kept.view(x.shape)


def ref_knots(taus, weights, density=0.2, merge="ties", scale=1.0):
    """KnOTS (authors' task_merger.SVDMerger): SVD of [τ_1 … τ_K], TIES on the S V_iᵀ blocks, U back."""
    U, S, Vh = nonzero_svd(torch.cat(taus, dim=1))
    blocks = [torch.diag(S) @ v for v in Vh.split(taus[0].shape[1], dim=1)]
    w = torch.tensor(weights, dtype=torch.float64).view(-1, 1, 1)
    if merge == "linear":
        return scale * U @ (w * torch.stack(blocks)).sum(0)
    trimmed = torch.stack([ref_trim(b, density) for b in blocks])
    sign = torch.where(trimmed.sum(0) >= 0, 1.0, -1.0).double()
    agree = (trimmed.sign() == sign) & (trimmed != 0)
    merged = (w * trimmed * agree).sum(0) / agree.sum(0).clamp(min=1)
    return scale * U @ merged


@pytest.mark.parametrize("out,inp,ranks", CASES)
@pytest.mark.parametrize("params", [{}, {"density": 0.5, "lambda": 0.6}, {"merge": "linear"}])
def test_knots_factor_path_equals_reference(out, inp, ranks, params):
    terms = make_terms(out, inp, ranks, seed=6)
    weights = [1.0] * len(ranks) if params.get("merge") != "linear" else [0.2 * (i + 1) for i in range(len(ranks))]
    expected = ref_knots(dense64(terms), weights, params.get("density", 0.2), params.get("merge", "ties"),
                         params.get("lambda", 1.0))
    merged, _ = factors_result("knots", terms, weights=weights, params=params)
    assert merged.rank <= sum(ranks) and merged.B.shape[0] == out and merged.A.shape[1] == inp
    assert rel_error(merged.dense(), expected) < REL
    if params.get("merge") == "linear":  # aligned coefficients, summed: exactly linear's Σ w_i τ_i
        assert rel_error(merged.dense(), sum(w * t for w, t in zip(weights, dense64(terms)))) < REL


# ------------------------------------------------------------------ dense (checkpoint) path = the papers' code
@pytest.mark.parametrize("name,reference", [
    ("tsv", lambda taus: ref_tsv(taus)),
    ("iso_c", lambda taus: ref_iso_c(taus)),
    ("iso_cts", lambda taus: ref_iso_cts(taus, [min(taus[0].shape)] * len(taus))),
    ("knots", lambda taus: ref_knots(taus, [1.0] * len(taus))),
])
@pytest.mark.parametrize("shape", [(20, 16), (12, 18)])
def test_dense_path_on_full_rank_deltas_equals_the_papers_code(name, reference, shape):
    g = torch.Generator().manual_seed(7)
    taus = [torch.randn(*shape, generator=g, dtype=torch.float64).float().double() for _ in range(3)]
    merged, _ = deltas_result(name, taus)
    assert rel_error(merged, reference(taus)) < REL
    norms = [torch.randn(5, generator=g) for _ in range(3)]  # non-matrix tensors: averaged
    torch.testing.assert_close(deltas_result(name, norms)[0], sum(norms) / 3)


@pytest.mark.parametrize("name", ["tsv", "iso_c", "iso_cts", "knots"])
def test_svd_methods_on_zero_or_repeated_inputs_stay_finite_and_exact(name):
    terms = make_terms(24, 20, (3, 4))
    repeated = [terms[0], terms[0], terms[1]]  # linearly dependent: the cores are rank-deficient
    merged, _ = factors_result(name, repeated)
    assert torch.isfinite(merged.B).all() and torch.isfinite(merged.A).all()
    zero = [LowRank(B=torch.zeros(24, 3), A=terms[0].A), LowRank(B=torch.zeros(24, 4), A=terms[1].A)]
    merged, _ = factors_result(name, zero)
    assert float(merged.dense().abs().max()) == 0.0


def test_multislerp_of_unchanged_tensors_is_zero_and_of_balanced_antipodes_an_error():
    zeros = [torch.zeros(6, 5) for _ in range(3)]
    assert float(deltas_result("multislerp", zeros)[0].abs().max()) == 0.0  # mergekit raises here
    a = torch.randn(6, 5, generator=torch.Generator().manual_seed(0))
    from seedlora.errors import MethodError
    with pytest.raises(MethodError, match="weighted mean of the unit updates is zero"):
        deltas_result("multislerp", [a, -a, a, -a])
