"""Specification of the merge methods: each equals an independent dense computation of the
formula in methods.md (and PEFT's merge_utils where PEFT has the method), factor and delta paths
agree, random methods are reproducible from the seed, and bad parameters fail clearly."""

import math

import pytest
import torch
from peft.utils import merge_utils

from seedlora.errors import MethodError
from seedlora.lowrank import LowRank
from seedlora.methods import METHODS, get_method, method_names, selection
from seedlora.methods.sparsify import keep_count, magnitude_keep_mask, merge_masked

pytestmark = pytest.mark.filterwarnings("ignore:The density .* no pruning will be performed")

OUT, IN, RANKS = 24, 20, (2, 4, 8)
TOL = dict(rtol=1e-5, atol=1e-6)


@pytest.fixture
def terms():
    g = torch.Generator().manual_seed(0)
    return [LowRank(B=0.3 * torch.randn(OUT, r, generator=g) + 0.05, A=torch.randn(r, IN, generator=g)) for r in RANKS]


@pytest.fixture
def deltas(terms):
    return [t.dense() for t in terms]


@pytest.fixture
def weights():
    return torch.tensor([0.7, 1.3, 0.4], dtype=torch.float64)


def run(name, deltas, weights, params=None, seed=0):
    method = get_method(name)
    return method.merge_deltas(deltas, weights, method.resolve_params(params), torch.Generator().manual_seed(seed))


def stack64(deltas):
    return torch.stack([d.double() for d in deltas])


# ---- independent references, straight from methods.md ----

def ref_trim(x, density):
    """Keep the ⌈ρ·numel⌉ largest |x| (by a full sort)."""
    k = math.ceil(density * x.numel())
    order = x.reshape(-1).abs().argsort(descending=True)
    kept = torch.zeros(x.numel(), dtype=x.dtype)
    kept[order[:k]] = x.reshape(-1)[order[:k]]
    return kept.view(x.shape)


def ref_sign_merge(stack, weights, majority_sign):
    """TIES steps 2–3 on a K x ... stack of sparsified updates."""
    score = stack.sum(0) if majority_sign == "total" else stack.sign().sum(0)
    gamma = torch.where(score >= 0, 1.0, -1.0).double()
    agree = (stack.sign() == gamma) & (stack != 0)
    w = weights.view(-1, 1, 1)
    return (w * stack * agree).sum(0) / agree.sum(0).clamp(min=1)


# ---- registry ----

ALL = ["linear", "seedlora", "ties", "dare_linear", "dare_ties", "magnitude_prune", "selection", "model_stock", "tsv",
       "iso_c", "iso_cts", "knots", "della", "della_linear", "breadcrumbs", "breadcrumbs_ties", "slerp", "multislerp"]


def test_registry_lists_every_method_in_order():
    assert method_names() == ALL
    assert all(m.paper.startswith("https://") and m.summary and m.mergekit for m in METHODS)
    assert [m.name for m in METHODS if m.low_rank] == ["linear", "seedlora", "model_stock", "tsv", "iso_c", "iso_cts",
                                                        "knots", "slerp", "multislerp"]
    assert [m.name for m in METHODS if m.random] == ["dare_linear", "dare_ties", "selection", "della", "della_linear"]
    assert {m.name: m.default_weight(4) for m in METHODS} == {
        "linear": 0.25, "seedlora": 1.0, "ties": 1.0, "dare_linear": 0.25, "dare_ties": 1.0, "magnitude_prune": 0.25,
        "selection": 0.25, "model_stock": 0.25, "tsv": 1.0, "iso_c": 1.0, "iso_cts": 1.0, "knots": 1.0, "della": 1.0,
        "della_linear": 0.25, "breadcrumbs": 0.25, "breadcrumbs_ties": 1.0, "slerp": 1.0, "multislerp": 0.25,
    }


def test_unknown_method_names_the_choices():
    with pytest.raises(MethodError, match=r"unknown method 'avg' \(choose from: linear, seedlora, .*multislerp\)"):
        get_method("avg")


@pytest.mark.parametrize("typed,meant", [("modelstock", "model_stock"), ("Ties", None), ("DELLA-linear", None),
                                         ("iso-cts", None), ("slerpp", "slerp"), ("bredcrumbs", "breadcrumbs")])
def test_method_names_are_case_insensitive_and_typos_get_a_suggestion(typed, meant):
    if meant is None:
        assert get_method(typed).name == typed.lower().replace("-", "_")
    else:
        with pytest.raises(MethodError, match=f"unknown method '{typed}'; did you mean '{meant}'\\?"):
            get_method(typed)


