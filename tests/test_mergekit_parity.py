"""seedlora's fused output against mergekit's own merges of the same models.

Each input adapter is fused into a tiny Llama base with PEFT (merge_and_unload); mergekit 0.1.5
(its own venv, tests/_mergekit.py) merges those full models; seedlora fuses the adapters into the
base (`fuse_adapters`, what `seedlora merge … --base B --fuse` runs). Deterministic methods must
agree to float32 rounding; where we differ on purpose (README, each method's docstring) the test
pins the difference down: TIES counts (⌈ρn⌉ vs ⌊ρn⌋), slerp of weights vs of updates. Random methods
(DARE, DELLA) draw other masks than mergekit's global RNG: they agree exactly at density 1, exactly
given mergekit's own masks (read back from its output with one input), and in keep rates.
Skipped, with the reason as a warning, when mergekit cannot be installed; SEEDLORA_REQUIRE_MERGEKIT=1
turns that into a failure.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file, save_file

from _adapters import make_adapter, read_model_tensors, save_tiny_llama, tiny_llama
from _mergekit import MergekitUnavailable, mergekit_python, run_mergekit
from seedlora import fuse_adapters
from seedlora.methods.masking import masked

RANKS, SHARED = (4, 6, 10), 2
TARGETS = [f"model.layers.{i}.self_attn.{m}_proj.weight" for i in (0, 1) for m in ("q", "v")]
SEEDS = (1, 2, 3, 4)  # mergekit runs of each random method with one input
REL = 1e-5

# name: (our method, our params, our weights, mergekit method, mergekit params, per-model params, base kind)
CASES = {
    "linear": ("linear", {}, None, "linear", {}, {"weight": 1.0}, None),
    "model_stock": ("model_stock", {}, None, "model_stock", {}, {}, "base"),
    "model_stock_filter_wise": ("model_stock", {"filter_wise": 1}, None, "model_stock", {"filter_wise": True}, {}, "base"),
    "ties": ("ties", {"density": 0.5}, None, "ties", {}, {"weight": 1.0, "density": 0.5}, "base"),
    "dare_linear": ("dare_linear", {"density": 1.0}, None, "dare_linear", {}, {"weight": 1 / 3, "density": 1.0}, "base"),
    "dare_ties": ("dare_ties", {"density": 1.0}, None, "dare_ties", {"normalize": True}, {"weight": 1.0, "density": 1.0}, "base"),
    "della": ("della", {"density": 1.0}, None, "della", {}, {"weight": 1.0, "density": 1.0}, "base"),
    "della_linear": ("della_linear", {"density": 1.0}, None, "della_linear", {}, {"weight": 1 / 3, "density": 1.0}, "base"),
    "breadcrumbs": ("breadcrumbs", {"density": 0.5, "gamma": 0.05}, None, "breadcrumbs", {},
                    {"weight": 1 / 3, "density": 0.5, "gamma": 0.05}, "base"),
    "breadcrumbs_ties": ("breadcrumbs_ties", {"density": 0.5, "gamma": 0.05}, None, "breadcrumbs_ties",
                         {"normalize": True}, {"weight": 1.0, "density": 0.5, "gamma": 0.05}, "base"),
    # mergekit's multislerp with a base model fails on tensors no input changed (their weighted sum is 0);
    # without one it interpolates whole weights, which are the updates when the adapted weights are 0
    "multislerp": ("multislerp", {}, [1.0, 2.0, 3.0], "multislerp", {}, "weights", "zero"),
}


def correlated_adapter(folder: Path, seed: int, r: int) -> Path:
    """A PEFT adapter whose first SHARED ranks are the same for every input (seeds of one task)."""
    make_adapter(folder, seed=seed, r=r, alpha=2 * r)
    tensors = load_file(str(folder / "adapter_model.safetensors"))
    shared = torch.Generator().manual_seed(99)  # same draws for every adapter: same modules, same shapes
    for key in sorted(tensors):
        if "lora_A" in key:  # r x in: the first SHARED rows
            tensors[key][:SHARED] = 0.2 * torch.randn(SHARED, tensors[key].shape[1], generator=shared)
        else:  # out x r: the first SHARED columns
            tensors[key][:, :SHARED] = 0.2 * torch.randn(tensors[key].shape[0], SHARED, generator=shared)
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    return folder


def fused_with_peft(adapter: Path, folder: Path, zero_targets: bool = False) -> Path:
    model = tiny_llama(0)
    if zero_targets:
        _zero(model)
    PeftModel.from_pretrained(model, str(adapter)).merge_and_unload().save_pretrained(str(folder))
    return folder


def _zero(model) -> None:
    with torch.no_grad():
        for key, param in model.named_parameters():
            if key in TARGETS:
                param.zero_()


def mergekit_job(root: Path, name: str, method: str, params: dict, per_model, base, models, seed=None) -> dict:
    weights = [1.0, 2.0, 3.0] if per_model == "weights" else None
    entries = [{"model": str(m), "parameters": ({"weight": weights[i]} if weights else dict(per_model))}
               for i, m in enumerate(models)]
    config = {"merge_method": method, "dtype": "float32", "models": entries, "parameters": params}
    if base is not None:
        config["base_model"] = str(base)
    return {"config": config, "out": str(root / "mergekit" / name), "seed": seed}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    try:
        python = mergekit_python()
    except MergekitUnavailable as exc:
        if os.environ.get("SEEDLORA_REQUIRE_MERGEKIT") == "1":
            pytest.fail(f"mergekit is required (SEEDLORA_REQUIRE_MERGEKIT=1) but unavailable: {exc}")
        warnings.warn(f"mergekit parity tests skipped: {exc}")
        pytest.skip(f"mergekit cannot be installed here: {exc}")
    root = tmp_path_factory.mktemp("mergekit")
    base = save_tiny_llama(root / "base")
    zero_model = tiny_llama(0)
    _zero(zero_model)
    zero_model.save_pretrained(str(root / "zero_base"))
    adapters = [correlated_adapter(root / f"adapter{i}", 10 + i, r) for i, r in enumerate(RANKS)]
    models = [fused_with_peft(a, root / f"model{i}") for i, a in enumerate(adapters)]
    zeros = [fused_with_peft(a, root / f"zero{i}", zero_targets=True) for i, a in enumerate(adapters)]
    inputs = {None: (None, models), "base": (base, models), "zero": (None, zeros)}
    jobs = [mergekit_job(root, name, case[3], case[4], case[5], *inputs[case[6]]) for name, case in CASES.items()]
    jobs.append(mergekit_job(root, "ties_0.3", "ties", {}, {"weight": 1.0, "density": 0.3}, base, models))
    jobs.append(mergekit_job(root, "slerp_zero", "slerp", {"t": 0.3}, {}, zeros[0], zeros[:2]))
    jobs.append(mergekit_job(root, "slerp_weights", "slerp", {"t": 0.3}, {}, models[0], models[:2]))
    for seed in SEEDS:
        for method, extra in (("dare_linear", {}), ("della_linear", {"epsilon": 0.15})):
            per_model = {"weight": 1.0, "density": 0.5, **extra}
            jobs.append(mergekit_job(root, f"{method}_{seed}", method, {}, per_model, base, models[:1], seed=seed))
    run_mergekit(python, jobs, root)
    return {"root": root, "base": base, "zero_base": root / "zero_base", "adapters": adapters, "models": models}


def mergekit_out(world, name: str) -> dict:
    return read_model_tensors(world["root"] / "mergekit" / name)


def ours(world, name: str, method: str, params=None, weights=None, adapters=None, base=None, seed=0):
    out = world["root"] / "ours" / name
    report = fuse_adapters(adapters or world["adapters"], base or world["base"], out, method=method, params=params,
                           weights=weights, seed=seed, overwrite=True)
    return read_model_tensors(out), report


def relative(x: torch.Tensor, y: torch.Tensor, reference: torch.Tensor) -> float:
    return float((x.double() - y.double()).norm() / reference.double().norm())


@pytest.mark.parametrize("name", list(CASES))
def test_deterministic_methods_equal_mergekit(world, name):
    method, params, weights = CASES[name][:3]
    base_dir = world["zero_base"] if CASES[name][6] == "zero" else world["base"]
    mine, report = ours(world, name, method, params, weights, base=base_dir)
    theirs, base = mergekit_out(world, name), read_model_tensors(base_dir)
    negative_rows = 0
    for key in TARGETS:
        rows = positive_rows(world, key) if params.get("filter_wise") else slice(None)
        assert relative(mine[key][rows], theirs[key][rows], theirs[key][rows] - base[key][rows]) < REL, key
        assert float((theirs[key] - base[key]).abs().max()) > 0, key  # a real update was compared
        if params.get("filter_wise"):  # rows with mean cosθ ≤ 0: t = 0 (the base) here, t < 0 in mergekit
            negative = ~positive_rows(world, key)
            assert torch.equal(mine[key][negative], base[key][negative]), key
            negative_rows += int(negative.sum())
    assert negative_rows > 0 or not params.get("filter_wise")  # the difference was exercised
    for key in set(base) - set(TARGETS):  # untouched weights: mergekit re-merges equal tensors
        torch.testing.assert_close(mine[key], theirs[key], rtol=1e-6, atol=1e-7)
    if method == "model_stock":  # correlated seeds: 0 < t < 1 everywhere (where mergekit and we agree)
        assert all(0 < stats["t"] < 1 for stats in report.module_stats.values())


def positive_rows(world, key: str) -> torch.Tensor:
    """Rows of the weight where the inputs' updates have a positive mean pairwise cosine."""
    base = read_model_tensors(world["base"])[key].double()
    taus = [read_model_tensors(m)[key].double() - base for m in world["models"]]
    pairs = [(0, 1), (0, 2), (1, 2)]
    return sum(torch.nn.functional.cosine_similarity(taus[i], taus[j], dim=1) for i, j in pairs) > 0


