"""eval/stats.py and eval/agreement.py against independent computations (scipy, PEFT's own deltas)."""

import math

import numpy as np
import pytest
import torch
from peft import PeftModel

from _adapters import make_adapter, tiny_llama
from eval.agreement import agreement
from eval.stats import Resampler, bootstrap_p, compare, interval, mcnemar_p, metric_draws


def test_mcnemar_equals_scipy_exact_binomial_test():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    for _ in range(20):
        a, b = rng.random(60) < 0.7, rng.random(60) < 0.6
        only_a, only_b = int(np.sum(a & ~b)), int(np.sum(~a & b))
        expected = stats.binomtest(min(only_a, only_b), only_a + only_b, 0.5).pvalue if only_a + only_b else 1.0
        assert mcnemar_p(a, b) == pytest.approx(expected, rel=1e-9)
    assert mcnemar_p([True, False], [True, False]) == 1.0


def test_bootstrap_interval_of_accuracy_matches_the_normal_approximation():
    correct = [True] * 300 + [False] * 200  # p = 0.6, n = 500
    value, draws = metric_draws(Resampler(500, 20_000, seed=1), [{"correct": correct}], "accuracy")
    low, high = interval(draws)
    half = 1.96 * math.sqrt(0.6 * 0.4 / 500)
    assert value == 0.6 and low == pytest.approx(0.6 - half, abs=0.004) and high == pytest.approx(0.6 + half, abs=0.004)


def test_pooled_loss_draws_weight_examples_by_tokens():
    totals, tokens = [2.0, 9.0, 1.0], [1, 3, 1]
    resampler = Resampler(3, 50, seed=2)
    draws = resampler.loss(totals, tokens)
    for counts, draw in zip(resampler.counts, draws):  # each draw: repeat every example `count` times
        picked = [i for i, c in enumerate(counts) for _ in range(int(c))]
        assert draw == pytest.approx(sum(totals[i] for i in picked) / sum(tokens[i] for i in picked))


def test_paired_comparison_of_a_uniform_gain_and_of_identical_models():
    rng = np.random.default_rng(3)
    losses = rng.uniform(0.5, 2.0, 200)
    model = {"totals": losses, "tokens": np.ones(200), "correct": losses < 1.2}
    better = {"totals": losses - 0.05, "tokens": np.ones(200), "correct": losses < 1.3}
    resampler = Resampler(200, 2000, seed=0)
    gain = compare(resampler, [better], [model], "loss")
    assert gain["diff"] == pytest.approx(-0.05) and gain["ci"] == pytest.approx((-0.05, -0.05))
    assert gain["p_bootstrap"] == 1 / 2000  # every draw on one side: the smallest p the draws can show
    same = compare(resampler, [model], [model], "accuracy")
    assert same["diff"] == 0 and same["p_bootstrap"] == 1.0 and same["p_mcnemar"] == 1.0
    assert bootstrap_p(np.array([-1.0, 1.0, 2.0, 3.0])) == 0.5
    mean = compare(resampler, [better], [model, better], "loss")  # a row averaging two models
    assert mean["diff"] == pytest.approx(-0.025)


def peft_delta(folder, name):
    """The update PEFT itself applies to `name` (lora layer's get_delta_weight)."""
    model = PeftModel.from_pretrained(tiny_llama(0), folder)
    return model.get_submodule(name).get_delta_weight("default").double()


def test_agreement_equals_the_dense_formulas_on_peft_deltas(tmp_path):
    folders = [make_adapter(tmp_path / f"a{i}", seed=i + 1, r=4, alpha=8) for i in range(3)]
    result = agreement(folders)
    names = ["base_model.model.model.layers.0.self_attn.q_proj", "base_model.model.model.layers.0.self_attn.v_proj",
             "base_model.model.model.layers.1.self_attn.q_proj", "base_model.model.model.layers.1.self_attn.v_proj"]
    cosines, factors = [], []
    for name in names:
        deltas = [peft_delta(f, name).reshape(-1) for f in folders]
        cosines.append(np.mean([float(torch.nn.functional.cosine_similarity(deltas[i], deltas[j], dim=0))
                                for i in range(3) for j in range(i + 1, 3)]))
        factors.append(np.mean([float(d.std(unbiased=False)) for d in deltas]) / float((sum(deltas) / 3).std(unbiased=False)))
    assert result["modules"] == 4 and result["k"] == 3
    assert result["cosine_mean"] == pytest.approx(np.mean(cosines), abs=1e-6)  # PEFT's deltas are float32
    assert result["a_mean"] == pytest.approx(np.mean(factors), rel=1e-6)
    assert 1.3 < result["a_mean"] < 2.0  # independent random updates: a near sqrt(3) = 1.73
    same = agreement([folders[0], folders[0]])
    assert same["cosine_mean"] == pytest.approx(1.0) and same["a_mean"] == pytest.approx(1.0)
