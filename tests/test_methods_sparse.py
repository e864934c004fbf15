"""DELLA, Breadcrumbs and DARE's rescale options against references written here from mergekit's
definitions (sparsify.py: magnitude_outliers, della_magprune, rescaled_masked_tensor) and the
papers: deterministic parts exactly, random draws by their distribution over many seeds."""

import math

import pytest
import torch

from seedlora.methods import get_method, split_stats

TOL = dict(rtol=1e-5, atol=1e-6)


@pytest.fixture
def deltas():
    g = torch.Generator().manual_seed(0)
    return [torch.randn(12, 40, generator=g) * (1 + i) for i in range(3)]


def run(name, deltas, weights=None, params=None, seed=0):
    method = get_method(name)
    w = method.resolve_weights(weights, len(deltas))
    out, _ = split_stats(method.merge_deltas(deltas, w, method.resolve_params(params), torch.Generator().manual_seed(seed)))
    return out


def ref_sign_merge(stack, weights):
    """TIES election (sum of values) and disjoint mean over agreeing non-zero entries."""
    gamma = torch.where(stack.sum(0) >= 0, 1.0, -1.0).double()
    agree = (stack.sign() == gamma) & (stack != 0)
    w = torch.tensor(weights, dtype=torch.float64).view(-1, 1, 1)
    return (w * stack * agree).sum(0) / agree.sum(0).clamp(min=1)


# ------------------------------------------------------------------ breadcrumbs
def ref_breadcrumbs(x, density, gamma):
    """mergekit magnitude_outliers: drop the int(γn) largest and the smallest, keep int(ρn)."""
    n = x.numel()
    keep, top = int(density * n), int(gamma * n)
    bottom = max(0, n - keep - top)
    ranked = x.reshape(-1).abs().argsort()  # ascending
    out = torch.zeros(n, dtype=torch.float64)
    chosen = ranked[bottom: bottom + keep]
    out[chosen] = x.reshape(-1).double()[chosen]
    return out.view(x.shape)


@pytest.mark.parametrize("density,gamma", [(0.5, 0.01), (0.3, 0.1), (0.95, 0.1), (0.07, 0.0)])
def test_breadcrumbs_equals_mergekits_magnitude_outliers(deltas, density, gamma):
    params = {"density": density, "gamma": gamma}
    kept = torch.stack([ref_breadcrumbs(d, density, gamma) for d in deltas])
    weights = [0.5, 1.0, 2.0]
    torch.testing.assert_close(run("breadcrumbs", deltas, weights, params).double(),
                               (torch.tensor(weights, dtype=torch.float64).view(-1, 1, 1) * kept).sum(0), **TOL)
    torch.testing.assert_close(run("breadcrumbs_ties", deltas, None, {**params, "lambda": 0.5}).double(),
                               0.5 * ref_sign_merge(kept, [1.0] * 3), **TOL)
    n = deltas[0].numel()
    assert int((run("breadcrumbs", deltas[:1], [1.0], params) != 0).sum()) == int(density * n)


def test_breadcrumbs_drops_the_largest_entries_and_keeps_everything_at_density_one(deltas):
    out = run("breadcrumbs", deltas[:1], [1.0], {"density": 0.5, "gamma": 0.05})
    largest = deltas[0].abs().reshape(-1).topk(int(0.05 * deltas[0].numel())).indices
    assert int((out.reshape(-1)[largest] != 0).sum()) == 0
    torch.testing.assert_close(run("breadcrumbs", deltas, [1.0] * 3), sum(deltas), **TOL)  # mergekit's default ρ = 1


def test_breadcrumbs_l1_rescale_matches_the_l1_norm(deltas):
    out = run("breadcrumbs", deltas[:1], [1.0], {"density": 0.4, "gamma": 0.02, "rescale": "l1"})
    assert float(out.abs().sum()) == pytest.approx(float(deltas[0].abs().sum()), rel=1e-6)


