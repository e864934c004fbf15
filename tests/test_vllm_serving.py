"""vLLM serves seedlora's merged adapters and fused models exactly as transformers + PEFT compute them.

Set-up (module fixture): a tiny Llama built from a config (hidden 64, 2 heads of 32: vLLM's CPU
attention needs head_dim >= 32; 1 KV head; vocab 256; 2 layers), three PEFT adapters made to
stress vLLM (ranks 3, 5 and 8; one rsLoRA; one with rank_pattern {q_proj: 4, down_proj: 12}
and alpha_pattern; all of attention and MLP targeted), merged by the `seedlora` CLI with
linear (rank 20), seedlora (exact rank 21), ties (--rank 12), selection (rank 20) and
seedlora --vllm (padded to 32), each passing `seedlora check`; and fused models (seedlora, ties)
written with `--fuse`. vLLM runs in a subprocess (tests/_vllm_worker.py): one engine with
enable_lora serves the base and every merged adapter through successive LoRARequests, one
engine per fused model. transformers + PEFT decode the same token-id prompts in this process.

Tolerances (fp32 on both sides, vLLM dtype="float32"): greedy tokens equal at every step; the
top-5 token ids equal (an id may differ only at a tie on 5th place, within TOL); every
logprob both sides report within TOL = 1e-4 absolute (observed: a few 1e-6 to ~2e-5). A greedy
pick is only meaningful where it is not a near-tie, so the reference's smallest best-vs-second
logprob gap must exceed MIN_MARGIN = 1e-3 (a property of the fixed seeds and prompts).
Needs vLLM (`pip install 'seedlora[vllm]'`); skipped without it, unless SEEDLORA_REQUIRE_VLLM=1
(CI) turns a failing `import vllm` into a failure.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from seedlora.cli import main
from seedlora.serving import VLLM_MAX_LORA_RANKS, check_adapter

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.skipif(
        importlib.util.find_spec("vllm") is None and not os.environ.get("SEEDLORA_REQUIRE_VLLM"),
        reason="vLLM is not installed (pip install 'seedlora[vllm]')",
    ),
]

TOL = 1e-4  # absolute logprob difference, fp32
MIN_MARGIN = 1e-3  # smallest top-1 vs top-2 logprob gap in the references (> 2 TOL: picks are decided)
TOP_K, MAX_TOKENS = 5, 8
PROMPTS = [[1, 17, 42, 99, 3], [1, 200, 5], [1] + list(range(30, 60))]
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
TINY = dict(
    vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
    num_key_value_heads=1, max_position_embeddings=256, initializer_range=0.2, tie_word_embeddings=False,
)
INPUTS = {  # name: LoraConfig fields
    "r3": dict(r=3, lora_alpha=6),
    "r5_rslora": dict(r=5, lora_alpha=5, use_rslora=True),
    "r8_patterns": dict(r=8, lora_alpha=16, rank_pattern={"q_proj": 4, "down_proj": 12}, alpha_pattern={"v_proj": 4}),
}
MERGES = {  # output name: (method, extra CLI arguments, expected uniform rank)
    "linear": ("linear", [], 20),
    "seedlora": ("seedlora", [], 21),
    "ties": ("ties", ["--rank", "12"], 12),
    "selection": ("selection", [], 20),
    "seedlora_vllm": ("seedlora", ["--vllm"], 32),
}
FUSED = ("seedlora", "ties")
FIRST_SEED = 21  # adapter i is drawn with seed FIRST_SEED + i; chosen so no reference has a near-tie


# ---------------------------------------------------------------- building inputs
def build_base(folder: Path) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = LlamaForCausalLM(LlamaConfig(**TINY))
    model.save_pretrained(folder)
    return folder


def build_adapter(base: Path, folder: Path, seed: int, **lora) -> Path:
    """A PEFT adapter on `base` with random non-zero A and B (so every input really changes the model)."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM

    model = get_peft_model(LlamaForCausalLM.from_pretrained(base), LoraConfig(target_modules=TARGETS, **lora))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.3)
    model.save_pretrained(folder)
    return folder