@pytest.mark.parametrize("name,params,match", [
    ("ties", {"densty": 0.5}, "has no parameter 'densty'"),
    ("ties", {"density": 0}, r"'density' must be in \(0, 1\]"),
    ("dare_linear", {"density": 1.5}, r"'density' must be in \(0, 1\]"),
    ("magnitude_prune", {"density": -1}, r"'density' must be in \(0, 1\]"),
    ("ties", {"majority_sign": "mean"}, "must be one of total, frequency"),
    ("selection", {"resample": -1}, "'resample' must be >= 0"),
    ("linear", {"normalize": 2}, "must be one of 0, 1"),
    ("seedlora", {"density": 0.5}, r"has no parameter 'density' \(accepted: none\)"),
    ("ties", {"densty": 0.5}, r"\(accepted: density, majority_sign\); did you mean 'density'\?"),
    ("slerp", {"t": 1.5}, r"'t' must be in \[0, 1\]"),
    ("slerp", {"t": "half"}, "'t' must be float, got 'half'"),
    ("della", {"density": 0.9}, r"density ± epsilon must lie in \(0, 1\), got density=0.9, epsilon=0.15"),
    ("della", {"density": 0.5, "epsilon": -0.1}, "'epsilon' must be >= 0"),
    ("della_linear", {"rescale": "l2"}, "must be one of l1, inverse, none"),
    ("breadcrumbs", {"gamma": 2}, r"'gamma' must be in \[0, 1\]"),
    ("tsv", {"sv_reduction": 0}, r"'sv_reduction' must be in \(0, 1\]"),
    ("iso_cts", {"common_space_fraction": 1.2}, r"must be in \(0, 1\]"),
    ("knots", {"merge": "dare"}, "must be one of ties, linear"),
    ("multislerp", {"eps": 0}, "'eps' must be > 0"),
    ("model_stock", {"filter_wise": "maybe"}, "'filter_wise' must be int"),
])
def test_bad_parameters_raise_method_error(name, params, match):
    with pytest.raises(MethodError, match=match):
        get_method(name).resolve_params(params)


@pytest.mark.parametrize("name,k,weights,match", [
    ("slerp", 3, None, "merges exactly 2 inputs, got 3"),
    ("slerp", 2, [1.0, 2.0], "takes no per-input weights"),
    ("linear", 3, [1.0], "got 1 weights for 3 inputs"),
])
def test_bad_input_counts_and_weights_raise_method_error(name, k, weights, match):
    with pytest.raises(MethodError, match=match):
        get_method(name).resolve_weights(weights, k)


def test_no_method_modifies_its_inputs(terms, deltas, weights):
    before = [d.clone() for d in deltas]
    factors_before = [(t.B.clone(), t.A.clone()) for t in terms]
    for method in METHODS:
        k = 2 if method.max_inputs == 2 else 3
        run(method.name, deltas[:k], weights[:k])
        if method.low_rank:
            method.merge_factors(terms[:k], weights[:k], method.resolve_params(None))
    assert all(torch.equal(a, b) for a, b in zip(before, deltas))
    assert all(torch.equal(t.B, b) and torch.equal(t.A, a) for t, (b, a) in zip(terms, factors_before))


# ---- linear ----

@pytest.mark.parametrize("normalize", [0, 1])
def test_linear_factor_path_equals_delta_path_equals_weighted_sum(terms, deltas, weights, normalize):
    method = get_method("linear")
    params = method.resolve_params({"normalize": normalize})
    w = weights / weights.sum() if normalize else weights
    expected = (w.view(-1, 1, 1) * stack64(deltas)).sum(0)
    factors = method.merge_factors(terms, weights, params)
    assert factors.rank == sum(RANKS)
    torch.testing.assert_close(factors.dense().double(), expected, **TOL)
    torch.testing.assert_close(run("linear", deltas, weights, {"normalize": normalize}).double(), expected, **TOL)


def test_linear_default_weights_are_the_plain_average(deltas):
    method = get_method("linear")
    result = run("linear", deltas, method.resolve_weights(None, 3))
    torch.testing.assert_close(result.double(), stack64(deltas).mean(0), **TOL)


def test_linear_normalize_with_zero_sum_weights_fails(deltas):
    with pytest.raises(MethodError, match="non-zero sum"):
        run("linear", deltas, torch.tensor([1.0, -1.0, 0.0], dtype=torch.float64), {"normalize": 1})


# ---- seedlora ----

def seedlora_reference(deltas, weights):
    stack = stack64(deltas)
    avg = (weights.view(-1, 1, 1) * stack).mean(0)
    mu_hat = torch.stack([d.mean() for d in stack]).mean()
    sigma_hat = torch.stack([d.std(unbiased=False) for d in stack]).mean()
    return sigma_hat * (avg - avg.mean()) / avg.std(unbiased=False) + mu_hat, mu_hat, sigma_hat