# ------------------------------------------------------------------ della
def ref_keep_probability(x, density, epsilon):
    """DELLA/mergekit: per row, ρ − ε for the smallest |x| rising linearly by rank to ρ + ε."""
    probs = torch.empty_like(x, dtype=torch.float64)
    n = x.shape[1]
    for i, row in enumerate(x):
        for rank, j in enumerate(row.abs().argsort().tolist()):
            probs[i, j] = density - epsilon + 2 * epsilon * rank / (n - 1)
    return probs


def draws(name, delta, params, seeds=400):
    return torch.stack([run(name, [delta], [1.0], params, seed=s).double() for s in range(seeds)])


def test_della_keeps_entries_with_the_rank_based_probabilities(deltas):
    delta = deltas[0]
    expected = ref_keep_probability(delta, 0.5, 0.15)
    kept = (draws("della_linear", delta, {"density": 0.5, "rescale": "none"}) != 0).double().mean(0)
    for low, high in ((0.35, 0.45), (0.45, 0.55), (0.55, 0.65)):  # rank bands of the expected probability
        band = (expected >= low) & (expected < high)
        assert float(kept[band].mean()) == pytest.approx(float(expected[band].mean()), abs=0.01)
    assert float(torch.corrcoef(torch.stack([kept.reshape(-1), expected.reshape(-1)]))[0, 1]) > 0.5


def test_della_rescales_as_asked(deltas):
    delta = deltas[1]
    params = {"density": 0.4, "epsilon": 0.2}
    l1 = draws("della_linear", delta, params, seeds=20)  # mergekit's default: L1-norm matching
    assert torch.allclose(l1.abs().sum((1, 2)), torch.full((20,), float(delta.double().abs().sum()), dtype=torch.float64), rtol=1e-6)
    ratio = l1[0][l1[0] != 0] / delta.double()[l1[0] != 0]  # one common factor on the kept entries
    assert float(ratio.max() - ratio.min()) < 1e-5 * float(ratio.mean())
    inverse = draws("della_linear", delta, {**params, "rescale": "inverse"}, seeds=400)  # 1/p: unbiased
    assert float((inverse.mean(0) - delta.double()).norm() / delta.double().norm()) < 0.1
    probs = ref_keep_probability(delta, 0.4, 0.2)
    one = inverse[0]
    torch.testing.assert_close(one[one != 0], (delta.double() / probs)[one != 0], rtol=1e-5, atol=0)


def test_della_combines_like_ties_and_is_reproducible(deltas):
    torch.testing.assert_close(run("della", deltas).double(), ref_sign_merge(torch.stack(deltas).double(), [1.0] * 3), **TOL)
    params = {"density": 0.5}
    assert torch.equal(run("della", deltas, None, params, seed=3), run("della", deltas, None, params, seed=3))
    assert not torch.equal(run("della", deltas, None, params, seed=3), run("della", deltas, None, params, seed=4))
    scaled = run("della_linear", deltas, None, {**params, "lambda": 2.0}, seed=3)
    torch.testing.assert_close(scaled, 2.0 * run("della_linear", deltas, None, params, seed=3))


# ------------------------------------------------------------------ dare rescale options
@pytest.mark.parametrize("name", ["dare_linear", "dare_ties"])
def test_dare_rescale_options_share_the_masks(deltas, name):
    outs = {r: run(name, deltas[:1], [1.0], {"density": 0.3, "rescale": r}, seed=9) for r in ("inverse", "l1", "none")}
    kept = outs["none"] != 0
    assert all(torch.equal(o != 0, kept) for o in outs.values())
    torch.testing.assert_close(outs["none"][kept], deltas[0][kept])
    torch.testing.assert_close(outs["inverse"][kept], deltas[0][kept] / 0.3)
    assert float(outs["l1"].abs().sum()) == pytest.approx(float(deltas[0].abs().sum()), rel=1e-6)
    assert math.isclose(float(kept.double().mean()), 0.3, abs_tol=0.06)