def cli(*argv) -> None:
    assert main([str(a) for a in argv]) == 0, f"seedlora {' '.join(map(str, argv))} failed"


# ---------------------------------------------------------------- transformers + PEFT reference
def hf_greedy(model_dir: Path, adapter_dir: Path | None = None) -> list:
    """Greedy decoding of PROMPTS in fp32; per prompt {"tokens", "logprobs": [{id: logprob} top-k]}."""
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(model_dir).float()
    if adapter_dir is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter_dir)
    model.eval()
    results = []
    for prompt in PROMPTS:
        ids, steps = list(prompt), []
        with torch.no_grad():
            for _ in range(MAX_TOKENS):
                logprobs = torch.log_softmax(model(torch.tensor([ids])).logits[0, -1].float(), dim=-1)
                values, top = logprobs.topk(TOP_K + 1)  # one more: to see ties on the k-th place
                steps.append(dict(zip(top.tolist(), values.tolist())))
                ids.append(int(top[0]))
        results.append({"tokens": ids[len(prompt):], "logprobs": steps})
    return results


def top_margin(results: list) -> float:
    return min(a - b for r in results for s in r["logprobs"] for a, b in [sorted(s.values())[-2:][::-1]])


def max_logprob_diff(ref: list, got: list) -> float:
    """Assert same greedy tokens and top-k ids; return the largest |logprob diff| over shared ids."""
    worst = 0.0
    for prompt, r, g in zip(PROMPTS, ref, got, strict=True):
        assert g["tokens"] == r["tokens"], f"prompt {prompt}: greedy tokens differ"
        for step, (a, b) in enumerate(zip(r["logprobs"], g["logprobs"], strict=True)):
            top_a, top_b = (sorted(d, key=d.get)[-TOP_K:] for d in (a, b))
            kth = min(a[t] for t in top_a)
            for tid in set(top_a) ^ set(top_b):  # only a tie at the k-th place may swap ids
                assert abs(a.get(tid, b.get(tid)) - kth) <= TOL, f"prompt {prompt} step {step}: top-{TOP_K} ids differ"
            worst = max([worst] + [abs(a[t] - b[t]) for t in set(a) & set(b)])
    return worst


# ---------------------------------------------------------------- the whole pipeline, once
def run_vllm(job: dict, work: Path) -> subprocess.Popen:
    (work / "job.json").write_text(json.dumps(job))
    worker = Path(__file__).with_name("_vllm_worker.py")
    with open(work / "vllm.log", "w") as log:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            [sys.executable, str(worker), str(work / "job.json"), str(work / "results.json")],
            stdout=log, stderr=subprocess.STDOUT,
        )