def test_seedlora_factor_path_equals_delta_path_equals_formula(terms, deltas, weights):
    method = get_method("seedlora")
    expected, mu_hat, sigma_hat = seedlora_reference(deltas, weights)
    factors = method.merge_factors(terms, weights, {})
    assert factors.rank == sum(RANKS) + 1
    torch.testing.assert_close(factors.dense().double(), expected, **TOL)
    torch.testing.assert_close(run("seedlora", deltas, weights).double(), expected, **TOL)
    # the result has the reference statistics
    assert float(expected.mean()) == pytest.approx(float(mu_hat), rel=1e-9)
    assert float(expected.std(unbiased=False)) == pytest.approx(float(sigma_hat), rel=1e-9)


def test_seedlora_scales_independent_updates_by_about_sqrt_k():
    g = torch.Generator().manual_seed(1)
    terms = [LowRank(B=torch.randn(200, 8, generator=g), A=torch.randn(8, 150, generator=g)) for _ in range(4)]
    ones = torch.ones(4, dtype=torch.float64)
    merged = get_method("seedlora").merge_factors(terms, ones, {})
    a = float(merged.B[:, 0].norm() / (terms[0].B[:, 0] / 4).norm())
    assert a == pytest.approx(2.0, rel=0.15)


def test_seedlora_with_a_mean_far_above_the_spread_still_equals_the_formula(weights, monkeypatch):
    """E[x²] ≫ σ² cancels digits in σ² = E[x²] − μ²: the statistics are then recomputed from
    exact float64 Grams, and the result still matches the float64 dense formula."""
    import seedlora.methods.seedlora_avg as seedlora_avg

    g = torch.Generator().manual_seed(3)
    # each update is 100·1·1ᵀ (through a shared rank-1 term) plus a small random part
    terms = [LowRank(B=torch.cat([torch.full((OUT, 1), 100.0), 0.01 * torch.randn(OUT, r - 1, generator=g)], 1),
                     A=torch.cat([torch.ones(1, IN), torch.randn(r - 1, IN, generator=g)], 0)) for r in RANKS]
    exact_calls = []
    real_grams = seedlora_avg.grams
    monkeypatch.setattr(seedlora_avg, "grams", lambda x, exact=True: exact_calls.append(exact) or real_grams(x, exact=exact))
    factors = get_method("seedlora").merge_factors(terms, weights, {})
    assert exact_calls == [False, True]
    expected, _, sigma_hat = seedlora_reference([t.B.double() @ t.A.double() for t in terms], weights)
    torch.testing.assert_close(factors.dense().double(), expected, rtol=1e-5, atol=1e-5)
    # the spread is matched to 1e-6 (float32-product Grams alone are off by ~3e-6 here)
    merged64 = factors.B.double() @ factors.A.double()
    assert float(merged64.std(unbiased=False)) == pytest.approx(float(sigma_hat), rel=1e-6)


def test_seedlora_zero_spread_gives_a_zero_update(terms):
    zero_terms = [LowRank(B=torch.zeros_like(t.B), A=t.A) for t in terms]
    ones = torch.ones(3, dtype=torch.float64)
    factors = get_method("seedlora").merge_factors(zero_terms, ones, {})
    assert factors.rank == sum(RANKS) + 1 and torch.count_nonzero(factors.dense()) == 0
    assert torch.count_nonzero(run("seedlora", [t.dense() for t in zero_terms], ones)) == 0


# ---- ties / magnitude_prune ----

@pytest.mark.parametrize("majority_sign", ["total", "frequency"])
@pytest.mark.parametrize("density", [0.25, 0.5, 1.0])
def test_ties_equals_formula_and_peft(deltas, weights, majority_sign, density):
    result = run("ties", deltas, weights, {"density": density, "majority_sign": majority_sign})
    trimmed = torch.stack([ref_trim(d, density) for d in stack64(deltas)])
    torch.testing.assert_close(result.double(), ref_sign_merge(trimmed, weights, majority_sign), **TOL)
    peft = merge_utils.ties(deltas, weights.float(), density, majority_sign)
    torch.testing.assert_close(result, peft.float(), **TOL)


@pytest.mark.parametrize("density", [0.25, 1.0])
def test_magnitude_prune_equals_formula_and_peft(deltas, weights, density):
    result = run("magnitude_prune", deltas, weights, {"density": density})
    trimmed = torch.stack([ref_trim(d, density) for d in stack64(deltas)])
    torch.testing.assert_close(result.double(), (weights.view(-1, 1, 1) * trimmed).sum(0), **TOL)
    torch.testing.assert_close(result, merge_utils.magnitude_prune(deltas, weights.float(), density).float(), **TOL)


def test_trim_keeps_the_ceiling_of_density_times_numel(deltas):
    assert keep_count(480, 0.101) == 49  # 48.48 → 49 (PEFT's int() would keep 48)
    assert keep_count(100, 0.07) == 7  # read as the decimal 0.07, not 7.000000000000001
    assert int(magnitude_keep_mask(deltas[0], 0.101).sum()) == 49


