"""eval/evaluate.py and eval/report.py on tiny Llamas whose answers are known by construction.

An "automaton" model has every attention and MLP output projection zeroed, so the residual
stream is just the current token's embedding and the next-token logits depend only on the
current token; its lm_head is set so chosen tokens predict chosen successors. That lets the
tests state exactly which label wins and what greedy decoding produces.
"""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from _tiny import make_tiny_llama
from eval.evaluate import (
    evaluate_models, label_logprobs, load_eval_examples, load_model, main, parse_answer, score_examples,
)
from eval.report import markdown_table, single_stats
from seedlora import merge_adapters
from seedlora.errors import SeedLoraError
from seedlora.train.data import DataFormat

REPO = Path(__file__).resolve().parent.parent


def automaton(folder, successors: dict[str, str], strength: float = 10.0):
    """A tiny Llama where token `a` is followed by token `b` for each a -> b (greedy, ~certainly)."""
    make_tiny_llama(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    token = lambda char: tokenizer(char, add_special_tokens=False)["input_ids"][0]
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.lm_head.weight.zero_()
        for source, target in successors.items():
            hidden = model.model.norm(model.model.embed_tokens.weight[token(source)])
            model.lm_head.weight[token(target)] = strength * hidden / hidden.norm()
    model.save_pretrained(folder)
    return folder


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("evaluate")


@pytest.fixture(scope="module")
def sentiment(root):
    """Three positive and one negative tweet: a model that always says positive scores 0.75."""
    texts = [("great day", " positive"), ("awful delay", " negative"), ("nice crew", " positive"), ("love it", " positive")]
    return write_jsonl(root / "sentiment.jsonl", [{"prompt": f"Tweet: {t}\nSentiment:", "completion": c} for t, c in texts])


@pytest.fixture(scope="module")
def random_base(root):
    return make_tiny_llama(root / "random-base", seed=3)


@pytest.fixture(scope="module")
def adapters(root, random_base):
    """Two PEFT adapters with random non-zero factors on the random base."""
    folders = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_pretrained(random_base)
        config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "o_proj"], init_lora_weights=False)
        peft_model = get_peft_model(model, config)
        peft_model.save_pretrained(root / f"adapter-{seed}")
        folders.append(root / f"adapter-{seed}")
    return folders


def test_label_scoring_picks_the_label_the_model_prefers(root, sentiment):
    base = automaton(root / "says-positive", {":": " ", " ": "p"})  # after "Sentiment:" comes " p..."
    result = evaluate_models(base, {}, sentiment, "sentiment", progress=False)
    model = result["models"]["base"]
    assert result["labels"] == [" negative", " positive"]
    assert model["per_example"]["prediction"] == [" positive"] * 4
    assert model["accuracy"] == 0.75 and model["correct"] == 3
    losses = model["per_example"]["loss"]
    assert losses[1] > max(losses[0], losses[2], losses[3])  # the negative example is the surprising one


def test_single_token_labels_use_one_pass_and_agree_with_per_label_scoring(root):
    data = write_jsonl(root / "ab.jsonl", [{"prompt": f"Item {i}:", "completion": "A" if i % 2 else "B"} for i in range(4)])
    base = automaton(root / "says-b", {":": "B"})
    result = evaluate_models(base, {}, data, "classification", progress=False)
    assert result["models"]["base"]["per_example"]["prediction"] == ["B"] * 4
    assert result["models"]["base"]["accuracy"] == 0.5

    tokenizer = AutoTokenizer.from_pretrained(base)
    examples = load_eval_examples(data, tokenizer, DataFormat(max_length=64))
    label_ids = [tokenizer(label, add_special_tokens=False)["input_ids"] for label in ("A", "B")]
    model = load_model(base, None)
    _, _, one_pass = score_examples(model, examples, tokenizer.pad_token_id, label_ids, batch_size=3)
    per_label = label_logprobs(model, examples, tokenizer.pad_token_id, label_ids, batch_size=3)
    assert torch.allclose(torch.tensor(one_pass), torch.tensor(per_label), atol=1e-4)


def test_generation_exact_match_parses_the_greedy_number(root):
    base = automaton(root / "says-42", {":": " ", " ": "4", "4": "2", "2": "\n"})
    data = write_jsonl(root / "gsm.jsonl", [
        {"prompt": "Question: 6 times 7?\nAnswer:", "completion": " 42"},
        {"prompt": "Question: 3 plus 4?\nAnswer:", "completion": " 7"},
        {"prompt": "Question: 84 halved?\nAnswer:", "completion": " 42.0"},
    ])
    result = evaluate_models(base, {}, data, "gsm", max_new_tokens=5, progress=False)
    model = result["models"]["base"]
    assert [p.strip() for p in model["per_example"]["prediction"]] == ["42", "42", "42"]
    assert model["per_example"]["correct"] == [True, False, True]
    assert model["accuracy"] == pytest.approx(2 / 3)


def test_parse_answer_normalises_numbers():
    assert parse_answer("The answer is 1,234 apples") == "1234"
    assert parse_answer(" 12.50") == "12.5" and parse_answer("7.0") == "7"
    assert parse_answer("-3 degrees") == "-3"
    assert parse_answer("  yes ") == "yes"


