"""The PEFT compatibility matrix: every feature case × {adapter, fused, PeftModel} output × {linear, seedlora}.

Each case's adapters are made by PEFT itself (tests/_peft_cases.py). The judge is PEFT too: what
`layer.merge()` does to the base weights (and biases) for each input is that input's update; the
expected merge applies the method's formula to those updates (a module an input does not adapt is
a zero update; a LoRA bias is its own tensor; modules_to_save are a soup for linear and deltas from
the base otherwise). The output is then loaded the way a user would (PEFT for adapters,
transformers for fused models, the PeftModel itself) and its effects compared: relative error
< 1e-4 in float32.
"""

from __future__ import annotations

import pytest
import torch
from peft import PeftModel

from _peft_cases import (base_tensors, build_case, gpt2_config, layer_effects, llama_config, load_base, peft_effects,
                         seq_cls_config)
from seedlora import fuse_adapters, merge_adapters, merge_peft_adapters
from seedlora.errors import UnsupportedFeatureError
from seedlora.sources.adapter_folder import adapter_folder

QV = ["q_proj", "v_proj"]
CASES = {
    "embedding_targets": (llama_config(), [dict(target_modules=["embed_tokens", *QV]), dict(target_modules=["embed_tokens", *QV], r=2)]),
    "dora": (llama_config(), [dict(target_modules=QV, use_dora=True), dict(target_modules=QV, use_dora=True, r=2)]),
    "modules_to_save": (llama_config(), [dict(target_modules=QV, modules_to_save=["lm_head"]), dict(target_modules=QV, modules_to_save=["lm_head"])]),
    "differing_targets": (llama_config(), [dict(target_modules=QV), dict(target_modules=["q_proj", "k_proj"]),
                                           dict(target_modules=["v_proj"], layers_to_transform=[1])]),
    "lora_bias": (llama_config(bias=True), [dict(target_modules=QV, lora_bias=True), dict(target_modules=QV, lora_bias=True, r=2)]),
    "named_subfolder": (llama_config(), [dict(target_modules=QV, adapter_name="seed_a"), dict(target_modules=QV, adapter_name="seed_b")]),
    "tied_lm_head": (llama_config(tied=True), [dict(target_modules=["lm_head", "q_proj"]), dict(target_modules=["lm_head", "q_proj"], r=2)]),
    "tied_embedding": (llama_config(tied=True), [dict(target_modules=["embed_tokens", "v_proj"]), dict(target_modules=["embed_tokens", "v_proj"])]),
    "tied_saved_embedding": (llama_config(tied=True), [dict(target_modules=["q_proj"], modules_to_save=["embed_tokens"]),
                                                       dict(target_modules=["q_proj"], modules_to_save=["embed_tokens"])]),
    "tied_saved_embedding_ensure_tying": (llama_config(tied=True), [
        dict(target_modules=["q_proj"], modules_to_save=["embed_tokens"], ensure_weight_tying=True),
        dict(target_modules=["q_proj"], modules_to_save=["embed_tokens"], ensure_weight_tying=True)]),
    "seq_cls_score_head": (seq_cls_config(), [dict(target_modules=QV, task_type="SEQ_CLS"), dict(target_modules=QV, task_type="SEQ_CLS", r=2)]),
    "gpt2_conv1d": (gpt2_config(), [dict(target_modules=["c_attn", "c_proj"], fan_in_fan_out=True), dict(target_modules=["c_attn", "c_proj"], fan_in_fan_out=True, r=2)]),
    "patterns_rslora_dtypes": (llama_config(), [
        dict(target_modules=[*QV, "down_proj"], rank_pattern={"v_proj": 2}, alpha_pattern={"down_proj": 3}, use_rslora=True),
        dict(target_modules=[*QV, "down_proj"], dtype=torch.bfloat16)]),
    "all_linear": (llama_config(), [dict(target_modules="all-linear"), dict(target_modules="all-linear", r=2)]),
    "regex_targets": (llama_config(), [dict(target_modules=r".*\.(q|v)_proj"), dict(target_modules=r".*\.(q|v)_proj")]),
}
METHODS = ["linear", "seedlora"]
FULL_RANK = 64  # at least min(out, in) of every module: a plain-LoRA copy of a dense (DoRA) merge is exact


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    root = tmp_path_factory.mktemp("matrix")
    return {name: build_case(root, name, config, specs) for name, (config, specs) in CASES.items()}


