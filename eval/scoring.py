"""Scoring one loaded model on tokenised examples: answer loss, label log-likelihoods, greedy answers.

Pure functions of (model, examples) used by eval/evaluate.py (and, for the answer parsing, by
eval/vllm_backend.py): losses pooled over answer tokens as in training (seedlora.train.batches),
label scoring from the prompt's last position, batched greedy generation with left padding.
"""

from __future__ import annotations

import re

import torch
from tqdm.auto import tqdm

from seedlora.train.batches import collate, token_losses
from seedlora.train.data import IGNORE, Example

NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


# ---------------------------------------------------------------- pure helpers
def parse_answer(text: str, match: str = "auto") -> str:
    """What exact match compares: `exact` the stripped text; `number` the first number (commas
    dropped, trailing .0 removed, '' when none); `auto` the first number, else the stripped text."""
    found = NUMBER.search(text) if match != "exact" else None
    if found is None:
        return "" if match == "number" else text.strip()
    value = found.group(0).replace(",", "")
    if "." in value:
        value = value.rstrip("0").rstrip(".")
    return value if value not in ("-0", "") else "0"


def prompt_length(example: Example) -> int:
    """Number of prompt tokens: where the example's final answer starts."""
    return example.answer_start


def left_pad(prompts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded input ids and attention mask, for batched generation."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt):] = torch.tensor(prompt)
        mask[row, width - len(prompt):] = 1
    return ids, mask


# ---------------------------------------------------------------- scoring
def length_batches(examples: list[Example], batch_size: int) -> list[list[int]]:
    """Example positions grouped into batches of similar length (less padding), longest first."""
    order = sorted(range(len(examples)), key=lambda i: -len(examples[i].input_ids))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


@torch.no_grad()
def score_examples(model, examples: list[Example], pad_id: int, label_ids: list[list[int]] | None, batch_size: int, desc=None):
    """Per example: summed completion NLL, scored-token count, and (single-token labels) label log-probs."""
    n = len(examples)
    totals, counts, label_scores = [0.0] * n, [0] * n, [None] * n
    single = label_ids is not None and all(len(ids) == 1 for ids in label_ids)
    for positions in tqdm(length_batches(examples, batch_size), desc=desc or None, leave=False, disable=not desc):
        chunk = [examples[i] for i in positions]
        batch = collate(chunk, pad_id)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        total, count = token_losses(logits, batch["labels"])
        for j, i in enumerate(positions):
            totals[i], counts[i] = float(total[j]), int(count[j])
            if single:
                row = logits[j, prompt_length(chunk[j]) - 1].float().log_softmax(-1)
                label_scores[i] = [float(row[ids[0]]) for ids in label_ids]
    return totals, counts, (label_scores if single else None)


@torch.no_grad()
def label_logprobs(model, examples: list[Example], pad_id: int, label_ids: list[list[int]], batch_size: int) -> list[list[float]]:
    """log p(label | prompt) for every example and label (one pass per label)."""
    per_label = []
    for ids in label_ids:
        variants = []
        for ex in examples:
            prompt = list(ex.input_ids[: prompt_length(ex)])
            variants.append(Example(ex.index, tuple(prompt + ids), tuple([IGNORE] * len(prompt) + ids), len(prompt), ex.answer))
        totals, _, _ = score_examples(model, variants, pad_id, None, batch_size)
        per_label.append([-t for t in totals])
    return [list(scores) for scores in zip(*per_label)]


@torch.no_grad()
def generate_answers(model, tokenizer, examples: list[Example], batch_size: int, max_new_tokens: int) -> list[str]:
    """Greedy continuations of each prompt, cut at the first newline."""
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    answers = [""] * len(examples)
    for positions in length_batches(examples, batch_size):
        prompts = [list(examples[i].input_ids[: prompt_length(examples[i])]) for i in positions]
        ids, mask = left_pad(prompts, pad_id)
        out = model.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
            pad_token_id=pad_id, eos_token_id=tokenizer.eos_token_id,
        )
        for i, row in zip(positions, out[:, ids.shape[1]:]):
            answers[i] = tokenizer.decode(row, skip_special_tokens=True).split("\n")[0]
    return answers