# ---- dare ----

@pytest.mark.parametrize("name,combine", [("dare_linear", "sum"), ("dare_ties", "sign_elect")])
def test_dare_with_a_fixed_mask_equals_peft(deltas, weights, name, combine):
    density = 0.4
    torch.manual_seed(123)  # PEFT draws its masks from the global RNG: replay the same draws
    masks = [torch.bernoulli(torch.full_like(d, density)).bool() for d in deltas]
    torch.manual_seed(123)
    peft = getattr(merge_utils, name)(deltas, weights.float(), density)
    ours = merge_masked(deltas, weights, masks, density, combine)
    torch.testing.assert_close(ours, peft.float(), **TOL)
    # and the formula: τ̃_i = mask ⊙ τ_i / ρ, then sum or TIES steps 2–3
    dropped = torch.stack([m * d / density for m, d in zip(masks, stack64(deltas))])
    expected = (weights.view(-1, 1, 1) * dropped).sum(0) if combine == "sum" else ref_sign_merge(dropped, weights, "total")
    torch.testing.assert_close(ours.double(), expected, **TOL)


@pytest.mark.parametrize("name,peft_fn", [("dare_linear", merge_utils.dare_linear), ("dare_ties", merge_utils.dare_ties)])
def test_dare_density_one_keeps_everything(deltas, weights, name, peft_fn):
    result = run(name, deltas, weights, {"density": 1.0})
    torch.testing.assert_close(result, peft_fn(deltas, weights.float(), 1.0).float(), **TOL)


def test_dare_keeps_about_density_and_rescales(weights):
    delta = torch.ones(200, 100)
    result = run("dare_linear", [delta], weights[:1], {"density": 0.3}, seed=5)
    kept = result != 0
    assert float(kept.float().mean()) == pytest.approx(0.3, abs=0.02)
    torch.testing.assert_close(result[kept], torch.full_like(result[kept], float(weights[0]) / 0.3))


@pytest.mark.parametrize("name", ["dare_linear", "dare_ties", "selection"])
def test_random_methods_reproduce_from_the_seed(deltas, weights, name):
    first, again, other = (run(name, deltas, weights, seed=s) for s in (7, 7, 8))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


# ---- selection ----

def test_selection_takes_each_entry_from_an_input_with_the_given_frequencies():
    n = 60_000
    deltas = [torch.full((n,), float(i + 1)) for i in range(3)]  # value identifies the source
    probs = torch.tensor([0.6, 0.3, 0.1], dtype=torch.float64)
    result = run("selection", deltas, probs * 5, {"resample": 0})  # weights are normalised
    counts = [int((result == i + 1).sum()) for i in range(3)]
    assert sum(counts) == n
    shares = [c / n for c in counts]
    assert shares == pytest.approx([0.6, 0.3, 0.1], abs=0.01)
    none_from_zero = run("selection", deltas, torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64))
    assert not bool((none_from_zero == 2).any())


def test_selection_without_resampling_picks_entries_of_the_inputs(deltas, weights):
    result = run("selection", deltas, weights, {"resample": 0})
    assert bool(((stack64(deltas) == result.double()).any(0)).all())


def test_selection_resampling_redraws_exact_zeros(monkeypatch):
    monkeypatch.setattr(selection, "CHUNK", 30_000)  # several chunks, so the chunk seams are covered
    g = torch.Generator().manual_seed(2)
    deltas = [torch.randn(100_000, generator=g) * (torch.rand(100_000, generator=g) >= 0.5) for _ in range(3)]
    uniform = torch.full((3,), 1 / 3, dtype=torch.float64)
    zeros_here = (stack64(deltas) == 0).double().mean(0)  # m_j / K: chance one uniform pick is zero
    results = {n: run("selection", deltas, uniform, {"resample": n}, seed=3) for n in (0, 1, 2)}
    for n, result in results.items():  # a zero survives only if all n + 1 independent picks hit a zero
        expected = float((zeros_here ** (n + 1)).mean())  # 1/2, 1/3, 1/4 for these inputs
        assert float((result == 0).double().mean()) == pytest.approx(expected, abs=0.01)
    # more rounds only change entries that fewer rounds left at zero
    nonzero = results[0] != 0
    assert torch.equal(results[1][nonzero], results[0][nonzero])
    assert bool(((stack64(deltas) == results[2].double()).any(0)).all())


@pytest.mark.parametrize("bad", [[0.0, 0.0, 0.0], [1.0, -0.5, 1.0]])
def test_selection_rejects_unusable_probabilities(deltas, bad):
    with pytest.raises(MethodError, match="sampling probabilities"):
        run("selection", deltas, torch.tensor(bad, dtype=torch.float64))