def vllm_results(proc: subprocess.Popen, work: Path, timeout: float = 900) -> dict:
    code = proc.wait(timeout=timeout)
    results = json.loads((work / "results.json").read_text()) if (work / "results.json").is_file() else {}
    if "import_error" in results:
        if not os.environ.get("SEEDLORA_REQUIRE_VLLM"):
            pytest.skip(f"vLLM cannot be imported: {results['import_error']}")
        pytest.fail(f"SEEDLORA_REQUIRE_VLLM is set but vLLM cannot be imported: {results['import_error']}")
    log_tail = (work / "vllm.log").read_text()[-4000:]
    assert code == 0 and "runs" in results, f"vLLM worker failed (exit {code}):\n{log_tail}"
    for runs in results["runs"].values():  # JSON keys are strings: back to token ids
        for run in runs:
            run["logprobs"] = [{int(t): lp for t, lp in step.items()} for step in run["logprobs"]]
    return results


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """Build, merge, fuse, check; decode with vLLM (subprocess) and transformers + PEFT (here)."""
    started = time.perf_counter()
    work = tmp_path_factory.mktemp("vllm_serving")
    base = build_base(work / "base")
    inputs = [build_adapter(base, work / n, seed=FIRST_SEED + i, **cfg) for i, (n, cfg) in enumerate(INPUTS.items())]
    merged, checks = {}, {}
    for name, (method, extra, _) in MERGES.items():
        merged[name] = work / f"merged_{name}"
        cli("merge", *inputs, "--method", method, *extra, "-o", merged[name], "-q")
        cli("check", merged[name], "--base", base)
        checks[name] = check_adapter(merged[name], base=base)
    fused = {name: work / f"fused_{name}" for name in FUSED}
    for name, folder in fused.items():
        cli("merge", *inputs, "--method", name, "--base", base, "--fuse", "-o", folder, "-q")

    max_rank = max(report.max_lora_rank for report in checks.values())
    job = {"prompts": PROMPTS, "max_tokens": MAX_TOKENS, "logprobs": TOP_K, "engines": [
        {"model": str(base), "max_lora_rank": max_rank,
         "runs": [{"name": "base", "lora": None}] + [{"name": n, "lora": str(d)} for n, d in merged.items()]},
        *({"model": str(d), "runs": [{"name": f"fused_{n}", "lora": None}]} for n, d in fused.items()),
    ]}
    proc = run_vllm(job, work)  # vLLM works in its process while the references are computed here
    try:
        ref = {"base": hf_greedy(base)} | {n: hf_greedy(base, d) for n, d in merged.items()}
        ref |= {f"fused_{n}": hf_greedy(d) for n, d in fused.items()}
        got = vllm_results(proc, work)
    finally:
        if proc.poll() is None:  # an error or timeout here: do not leave vLLM running
            proc.kill()
            proc.wait()
    print(f"\nvLLM {got['vllm']}: engine start-up {got['startup_s']}; pipeline {time.perf_counter() - started:.1f} s")
    return dict(work=work, base=base, merged=merged, checks=checks, ref=ref, got=got["runs"])


# ---------------------------------------------------------------- specifications
def test_merged_adapters_check_clean_with_uniform_non_bucket_ranks(served):
    for name, (_, _, rank) in MERGES.items():
        report = served["checks"][name]
        config = json.loads((served["merged"][name] / "adapter_config.json").read_text())
        assert report.findings == (), f"{name}: {[str(f) for f in report.findings]}"
        assert (config["r"], config["lora_alpha"]) == (rank, rank)
        assert not config.get("rank_pattern") and not config.get("alpha_pattern") and not config.get("use_rslora")
        assert (rank in VLLM_MAX_LORA_RANKS) == name.endswith("_vllm"), name  # only --vllm output is a bucket
        assert report.max_lora_rank == min(b for b in VLLM_MAX_LORA_RANKS if b >= rank)


@pytest.mark.parametrize("name", ["base", *MERGES, *(f"fused_{n}" for n in FUSED)])
def test_vllm_matches_transformers_peft(served, name):
    ref, got = served["ref"][name], served["got"][name]
    assert top_margin(ref) > MIN_MARGIN, f"{name}: a near-tie in the reference; pick other prompts or seeds"
    diff = max_logprob_diff(ref, got)
    print(f"{name}: max |logprob diff| {diff:.2e}, min top-1 margin {top_margin(ref):.3f}")
    assert diff <= TOL


@pytest.mark.parametrize("name", [*MERGES, *(f"fused_{n}" for n in FUSED)])
def test_vllm_really_applies_the_merge(served, name):
    base = [r["tokens"] for r in served["got"]["base"]]
    assert [r["tokens"] for r in served["got"][name]] != base


def test_fused_seedlora_model_serves_like_the_seedlora_adapter(served):
    """base + exact seedlora update (fused) = base with the rank-21 seedlora adapter (PEFT)."""
    assert max_logprob_diff(served["ref"]["seedlora"], served["got"]["fused_seedlora"]) <= TOL


def test_vllm_rank_padding_is_exact(served):
    """seedlora --vllm (rank 21 zero-padded to 32) serves like the unpadded rank-21 adapter."""
    assert max_logprob_diff(served["got"]["seedlora"], served["got"]["seedlora_vllm"]) <= TOL
