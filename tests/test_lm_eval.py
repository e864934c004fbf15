"""lm-evaluation-harness on our task files gives eval/evaluate.py's numbers on the same items.

A tiny Llama (tests/_tiny.py, byte-level tokenizer) and a PEFT adapter on it are scored by the
real `lm_eval` command (`--model hf --model_args pretrained=BASE,peft=ADAPTER --include_path
eval/lm_eval_tasks`) and by eval/evaluate.py on the first items of the same held-out files:
sentiment accuracy and GSM exact match must be equal, item by item (and the generated answers
equal). max_length=512 is eval/evaluate.py's default --max-length: without it lm_eval cuts long
prompts to the tiny model's 256 positions and generates from a different context.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from _tiny import make_tiny_llama

pytest.importorskip("lm_eval")
REPO = Path(__file__).resolve().parents[1]
LIMITS = {"sentiment": 24, "gsm": 4}


def random_adapter(base: Path, out: Path, seed: int) -> Path:
    """A PEFT LoRA adapter on `base` with random (non-zero) factors, saved by PEFT."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.data = torch.randn_like(param) * 0.3
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A tiny base and a LoRA adapter on it."""
    root = tmp_path_factory.mktemp("lm_eval")
    base = make_tiny_llama(root / "base", hidden=32, layers=2, heads=2, seed=3)
    return {"base": base, "adapter": random_adapter(base, root / "adapter", 5), "root": root}


def run_lm_eval(models, task: str, limit: int) -> list:
    """`lm_eval` as the README says, from the repository root; the per-item records it logs."""
    out = models["root"] / f"lm-{task}"
    shutil.rmtree(out, ignore_errors=True)
    command = [sys.executable, "-m", "lm_eval", "--model", "hf",
               "--model_args", f"pretrained={models['base']},peft={models['adapter']},dtype=float32,max_length=512",
               "--tasks", task, "--include_path", "eval/lm_eval_tasks", "--limit", str(limit),
               "--output_path", str(out), "--log_samples", "--batch_size", "4"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_DATASETS_CACHE": str(models["root"] / "ds")}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    samples = next(out.rglob(f"samples_{task}_*.jsonl"))
    records = [json.loads(line) for line in samples.read_text().splitlines()]
    results = json.loads(next(out.rglob("results_*.json")).read_text())["results"][task]
    return sorted(records, key=lambda r: r["doc_id"]), results


def evaluate(models, task: str, limit: int) -> dict:
    from eval.evaluate import evaluate_models

    data = REPO / "eval" / "data" / task / "test.jsonl"
    return evaluate_models(models["base"], {"adapter": models["adapter"]}, data, task, limit=limit, progress=False)["models"]["adapter"]


def test_sentiment_accuracy_equals_evaluate_py_item_by_item(models):
    records, results = run_lm_eval(models, "seedlora_sentiment", LIMITS["sentiment"])
    ours = evaluate(models, "sentiment", LIMITS["sentiment"])
    assert len(records) == LIMITS["sentiment"]
    assert [bool(r["acc"]) for r in records] == ours["per_example"]["correct"]
    assert results["acc,none"] == pytest.approx(ours["accuracy"], abs=1e-12)
    assert 0 < ours["correct"] < LIMITS["sentiment"]  # not all one label: the comparison has teeth
    labels = [" negative", " positive"]
    picked = [labels[max(range(2), key=lambda i: float(r["resps"][i][0][0]))] for r in records]
    assert picked == ours["per_example"]["prediction"]


def test_gsm_exact_match_equals_evaluate_py_item_by_item(models):
    records, results = run_lm_eval(models, "seedlora_gsm", LIMITS["gsm"])
    ours = evaluate(models, "gsm", LIMITS["gsm"])
    assert [bool(r["exact_match"]) for r in records] == ours["per_example"]["correct"]
    assert results["exact_match,none"] == pytest.approx(ours["accuracy"], abs=1e-12)
    generated = [r["filtered_resps"][0] for r in records]
    assert generated == ours["per_example"]["prediction"]


def test_task_parse_answer_is_evaluate_py_rule():
    sys.path.insert(0, str(REPO / "eval" / "lm_eval_tasks"))
    try:
        from utils import parse_answer as task_rule
    finally:
        sys.path.pop(0)
    from eval.evaluate import parse_answer

    for text in ["1,234", " 747\n", "-0.50 apples", "x = 3.0", "none", "", "  -0 ", "12.340 and 5"]:
        assert task_rule(text) == parse_answer(text), text


def vllm_available() -> bool:
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        if os.environ.get("SEEDLORA_REQUIRE_VLLM") == "1":
            pytest.fail("vLLM is required (SEEDLORA_REQUIRE_VLLM=1) but not installed")
        return False
    return True


def lm_eval_samples(command_args: list, out: Path, root: Path) -> list:
    """Run one lm_eval command line from the repository root; its logged per-item records."""
    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_DATASETS_CACHE": str(root / "ds")}
    command = [sys.executable, *command_args, "--tasks", "seedlora_sentiment", "--include_path", "eval/lm_eval_tasks",
               "--limit", str(LIMITS["sentiment"]), "--output_path", str(out), "--log_samples"]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    records = (json.loads(line) for line in next(out.rglob("samples_seedlora_sentiment_*.jsonl")).read_text().splitlines())
    return sorted(records, key=lambda r: r["doc_id"])


def test_vllm_backend_on_a_fused_merge_equals_hf_backend_and_evaluate_py(tmp_path):
    """lm_eval's vLLM backend (eval/lm_eval_vllm.py) on seedlora's --fuse output: the hf backend's
    log-likelihoods item by item, and eval/evaluate.py's answers."""
    if not vllm_available():
        pytest.skip("vLLM is not installed (pip install -e '.[vllm]')")
    from eval.evaluate import evaluate_models
    from seedlora import fuse_adapters

    root = tmp_path  # vLLM's CPU attention needs head_dim >= 32: a base of 2 heads of 32
    base = make_tiny_llama(root / "base", hidden=64, layers=2, heads=2, seed=3)
    fused = root / "fused"
    fuse_adapters([random_adapter(base, root / "a", 5), random_adapter(base, root / "b", 6)], base, fused, method="linear")

    vllm = lm_eval_samples(["-m", "eval.lm_eval_vllm", "--model", "vllm", "--batch_size", "auto", "--model_args",
                            f"pretrained={fused},dtype=float32,enforce_eager=True,max_model_len=256,seed=0"], root / "lm-vllm", root)
    hf = lm_eval_samples(["-m", "lm_eval", "--model", "hf", "--batch_size", "4", "--model_args",
                          f"pretrained={fused},dtype=float32,max_length=512"], root / "lm-hf", root)
    data = REPO / "eval" / "data" / "sentiment" / "test.jsonl"
    ours = evaluate_models(base, {"fused": fused}, data, "sentiment", limit=LIMITS["sentiment"],
                           progress=False)["models"]["fused"]

    loglik = lambda records: [float(choice[0][0]) for r in records for choice in r["resps"]]  # per item and label
    assert loglik(vllm) == pytest.approx(loglik(hf), abs=2e-3)
    assert [bool(r["acc"]) for r in vllm] == ours["per_example"]["correct"]
    assert 0 < ours["correct"] < LIMITS["sentiment"]
