"""The README's "How it compares" correctness claims, re-checked on tiny models on every CI run.

The figures in the README come from eval/compare/ on SmolLM2 and 7B-shaped adapters; these tests
run the same code on a tiny Llama with adapters made by PEFT itself, so the README cannot drift
from what PEFT and seedlora actually compute: PEFT add_weighted_adapter `linear` is not the mean
of the updates (cross terms), `cat` and seedlora `linear` are; PEFT's factor-wise `ties` is not
TIES on the deltas, its `ties_svd` and seedlora's `ties` are. The yardstick (eval.compare.reference)
is itself checked against PEFT's own per-adapter updates.

The mergekit tests use the mergekit venv (eval.compare.mergekit_env; built on first use in about a
minute, .ci/run builds it before the tests) and are skipped with the reason when mergekit cannot be
installed, unless SEEDLORA_REQUIRE_MERGEKIT=1.
"""

from __future__ import annotations

import os

import pytest
import torch

from _adapters import make_adapters, peft_deltas, save_tiny_llama
from eval.compare import peft_linear, peft_ties
from eval.compare.reference import read_factors, updates


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A saved tiny Llama and three PEFT adapters of equal rank on it (PEFT's linear/ties need that)."""
    root = tmp_path_factory.mktemp("compare_claims")
    base = save_tiny_llama(root / "base")
    adapters = make_adapters(root, ranks=(8, 8, 8), targets=("q_proj", "o_proj", "down_proj"))  # all min(out, in) = 32
    return base, adapters, root


def test_reference_updates_are_what_peft_computes(tiny):
    base, adapters, _ = tiny
    factors = [read_factors(a) for a in adapters]
    for i, adapter in enumerate(adapters):
        theirs = peft_deltas(adapter)
        assert set(theirs) == set(factors[i])
        for name, delta in theirs.items():
            ours = updates([factors[i]], name)[0]
            torch.testing.assert_close(ours, delta.double(), rtol=1e-5, atol=1e-6)


def test_peft_linear_is_not_the_mean_but_cat_and_seedlora_are(tiny):
    base, adapters, root = tiny
    torch.manual_seed(0)
    found = peft_linear.compare(base, adapters, root / "linear")
    errors = found["errors"]
    # cross terms B_i A_j: about sqrt(K - 1) = 1.41 of the mean for unrelated random adapters
    assert errors["PEFT linear"].relative > 0.5, errors["PEFT linear"].relative
    assert min(errors["PEFT linear"].per_module.values()) > 0.3
    assert errors["PEFT cat"].relative < 1e-5
    assert errors["seedlora linear"].relative < 1e-5  # `python -m seedlora merge -m linear`, read from disk
    assert found["ranks"] == {"PEFT linear": 8, "PEFT cat": 24, "seedlora linear": 24}


def test_peft_factorwise_ties_is_not_ties_but_ties_svd_and_seedlora_are(tiny):
    base, adapters, root = tiny
    torch.manual_seed(0)
    fw = peft_ties.factorwise(base, adapters)
    assert fw["vs_ties"].relative > 0.3, fw["vs_ties"].relative
    assert fw["vs_mean"].relative > 0.3, fw["vs_mean"].relative
    # rank 32 >= every module's smaller side: the SVD paths are exact, so TIES itself is compared
    dense = peft_ties.dense_paths(base, adapters, 32, root / "ties")
    for label in ("PEFT svd", "PEFT ties_svd", "seedlora ties --rank (API)", "seedlora ties --rank"):
        assert dense["errors"][label].relative < 1e-5, (label, dense["errors"][label].relative)


# ------------------------------------------------------------------ mergekit (own venv)
def _mergekit():
    """The mergekit venv (built on first use, ~1 min); skip with the reason when it cannot be."""
    from eval.compare.mergekit_env import MergekitUnavailable, ensure_mergekit

    try:
        return ensure_mergekit(log=lambda message: None)
    except MergekitUnavailable as exc:
        if os.environ.get("SEEDLORA_REQUIRE_MERGEKIT"):
            raise
        pytest.skip(f"mergekit cannot be installed here: {exc}")


@pytest.mark.mergekit
def test_mergekit_ties_on_fused_models(tiny, tmp_path):
    """float32 inputs: mergekit's TIES is TIES; bf16 fused inputs: quantized deltas, seedlora exact."""
    from eval.compare.common import run_measured, seedlora_merge
    from eval.compare.fused_accuracy import evaluate
    from eval.compare.fusing import fused_inputs
    from eval.compare.mergekit_runs import run_merge

    mk = _mergekit()
    base, adapters, _ = tiny
    _, fused32 = fused_inputs(tmp_path, base, adapters, None)
    run_merge(mk, "ties", base, fused32, tmp_path / "mk32", tmp_path / "mk32.log", 0.2)
    bf16_base, fused16 = fused_inputs(tmp_path, base, adapters, "bfloat16")
    run_merge(mk, "ties", bf16_base, fused16, tmp_path / "mk16", tmp_path / "mk16.log", 0.2)
    run_measured(seedlora_merge(*adapters, "-m", "ties", "--base", bf16_base, "--fuse", "-o", tmp_path / "ours16", "-q"),
                 tmp_path / "ours16.log")
    f32 = evaluate(base, adapters, {"mk": (tmp_path / "mk32", "ties_floor")})["mk"]
    assert f32.error.relative < 1e-5 and f32.changed == 0 and not f32.missing
    b16 = evaluate(bf16_base, adapters, {"mk": (tmp_path / "mk16", "ties_floor"),
                                         "ours": (tmp_path / "ours16", "ties_ceil")})
    assert b16["ours"].beyond == 0 and b16["ours"].changed == 0
    assert b16["mk"].beyond > 0
    assert b16["mk"].error.relative > b16["ours"].error.relative


@pytest.mark.mergekit
def test_mergekit_extract_lora_emits_an_adapter_like_seedlora_ties_rank(tiny, tmp_path):
    from eval.compare import mergekit_extract

    mk = _mergekit()
    base, adapters, _ = tiny
    (tmp_path / "scratch").mkdir()
    runs = mergekit_extract.run_all(mk, base, adapters, 32, tmp_path / "scratch")
    factors = [read_factors(a) for a in adapters]
    for label in ("extract (adapted modules only)", "extract (defaults)", "seedlora ties --rank"):
        rule = "ceil" if "seedlora" in label else "floor"
        found = mergekit_extract.adapter_errors(base, runs[label]["folder"], factors, rule)
        assert found["error"].relative < 1e-5, (label, found["error"].relative)  # rank 32: exact TIES
    defaults = mergekit_extract.adapter_errors(base, runs["extract (defaults)"]["folder"], factors, "floor")
    assert defaults["zero"] > 0  # every linear module extracted, the unadapted ones as zero LoRAs


def test_missing_base_is_a_one_line_error(tmp_path):
    """A comparison that cannot run says why and how to fix it, in one line, exit status 2."""
    import subprocess
    import sys

    from eval.compare.common import REPO

    env = dict(os.environ, HOME=str(tmp_path), PYTHONPATH=str(REPO))  # no ~/.cache/seedlora here
    done = subprocess.run([sys.executable, "-m", "eval.compare.peft_linear", "--inputs", "sample",
                           "--work", str(tmp_path / "work")], cwd=REPO, env=env, capture_output=True, text=True)
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "eval.prepare_smollm2" in done.stderr and "Traceback" not in done.stderr