# ------------------------------------------------------------------ the method formulas on PEFT's updates
def seedlora_formula(values: list) -> torch.Tensor:
    """SeedLoRA eq. 4-5 on float64 tensors: average, then match the inputs' mean and std."""
    avg = sum(values) / len(values)
    mu_hat = sum(v.mean() for v in values) / len(values)
    sigma_hat = sum(v.std(unbiased=False) for v in values) / len(values)
    sigma = avg.std(unbiased=False)
    return torch.zeros_like(avg) if sigma == 0 else sigma_hat * (avg - avg.mean()) / sigma + mu_hat


def expected_effects(inputs: list, method: str, base: dict) -> dict:
    """The method's merge of each tensor's per-input changes (absent = zero change)."""
    expected = {}
    for key in sorted(set().union(*inputs)):
        if key.startswith("saved:"):
            base_value = base[key.removeprefix("saved:")]
            values = [e.get(key, base_value) for e in inputs]
            if method == "linear":
                expected[key] = sum(values) / len(values)
            else:
                expected[key] = base_value + seedlora_formula([v - base_value for v in values])
            continue
        shape = next(e[key].shape for e in inputs if key in e)
        values = [e.get(key, torch.zeros(shape, dtype=torch.float64)) for e in inputs]
        expected[key] = sum(values) / len(values) if method == "linear" else seedlora_formula(values)
    return expected


def assert_effects_match(got: dict, expected: dict, where: str) -> None:
    missing = sorted(k for k in expected if k not in got and expected[k].abs().max() > 0)
    assert not missing, f"{where}: output lacks {missing}"
    extra = [k for k in got if k not in expected and got[k].abs().max() > 1e-6]
    assert not extra, f"{where}: output changes {extra}, which no input changes"
    num = sum(float((got[k] - expected[k]).square().sum()) for k in expected if k in got)
    den = sum(float(expected[k].square().sum()) for k in expected)
    assert (num / den) ** 0.5 < 1e-4, f"{where}: relative error {(num / den) ** 0.5:.3e}"
    for key, value in expected.items():
        if key in got:
            err = float((got[key] - value).norm() / max(float(value.norm()), 1e-12))
            assert err < 1e-4, f"{where}: {key} relative error {err:.3e}"


def input_effects(case) -> list:
    return [peft_effects(case.base, adapter_folder(a)) for a in case.adapters]


def needs_rank(case) -> dict:
    return {"rank": FULL_RANK} if case.name == "dora" else {}


# ------------------------------------------------------------------ the three outputs
def fused_effects(folder, base: dict) -> dict:
    """The fused model's change to each base tensor (transformers loads it; tied weights resolved)."""
    fused = base_tensors(folder)
    effects = {}
    for name, value in fused.items():
        if name not in base:
            continue
        effects[name] = value - base[name]
    return effects


def saved_as_full(effects: dict, expected: dict, base: dict) -> dict:
    """Fused models hold modules_to_save as full tensors: compare them as such."""
    for key in [k for k in expected if k.startswith("saved:")]:
        name = key.removeprefix("saved:")
        effects[key] = effects.pop(name) + base[name]
    return effects


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("case_name", sorted(CASES))
def test_adapter_output_loads_in_peft_as_the_merged_update(cases, tmp_path, case_name, method):
    case = cases[case_name]
    base = base_tensors(case.base)
    expected = expected_effects(input_effects(case), method, base)
    out = tmp_path / "out"
    extra = needs_rank(case)
    saves_modules = any(spec.get("modules_to_save") or spec.get("task_type") == "SEQ_CLS" for spec in case.specs)
    if case_name == "dora" or (saves_modules and method != "linear"):
        extra["base"] = case.base  # DoRA updates and delta-merged modules_to_save need the base weights
    report = merge_adapters(case.adapters, out, method=method, **extra)
    assert_effects_match(peft_effects(case.base, out), expected, f"{case_name}/{method}/adapter")
    assert report.lossless and report.sink == "adapter"


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("case_name", sorted(CASES))
def test_fused_output_loads_in_transformers_as_base_plus_merged_update(cases, tmp_path, case_name, method):
    case = cases[case_name]
    base = base_tensors(case.base)
    expected = expected_effects(input_effects(case), method, base)
    report = fuse_adapters(case.adapters, case.base, tmp_path / "fused", method=method)
    got = saved_as_full(fused_effects(tmp_path / "fused", base), expected, base)
    if case_name in ("tied_lm_head", "tied_embedding"):  # the head is written on its own, untied
        assert not load_base(tmp_path / "fused").config.tie_word_embeddings
    assert_effects_match(got, expected, f"{case_name}/{method}/fused")
    assert report.sink == "fused" and report.tensors_merged > 0


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("case_name", sorted(CASES))
def test_peft_model_output_is_the_merged_update(cases, case_name, method):
    if case_name == "tied_saved_embedding_ensure_tying":
        pytest.skip("PEFT 0.21's load_adapter does not add a second adapter to the tied head's ModulesToSaveWrapper "
                    "(ensure_weight_tying), so in one PeftModel that adapter's head is the base's: not the folder's update")
    case = cases[case_name]
    base = base_tensors(case.base)
    expected = expected_effects(input_effects(case), method, base)
    folders = [adapter_folder(a) for a in case.adapters]
    model = PeftModel.from_pretrained(load_base(case.base), str(folders[0]), adapter_name="in0")
    for i, folder in enumerate(folders[1:], start=1):
        model.load_adapter(str(folder), adapter_name=f"in{i}")
    names = [f"in{i}" for i in range(len(folders))]
    report = merge_peft_adapters(model, names, "merged", method=method, **needs_rank(case))
    assert_effects_match(layer_effects(model, "merged"), expected, f"{case_name}/{method}/peft_model")
    assert report.sink == "peft_model"