def test_ties_with_a_fractional_count_differs_in_at_most_one_entry_per_input(world):
    mine, _ = ours(world, "ties_0.3", "ties", {"density": 0.3})
    theirs, base = mergekit_out(world, "ties_0.3"), read_model_tensors(world["base"])
    for key in TARGETS:  # 0.3·1024 = 307.2: we keep 308 entries of each input, mergekit 307
        update = (theirs[key] - base[key]).abs().max()
        differing = int(((mine[key] - theirs[key]).abs() > 1e-5 * update).sum())
        assert differing <= len(RANKS), (key, differing)


def test_slerp_of_updates_equals_mergekit_on_zero_weights_and_differs_from_its_slerp_of_weights(world):
    pair = world["adapters"][:2]
    mine, report = ours(world, "slerp_zero", "slerp", {"t": 0.3}, adapters=pair, base=world["zero_base"])
    theirs = mergekit_out(world, "slerp_zero")
    for key in TARGETS:  # the adapted weights are zero: mergekit's slerp of weights is slerp(τ_1, τ_2)
        assert relative(mine[key], theirs[key], theirs[key]) < REL, key
    assert all(-1 < stats["cos"] < 1 for stats in report.module_stats.values())
    mine, _ = ours(world, "slerp_weights", "slerp", {"t": 0.3}, adapters=pair)
    theirs, base = mergekit_out(world, "slerp_weights"), read_model_tensors(world["base"])
    for key in TARGETS:  # W + slerp(τ_1, τ_2) is not slerp(W + τ_1, W + τ_2): documented difference
        assert relative(mine[key], theirs[key], mine[key] - base[key]) > 1e-3, key