def test_adapter_and_its_fused_model_score_the_same(root, sentiment, random_base, adapters):
    fused = root / "fused"
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(random_base), adapters[0]).merge_and_unload()
    model.save_pretrained(fused)
    result = evaluate_models(random_base, {"seed-1": adapters[0], "fused": fused}, sentiment, "sentiment", progress=False)
    models = result["models"]
    assert list(models) == ["base", "seed-1", "fused"]
    assert [models[n]["type"] for n in models] == ["base", "adapter", "model"]
    assert models["seed-1"]["loss"] == pytest.approx(models["fused"]["loss"], abs=1e-5)
    assert models["seed-1"]["per_example"]["prediction"] == models["fused"]["per_example"]["prediction"]
    assert abs(models["seed-1"]["loss"] - models["base"]["loss"]) > 1e-3  # the adapter does change the model
    for entry in models.values():
        assert len(entry["per_example"]["loss"]) == result["examples"] == 4
        assert 0.0 <= entry["accuracy"] <= 1.0 and entry["loss"] > 0


def test_rejects_unknown_task_and_folders_that_are_not_models(root, sentiment, random_base):
    with pytest.raises(SeedLoraError, match="unknown task"):
        evaluate_models(random_base, {}, sentiment, "poetry", progress=False)
    (root / "empty").mkdir()
    with pytest.raises(SeedLoraError, match="neither a PEFT adapter nor a model"):
        evaluate_models(random_base, {"x": root / "empty"}, sentiment, "sentiment", progress=False)
    one_label = write_jsonl(root / "one-label.jsonl", [{"prompt": "Tweet: ok\nSentiment:", "completion": " positive"}])
    with pytest.raises(SeedLoraError, match="at least two labels"):
        evaluate_models(random_base, {}, one_label, "sentiment", progress=False)


def fake_result(values: dict) -> dict:
    models = {name: {"role": role, "loss": loss, "accuracy": acc} for name, (role, loss, acc) in values.items()}
    return {"task": "sentiment", "kind": "classification", "examples": 10, "models": models}


def test_table_reports_single_mean_std_best_and_merge_gains(tmp_path):
    result = fake_result({
        "base": ("base", 2.0, 0.5), "seed-0": ("single", 1.0, 0.6), "seed-1": ("single", 0.8, 0.8),
        "seedlora": ("merged", 0.7, 0.9), "long": ("equal-compute", 0.9, 0.7),
    })
    stats = single_stats(result)
    assert stats["loss_mean"] == pytest.approx(0.9) and stats["loss_std"] == pytest.approx(0.1)
    assert stats["accuracy_best"] == pytest.approx(0.8) and stats["loss_best"] == pytest.approx(0.8)
    table = markdown_table(result)
    lines = table.splitlines()
    assert "| single mean ± std (n=2) | 0.9000 ± 0.1000 | 70.0 ± 10.0 |" in table
    assert "| seedlora | 0.7000 | 90.0 | -0.2000 | -0.1000 | +20.0 | +10.0 |" in lines
    assert any(line.startswith("| long (equal-compute) |") for line in lines)
    assert lines.index(next(l for l in lines if l.startswith("| seed-1"))) < lines.index(next(l for l in lines if l.startswith("| seedlora")))


def test_cli_writes_json_table_and_chart_for_a_real_merge(root, sentiment, random_base, adapters, capsys):
    merged = root / "merged-linear"
    merge_adapters(adapters, merged, method="linear")
    out = root / "report"
    main(["--base", str(random_base), "--data", str(sentiment), "--task", "sentiment",
          "--single", f"seed-1={adapters[0]}", "--single", f"seed-2={adapters[1]}", "--merged", f"linear={merged}",
          "--output", str(out)])
    saved = json.loads((out / "results.json").read_text())
    assert [saved["models"][n]["role"] for n in ("base", "seed-1", "seed-2", "linear")] == ["base", "single", "single", "merged"]
    assert set(saved["gains"]) == {"linear"} and saved["single_stats"]["n"] == 2
    assert "| linear |" in (out / "table.md").read_text()
    assert (out / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "single mean" in capsys.readouterr().out


@pytest.mark.vllm
@pytest.mark.skipif(
    importlib.util.find_spec("vllm") is None and not os.environ.get("SEEDLORA_REQUIRE_VLLM"),
    reason="vLLM is not installed (pip install 'seedlora[vllm]')",
)
def test_vllm_backend_matches_transformers(tmp_path, sentiment):
    """The vLLM path (own process: vLLM configures threads and logging on import) gives the same numbers."""
    base = make_tiny_llama(tmp_path / "base", hidden=64, heads=2, seed=3)  # vLLM's CPU attention needs head_dim >= 32
    torch.manual_seed(1)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "o_proj"], init_lora_weights=False))
    model.save_pretrained(tmp_path / "adapter")
    model.merge_and_unload().save_pretrained(tmp_path / "fused")
    results = {}
    for backend in ("transformers", "vllm"):
        out = tmp_path / backend
        command = [sys.executable, "-m", "eval.evaluate", "--base", str(base), "--data", str(sentiment), "--task", "sentiment",
                   "--single", f"adapter={tmp_path / 'adapter'}", "--merged", f"fused={tmp_path / 'fused'}",
                   "--backend", backend, "--output", str(out), "--quiet"]
        subprocess.run(command, check=True, cwd=REPO, capture_output=True, timeout=600)
        results[backend] = json.loads((out / "results.json").read_text())["models"]
    for name in ("base", "adapter", "fused"):
        expected, got = results["transformers"][name], results["vllm"][name]
        assert got["loss"] == pytest.approx(expected["loss"], abs=1e-4)
        assert got["per_example"]["loss"] == pytest.approx(expected["per_example"]["loss"], abs=1e-4)
        assert got["per_example"]["prediction"] == expected["per_example"]["prediction"]
