"""Held-out loss and task accuracy of a base model, its adapters and merged results.

Why: the papers' claim is about quality (a merge of seed adapters beats the single ones), so
every candidate is scored the same way on the same held-out file:

- the data: read and tokenised by the training loader (seedlora.train.data) with the same
  options (`--prompt-field`, `--completion-field`, `--messages-field`, `--chat-template`,
  `--split`, `--max-length`), so the evaluator feeds exactly the token ids training saw;
- loss: mean next-token NLL over the answer tokens (the completion + EOS, or the assistant
  turns with their end-of-turn marker), pooled over all examples, as in training;
- accuracy, classification: label scoring. The labels are the distinct answers of the file
  (completions, or the last assistant message); the prediction is the label with the highest
  log-likelihood after the prompt (label tokens only, no EOS). When every label is one token
  this comes from the same forward pass as the loss; otherwise one extra pass per label;
- accuracy, generation: exact match of the final answer. Greedy decoding of a few tokens,
  cut at the first newline, compared by `--match`: the first number (number), the stripped
  text (exact), or the number when the answer has one and the text otherwise (auto).

A candidate is a PEFT adapter folder (loaded on the base with PEFT and merged in for speed)
or a full model folder (e.g. a fused merge). Only the public API of seedlora, transformers
and PEFT is used. `backend="vllm"` uses eval/vllm_backend.py where vLLM is installed.

    python -m eval.evaluate --base BASE --data test.jsonl --task sentiment --output results/ \
        --single seed-0=runs/seed-0 --single seed-1=runs/seed-1 --merged seedlora=merged/
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from seedlora.errors import SeedLoraError
from seedlora.train.data import DataFormat, Example, load_examples, load_tokenizer

from .scoring import generate_answers, label_logprobs, parse_answer, score_examples

KINDS = {"classification": "classification", "generation": "generation", "sentiment": "classification", "gsm": "generation"}
MATCHES = ("auto", "number", "exact")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


# ---------------------------------------------------------------- model loading
def candidate_kind(path: Path) -> str:
    """'adapter' for a PEFT adapter folder, 'model' for a full model folder."""
    if (path / "adapter_config.json").is_file():
        return "adapter"
    if (path / "config.json").is_file():
        return "model"
    raise SeedLoraError(f"{path} is neither a PEFT adapter nor a model folder (eval/evaluate.py): pass an adapter or fused-model folder")


def load_model(base: Path, path: Path | None, dtype: torch.dtype = torch.float32):
    """The base model, the base with an adapter merged in, or a full model folder; in eval mode."""
    from transformers import AutoModelForCausalLM

    if path is None or candidate_kind(path) == "model":
        model = AutoModelForCausalLM.from_pretrained(str(path or base), dtype=dtype)
    else:
        from peft import PeftModel

        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(base), dtype=dtype), str(path))
        model = model.merge_and_unload()
    return model.eval()


# ---------------------------------------------------------------- one model, all candidates
def evaluate_model(model, tokenizer, examples: list[Example], kind: str, labels: list[str], settings: dict) -> dict:
    """Loss and accuracy of one loaded model on the tokenised held-out examples."""
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    batch = settings["batch_size"]
    label_ids = [list(tokenizer(label, add_special_tokens=False)["input_ids"]) for label in labels] if kind == "classification" else None
    totals, counts, scores = score_examples(model, examples, pad_id, label_ids, batch, settings.get("desc"))
    gold = [ex.answer for ex in examples]
    if kind == "classification":
        scores = scores if scores is not None else label_logprobs(model, examples, pad_id, label_ids, batch)
        predictions = [labels[max(range(len(labels)), key=s.__getitem__)] for s in scores]
        correct = [p == g for p, g in zip(predictions, gold)]
    else:
        predictions = generate_answers(model, tokenizer, examples, batch, settings["max_new_tokens"])
        match = settings.get("match", "auto")
        correct = [parse_answer(p, match) == parse_answer(g, match) for p, g in zip(predictions, gold)]
    return {
        "loss": sum(totals) / max(1, sum(counts)),
        "accuracy": sum(correct) / len(correct),
        "correct": int(sum(correct)),
        "per_example": {"loss": [t / max(1, c) for t, c in zip(totals, counts)], "tokens": [int(c) for c in counts],
                        "correct": correct, "prediction": predictions},
    }


def load_eval_examples(source, tokenizer, fmt: DataFormat, limit: int | None = None) -> list[Example]:
    """The held-out rows tokenised by the training loader (seedlora.train.data), first `limit` only."""
    examples = load_examples(source, tokenizer, fmt)[:limit]
    if any(ex.answer_start == 0 for ex in examples):
        raise SeedLoraError(f"{source} has text rows without an answer (eval/evaluate.py): use prompt/completion "
                            "or messages data (--prompt-field, --completion-field, --messages-field)")
    return examples


def evaluate_transformers(base: Path, paths: dict, tokenizer, examples, kind: str, labels: list[str], settings: dict) -> dict:
    """Load each candidate in turn (transformers + PEFT) and score it."""
    models = {}
    for name, path in paths.items():
        started = time.perf_counter()
        model = load_model(base, path, settings["dtype"])
        scores = evaluate_model(model, tokenizer, examples, kind, labels, {**settings, "desc": settings["desc"] and name})
        del model
        kind_of = "base" if path is None else candidate_kind(path)
        models[name] = {"path": str(path or base), "type": kind_of, **scores, "seconds": time.perf_counter() - started}
    return models


def evaluate_models(
    base: str | Path,
    candidates: dict[str, str | Path],
    dataset_path: str | Path,
    task: str,
    *,
    roles: dict[str, str] | None = None,
    batch_size: int = 8,
    max_length: int = 512,
    data_format: DataFormat | None = None,
    max_new_tokens: int = 10,
    match: str = "auto",
    limit: int | None = None,
    dtype: str = "float32",
    backend: str = "transformers",
    progress: bool = True,
    include_base: bool = True,
) -> dict:
    """Evaluate the base model (as "base", unless not `include_base`) and every candidate on one held-out file.

    `candidates` maps a display name to an adapter or model folder; `roles` tags names
    ("single", "merged", ...) for the table. `data_format` holds the same field, chat-template
    and split options as training (default: prompt/completion columns, `max_length`).
    Returns a JSON-ready dict: task, kind, labels, examples, and per model loss, accuracy,
    correct, seconds, role and per-example records.
    """
    if task not in KINDS:
        raise SeedLoraError(f"unknown task {task!r} (eval/evaluate.py): use one of {sorted(KINDS)}")
    if backend not in ("transformers", "vllm") or dtype not in DTYPES or match not in MATCHES:
        raise SeedLoraError(f"backend {backend!r} / dtype {dtype!r} / match {match!r} (eval/evaluate.py): "
                            f"use transformers|vllm, {'|'.join(DTYPES)} and {'|'.join(MATCHES)}")
    from seedlora.train.model import resolve_base

    kind, base = KINDS[task], resolve_base(base)
    paths = {**({"base": None} if include_base else {}), **{name: Path(p) for name, p in candidates.items()}}
    for path in paths.values():
        if path is not None:
            candidate_kind(path)  # validate every folder before any model is loaded
    tokenizer = load_tokenizer(base)
    fmt = data_format or DataFormat(max_length=max_length)
    examples = load_eval_examples(dataset_path, tokenizer, fmt, limit)
    labels = sorted({ex.answer for ex in examples}) if kind == "classification" else []
    if kind == "classification" and len(labels) < 2:
        raise SeedLoraError(f"{dataset_path} has one distinct completion (eval/evaluate.py): label scoring needs at least two labels")
    settings = {"batch_size": batch_size, "max_new_tokens": max_new_tokens, "dtype": DTYPES[dtype], "desc": progress, "match": match}
    if backend == "vllm":
        from .vllm_backend import evaluate_vllm

        models = evaluate_vllm(base, paths, tokenizer, examples, kind, labels, settings)
    else:
        models = evaluate_transformers(base, paths, tokenizer, examples, kind, labels, settings)
    for name, entry in models.items():
        entry["role"] = "base" if name == "base" else (roles or {}).get(name, "candidate")
    return {"task": task, "kind": kind, "dataset": str(dataset_path), "examples": len(examples), "labels": labels,
            "match": match if kind == "generation" else None, "data_format": fmt.__dict__,
            "backend": backend, "dtype": dtype, "base": str(base), "models": models}


# ---------------------------------------------------------------- command line
def _named(text: str) -> tuple[str, str]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise SeedLoraError(f"{text!r} is not NAME=PATH (eval/evaluate.py): write e.g. seed-0=runs/seed-0")
    return name, path


def parse_args(argv: list[str] | None):
    from seedlora.cli.train import add_data_arguments

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", required=True, help="base model folder (holds the tokenizer)")
    parser.add_argument("--data", required=True, help="held-out data: file, dataset folder or datasets name (see --split)")
    parser.add_argument("--task", required=True, choices=sorted(KINDS),
                        help="classification (labels: the distinct answers of --data, scored by log-likelihood), "
                             "generation (greedy answer, exact match; see --match); sentiment/gsm are aliases")
    for role in ("single", "merged", "candidate"):
        parser.add_argument(f"--{role}", action="append", default=[], metavar="NAME=PATH", help=f"a {role} adapter or model folder (repeatable)")
    parser.add_argument("--output", required=True, help="folder for results.json, table.md, chart.png")
    add_data_arguments(parser)
    parser.add_argument("--match", choices=MATCHES, default="auto",
                        help="generation: compare the first number (number), the stripped text (exact), or the number "
                             "when the answer has one, else the text (auto, default)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=10)
    parser.add_argument("--limit", type=int, default=None, help="score only the first N examples")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    parser.add_argument("--backend", choices=("transformers", "vllm"), default="transformers")
    parser.add_argument("--quiet", action="store_true")
    return parser, parser.parse_args(argv)


def quiet_libraries() -> None:
    """Silence transformers' and datasets' own progress bars (command-line use only)."""
    import datasets
    import transformers

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    datasets.disable_progress_bars()


def main(argv: list[str] | None = None) -> None:
    from seedlora.cli.train import data_options

    from .report import write_report

    parser, args = parse_args(argv)
    if args.quiet:  # process-wide, so only on the command line
        quiet_libraries()
    options = data_options(args)
    fmt = DataFormat(options["prompt_field"], options["completion_field"], options["text_field"], options["messages_field"],
                     options["chat_template"], options["split"], options["max_length"])
    try:
        candidates, roles = {}, {}
        for role in ("single", "merged", "candidate"):
            for name, path in map(_named, getattr(args, role)):
                candidates[name], roles[name] = path, role
        result = evaluate_models(
            args.base, candidates, args.data, args.task, roles=roles, batch_size=args.batch_size, data_format=fmt,
            max_new_tokens=args.max_new_tokens, match=args.match, limit=args.limit,
            dtype=args.dtype, backend=args.backend, progress=not args.quiet,
        )
    except SeedLoraError as error:
        parser.exit(2, f"error: {error}\n")
    paths = write_report(result, Path(args.output))
    print(paths["table"].read_text())
    print(f"wrote {', '.join(str(p) for p in paths.values())}")


if __name__ == "__main__":
    main()