def rank_band(tau: torch.Tensor) -> torch.Tensor:
    """0 / 1 / 2 for the lower / middle / upper third of each row's magnitude ranks."""
    ranks = tau.abs().argsort(dim=1).argsort(dim=1).double() / (tau.shape[1] - 1)
    return (ranks >= 1 / 3).long() + (ranks >= 2 / 3).long()


@pytest.mark.parametrize("method", ["dare_linear", "della_linear"])
def test_random_methods_equal_mergekit_given_its_masks_and_keep_alike(world, method):
    base, model = read_model_tensors(world["base"]), read_model_tensors(world["models"][0])
    expected = {"dare_linear": [0.5, 0.5, 0.5], "della_linear": [0.4, 0.5, 0.6]}[method]  # mean p per rank band
    rates = {"mergekit": torch.zeros(3), "ours": torch.zeros(3)}
    for seed in SEEDS:
        theirs = mergekit_out(world, f"{method}_{seed}")
        params = {"density": 0.5, "rescale": "l1"} | ({"epsilon": 0.15} if method == "della_linear" else {})
        mine, _ = ours(world, f"{method}_{seed}", method, params, adapters=world["adapters"][:1], seed=seed)
        for key in TARGETS:
            tau = model[key].double() - base[key].double()  # the task vector mergekit sees
            kept = theirs[key] != base[key]
            # mergekit's values are its L1 rule applied to its own mask: our rule, same mask
            assert relative(theirs[key] - base[key], masked(tau, kept, "l1"), tau) < REL, key
            bands = rank_band(tau)
            for label, out in (("mergekit", theirs[key]), ("ours", mine[key])):
                hits = (out != base[key]).double()
                rates[label] += torch.stack([hits[bands == b].mean() for b in range(3)]).float() / (len(SEEDS) * len(TARGETS))
    for label, rate in rates.items():
        assert rate.tolist() == pytest.approx(expected, abs=0.04), label
