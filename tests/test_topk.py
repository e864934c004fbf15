"""Top-k by magnitude without a full sort (methods.topk) and the blocked TIES/DARE kernels
(methods.sparsify): exact against a full stable sort and against the whole-tensor formulas,
including the bracketed path, its fallback, ties at the cut, float64 and the torch path."""

import pytest
import torch

from seedlora.methods import sparsify, topk
from seedlora.methods.sparsify import (
    combine_trimmed, keep_count, magnitude_keep_mask, magnitude_trim, merge_masked, merge_sparsified,
    random_keep_mask, sign_elect_merge,
)


def ref_mask(x, k):
    """The top-k magnitudes by a full STABLE sort: ties at the cut go to the earliest entries."""
    order = torch.sort(x.reshape(-1).abs(), descending=True, stable=True).indices
    mask = torch.zeros(x.numel(), dtype=torch.bool)
    mask[order[:k]] = True
    return mask.view(x.shape)


def low_rank(out, inp, rank=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (0.02 * torch.randn(out, rank, generator=g)) @ torch.randn(rank, inp, generator=g)


@pytest.fixture(scope="module")
def big():
    """1.3M entries: above topk.SMALL, so the sampled bracket and the blocked pass run."""
    return low_rank(640, 2048)


@pytest.mark.parametrize("density", [0.01, 0.2, 0.5, 0.93])
def test_bracketed_threshold_is_the_exact_kth_largest(big, density):
    k = keep_count(big.numel(), density)
    found = topk.kth_largest_magnitude(big, k)
    ordered = big.reshape(-1).abs().sort(descending=True).values
    assert found.value == float(ordered[k - 1])
    assert found.above == int((ordered > ordered[k - 1]).sum())
    assert found.tied == int((ordered == ordered[k - 1]).sum())
    assert torch.equal(magnitude_keep_mask(big, density), ref_mask(big, k))


def test_a_missed_bracket_falls_back_to_the_exact_partition(big, monkeypatch):
    k = keep_count(big.numel(), 0.2)
    monkeypatch.setattr(topk, "_bracket", lambda values, k: (1e9, 2e9))  # brackets nothing
    assert topk.kth_largest_magnitude(big, k) == topk._exact(big.reshape(-1).abs().numpy(), k, big.numel())
    assert torch.equal(magnitude_keep_mask(big, 0.2), ref_mask(big, k))


def test_aliasing_layout_still_exact():
    """Rows whose scale alternates with the sampling stride's period: the result is still exact."""
    x = torch.ones(1200, 1024)
    x[:, ::2] = 1e-3
    x += torch.arange(x.numel(), dtype=torch.float32).view(x.shape) * 1e-9
    k = keep_count(x.numel(), 0.3)
    assert torch.equal(magnitude_keep_mask(x, 0.3), ref_mask(x, k))


@pytest.mark.parametrize("shape", [(7, 5), (300, 4000)])
def test_ties_at_the_cut_keep_the_earliest_entries(shape):
    """Integer magnitudes: many equal values at the threshold; exactly k kept, earliest ties first."""
    g = torch.Generator().manual_seed(3)
    x = torch.randint(-6, 7, shape, generator=g).float()
    for density in (0.1, 0.37, 0.8):
        k = keep_count(x.numel(), density)
        mask = magnitude_keep_mask(x, density)
        assert int(mask.sum()) == k
        assert torch.equal(mask, ref_mask(x, k))
        trim = magnitude_trim(x, density)
        got = torch.empty(x.numel())
        assert torch.equal(trim.block(0, x.numel(), got), (x * ref_mask(x, k)).reshape(-1))


def test_float64_and_the_torch_path_agree_with_the_sort(big):
    k = keep_count(big.numel(), 0.2)
    wide = big.double()
    assert torch.equal(magnitude_keep_mask(wide, 0.2), ref_mask(wide, k))
    found = topk._threshold_torch(big.reshape(-1), k)  # what CUDA tensors use, run on CPU tensors
    assert found == topk.kth_largest_magnitude(big, k)


def test_hardshrink_level_is_exactly_greater_or_equal():
    t = topk.Threshold(value=0.5, above=0, tied=1, k=1)
    level = topk.shrink_level(t, torch.float32)
    below = float(torch.nextafter(torch.tensor(0.5), torch.tensor(0.0)))  # the float32 just below 0.5
    x = torch.tensor([0.5, -0.5, below, -below, 0.6], dtype=torch.float32)
    assert torch.nn.functional.hardshrink(x, level).tolist() == [0.5, -0.5, 0.0, 0.0, pytest.approx(0.6)]


def old_sparsified(deltas, weights, masks, rescale, combine, majority_sign):
    """The whole-tensor formulas the blocked kernels replace (main before issue 11)."""
    sparse = [d.float() * m for d, m in zip(deltas, masks)]
    if rescale is not None:
        sparse = [s.div_(rescale) for s in sparse]
    if combine == "sum":
        out = torch.zeros_like(sparse[0])
        for s, w in zip(sparse, weights):
            out.add_(s, alpha=float(w))
        return out
    score = torch.zeros_like(sparse[0])
    for s in sparse:
        score.add_(s if majority_sign == "total" else s.sign())
    elected = torch.where(score >= 0, 1.0, -1.0)
    total, count = torch.zeros_like(score), torch.zeros_like(score)
    for s, w in zip(sparse, weights):
        agree = s.sign() == elected
        total.add_(torch.where(agree, s, 0.0), alpha=float(w))
        count.add_(agree.float())
    return total.div_(count.clamp_(min=1.0))


def same_bits(a, b):
    return torch.equal(a.contiguous().view(torch.int32), b.contiguous().view(torch.int32))


@pytest.mark.parametrize("majority_sign", ["total", "frequency"])
@pytest.mark.parametrize("weights", [[1.0, 1.0, 1.0], [0.7, -1.3, 0.4]])
def test_blocked_kernels_are_bit_identical_to_the_whole_tensor_formulas(majority_sign, weights, monkeypatch):
    monkeypatch.setattr(sparsify, "CPU_BLOCK", 1000)  # many blocks and a ragged last one
    deltas = [low_rank(60, 77, rank=r, seed=r) for r in (2, 4, 8)]
    deltas[1][:5] = 0.0  # rows no input changes: zeros, and the -0 of a negative election
    w = torch.tensor(weights, dtype=torch.float64)
    g = torch.Generator().manual_seed(1)
    masks = [random_keep_mask(d.shape, 0.4, g) for d in deltas]
    for combine, rescale in (("sign_elect", None), ("sign_elect", 0.4), ("sum", 0.4), ("sum", None)):
        ours = merge_masked(deltas, w, masks, rescale, combine, majority_sign)
        assert same_bits(ours, old_sparsified(deltas, w, masks, rescale, combine, majority_sign)), (combine, rescale)
    trimmed = [magnitude_keep_mask(d, 0.3) for d in deltas]
    ours = merge_sparsified(deltas, w, {"density": 0.3, "majority_sign": majority_sign}, g, drop="magnitude",
                            combine="sign_elect")
    assert same_bits(ours, old_sparsified(deltas, w, trimmed, None, "sign_elect", majority_sign))
    sparse = [d * m for d, m in zip(deltas, trimmed)]
    assert same_bits(sign_elect_merge(sparse, weights, majority_sign),
                     old_sparsified(sparse, w, [torch.ones_like(m) for m in trimmed], None, "sign_elect", majority_sign))


def test_random_masks_are_drawn_in_chunks_exactly_as_one_draw(monkeypatch):
    monkeypatch.setattr(sparsify, "RANDOM_CHUNK", 999)
    drawn = random_keep_mask((123, 45), 0.3, torch.Generator().manual_seed(9))
    assert torch.equal(drawn, torch.rand((123, 45), generator=torch.Generator().manual_seed(9)) < 0.3)


def test_combine_runs_on_explicit_cpu_device_tensors():
    """The device path (large blocks, torch threshold) on CPU tensors gives the same bits."""
    deltas = [low_rank(40, 50, seed=s) for s in range(3)]
    trims = [magnitude_trim(d, 0.2) for d in deltas]
    small = combine_trimmed(trims, [1.0] * 3, "sign_elect")
    big_blocks = sparsify.DEVICE_BLOCK
    try:
        sparsify.CPU_BLOCK, saved = big_blocks, sparsify.CPU_BLOCK
        assert same_bits(combine_trimmed(trims, [1.0] * 3, "sign_elect"), small)
    finally:
        sparsify.CPU_BLOCK = saved