# ------------------------------------------------------------------ what each feature also promises
def test_dora_adapter_output_needs_fuse_or_an_explicit_rank(cases, tmp_path):
    case = cases["dora"]
    with pytest.raises(UnsupportedFeatureError, match="--fuse"):
        merge_adapters(case.adapters, tmp_path / "out", base=case.base)
    assert not (tmp_path / "out").exists()
    report = merge_adapters(case.adapters, tmp_path / "r4", base=case.base, rank=4)
    assert report.rank == 4 and 0 < report.energy_kept < 1 and not report.lossless


def test_dora_without_base_says_to_pass_it(cases, tmp_path):
    with pytest.raises(UnsupportedFeatureError, match="--base"):
        merge_adapters(cases["dora"].adapters, tmp_path / "out", rank=8)


def test_embedding_base_copy_is_carried_into_the_output(cases, tmp_path):
    from safetensors import safe_open

    merge_adapters(cases["embedding_targets"].adapters, tmp_path / "out")
    with safe_open(str(tmp_path / "out" / "adapter_model.safetensors"), "pt") as handle:
        keys = set(handle.keys())
    assert "base_model.model.model.embed_tokens.base_layer.weight" in keys
    assert "base_model.model.model.embed_tokens.lora_embedding_A" in keys


def test_differing_targets_are_reported_and_strict_refuses(cases, tmp_path):
    from seedlora.errors import IncompatibleInputsError

    case = cases["differing_targets"]
    report = merge_adapters(case.adapters, tmp_path / "out")
    assert any("not adapted by every input" in w for w in report.warnings)
    with pytest.raises(IncompatibleInputsError, match="--strict"):
        merge_adapters(case.adapters, tmp_path / "strict", strict=True)
    assert not (tmp_path / "strict").exists()


def test_modules_to_save_delta_methods_need_the_base(cases, tmp_path):
    from seedlora.errors import IncompatibleInputsError

    with pytest.raises(IncompatibleInputsError, match="--base"):
        merge_adapters(cases["modules_to_save"].adapters, tmp_path / "out", method="seedlora")


# ------------------------------------------------------------------ the CLI, as a user types it
@pytest.mark.parametrize("case_name, options", [
    ("embedding_targets", []), ("dora", ["--fuse"]), ("modules_to_save", []), ("differing_targets", []),
    ("lora_bias", []), ("named_subfolder", []),
])
def test_cli_merges_each_feature_and_peft_loads_the_average_of_the_updates(cases, tmp_path, case_name, options):
    import subprocess
    import sys

    case = cases[case_name]
    base = base_tensors(case.base)
    expected = expected_effects(input_effects(case), "linear", base)
    out = tmp_path / "out"
    argv = [sys.executable, "-m", "seedlora", "merge", *map(str, case.adapters), "-o", str(out), *options]
    if options:
        argv += ["--base", str(case.base)]
    run = subprocess.run(argv, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    got = saved_as_full(fused_effects(out, base), expected, base) if options else peft_effects(case.base, out)
    assert_effects_match(got, expected, f"cli/{case_name}")


def test_check_says_vllm_refuses_merged_modules_to_save(cases, tmp_path):
    from seedlora.serving import check_adapter

    merge_adapters(cases["modules_to_save"].adapters, tmp_path / "out")
    problems = [str(f) for f in check_adapter(tmp_path / "out").problems]
    assert any("modules_to_save" in p and "vLLM refuses" in p for p in problems)
