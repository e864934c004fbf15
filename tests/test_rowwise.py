"""Row-block magnitude merges of LoRA factors (methods.rowwise): the same bits as the dense path,
without the K out x in updates in memory; used by the merger for ties / magnitude_prune on the CPU."""

import pytest
import torch

from seedlora.lowrank import LowRank
from seedlora.methods import get_method, rowwise
from seedlora.methods.sparsify import keep_count, merge_sparsified


def factors(out, inp, rank=8, seed=0, integer=False):
    g = torch.Generator().manual_seed(seed)
    if integer:  # small integers: many equal magnitudes, so ties at the cut are certain
        return LowRank(torch.randint(-3, 4, (out, rank), generator=g).float(),
                       torch.randint(-3, 4, (rank, inp), generator=g).float())
    return LowRank(0.02 * torch.randn(out, rank, generator=g), torch.randn(rank, inp, generator=g))


def dense_path(terms, weights, density, combine, majority_sign="total"):
    """What the merger computed before: materialise each B @ A, then sparsify.merge_sparsified."""
    deltas = [t.B @ t.A for t in terms]
    params = {"density": density, "majority_sign": majority_sign}
    return merge_sparsified(deltas, torch.tensor(weights, dtype=torch.float64), params, None,
                            drop="magnitude", combine=combine).view(terms[0].shape)


def rowwise_merge(terms, weights, density, combine, majority_sign="total"):
    return rowwise.RowwiseMerge(terms, density, [float(w) for w in weights], combine, majority_sign)


CASES = [  # (rows, cols, density, combine, weights, majority_sign, integer)
    (1040, 1100, 0.2, "sign_elect", [1.0, 1.0, 1.0], "total", False),  # > topk.SMALL: bracketed pass
    (1040, 1100, 0.2, "sum", [1 / 3, 1 / 3, 1 / 3], "total", False),
    (1040, 1100, 0.5, "sign_elect", [0.7, -0.4, 1.3], "frequency", False),
    (1040, 1100, 0.3, "sign_elect", [1.0, 1.0, 1.0], "total", True),  # ties at the cut
    (96, 4100, 0.1, "sign_elect", [1.0, 1.0, 1.0], "total", False),  # small module: exact partition
    (2048, 640, 1.0, "sign_elect", [1.0, 1.0, 1.0], "total", False),  # density 1: nothing trimmed
]


@pytest.mark.parametrize("rows, cols, density, combine, weights, majority_sign, integer", CASES)
def test_rowwise_merge_has_the_dense_paths_bits(rows, cols, density, combine, weights, majority_sign, integer):
    terms = [factors(rows, cols, seed=i, integer=integer) for i in range(3)]
    expected = dense_path(terms, weights, density, combine, majority_sign)
    assert torch.equal(rowwise_merge(terms, weights, density, combine, majority_sign).dense(), expected)


def test_each_input_keeps_exactly_the_top_k_even_with_ties_at_the_cut():
    terms = [factors(1040, 1100, seed=i, integer=True) for i in range(3)]
    merge = rowwise_merge(terms, [1.0] * 3, 0.3, "sum")
    k = keep_count(1040 * 1100, 0.3)
    for term, trim in zip(terms, merge.trims):
        flat = (term.B @ term.A).view(-1)
        kept = trim.apply(flat, 0, torch.empty_like(flat))
        assert int(torch.count_nonzero(kept)) == k  # no zeros among the kept: integer products of nonzero rows
        order = torch.sort(flat.abs(), descending=True, stable=True).indices[:k]  # ties: earliest entries
        assert torch.equal(torch.sort(torch.nonzero(kept).squeeze(1)).values, torch.sort(order).values)


def test_an_input_that_does_not_adapt_the_module_contributes_zero():
    terms = [factors(1040, 1100, seed=0), LowRank(torch.zeros(1040, 0), torch.zeros(0, 1100)), factors(1040, 1100, seed=2)]
    expected = dense_path(terms, [1.0] * 3, 0.2, "sign_elect")
    assert torch.equal(rowwise_merge(terms, [1.0] * 3, 0.2, "sign_elect").dense(), expected)


def test_added_block_by_block_to_a_base_it_equals_the_dense_update_added():
    terms = [factors(1040, 1100, seed=i) for i in range(3)]
    merge = rowwise_merge(terms, [1.0] * 3, 0.2, "sign_elect")
    base = torch.randn(1040, 1100, generator=torch.Generator().manual_seed(9))
    expected = base + dense_path(terms, [1.0] * 3, 0.2, "sign_elect")
    step = merge.grid * 3
    fused = base.clone()
    for start in range(0, 1040, step):
        merge.add_to(fused[start : start + step], start)
    assert torch.equal(fused, expected)
    with pytest.raises(ValueError, match="grid"):
        merge.add_to(fused[1:3], 1)


def test_a_missed_bracket_falls_back_to_the_exact_threshold(monkeypatch):
    terms = [factors(1040, 1100, seed=i) for i in range(3)]
    monkeypatch.setattr(rowwise, "bracket_from_sample", lambda sample, n, k: (1e9, 2e9))  # brackets nothing
    assert torch.equal(rowwise_merge(terms, [1.0] * 3, 0.2, "sign_elect").dense(),
                       dense_path(terms, [1.0] * 3, 0.2, "sign_elect"))


def test_odd_row_counts_stay_within_float32_rounding_of_the_dense_path():
    """MKL may round a block of an odd number of rows differently from the whole product (its tail kernel)."""
    terms = [factors(1041, 1100, seed=i) for i in range(3)]
    got = rowwise_merge(terms, [1.0] * 3, 0.2, "sign_elect").dense()
    expected = dense_path(terms, [1.0] * 3, 0.2, "sign_elect")
    assert torch.linalg.vector_norm(got - expected) <= 1e-6 * torch.linalg.vector_norm(expected)


def test_the_row_block_work_runs_on_one_thread_and_restores_the_callers_count():
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        seen = []
        with rowwise.one_thread():
            seen.append(torch.get_num_threads())
        assert seen == [1] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)


def test_only_the_magnitude_trims_have_a_row_block_form():
    assert get_method("ties").merge_rowwise is not None
    assert get_method("magnitude_prune").merge_rowwise is not None
    for name in ("dare_ties", "dare_linear", "selection", "linear", "della", "breadcrumbs_ties"):
        assert get_method(name).merge_rowwise is None, name
