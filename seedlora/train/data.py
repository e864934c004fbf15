"""The one data loader of training and evaluation: rows → token ids with label masks.

Three row forms (seedlora/train/sources.py reads files, folders and dataset names):
- prompt/completion (column names set by `prompt`/`completion`): loss on the completion and EOS;
- chat `messages` (a list of {role, content}): the chat template applied (seedlora/train/chat.py),
  loss on the assistant turns;
- text (`text` column, or `--text-field`): loss on every token.

`seedlora train` and `eval/evaluate.py` both call `load_examples` with the same DataFormat,
so the evaluator feeds exactly the ids the trainer saw. Every Example keeps `index` (its row
number, to join per-sample records across runs), `answer_start` (where its final answer's
tokens begin: the prompt is `input_ids[:answer_start]`) and `answer` (that answer as text).
Too long examples are cut from the left, keeping the answer (then cut on the right if the
answer alone is too long).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import SeedLoraError
from . import chat
from .sources import read_rows

IGNORE = -100  # label value that cross-entropy skips


@dataclass(frozen=True)
class DataFormat:
    """How rows are read and rendered; identical options in `seedlora train` and the evaluator."""

    prompt: str = "prompt"
    completion: str = "completion"
    text: str | None = None
    messages: str = "messages"
    chat_template: str = "auto"  # auto | none | path of a Jinja file
    split: str | None = None
    max_length: int = 512


@dataclass(frozen=True)
class Example:
    """One tokenised row: `labels` is IGNORE wherever no loss is taken."""

    index: int
    input_ids: tuple[int, ...]
    labels: tuple[int, ...]
    answer_start: int = 0
    answer: str = ""


def load_tokenizer(base: str | Path):
    """The base model's tokenizer, with EOS as padding when it has no pad token."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(base))
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def resolve_mode(source, columns: list[str], fmt: DataFormat) -> str:
    """'text', 'messages' or 'completion', checking the needed columns exist."""
    if fmt.text is not None:
        if fmt.text not in columns:
            raise SeedLoraError(f"{source} has no column {fmt.text!r}; pass --text-field (columns: {columns})")
        return "text"
    if fmt.completion not in columns and fmt.messages in columns:
        return "messages"
    if fmt.completion not in columns and "text" in columns:
        return "text"
    for name, flag in ((fmt.completion, "--completion-field"), (fmt.prompt, "--prompt-field")):
        if name not in columns:
            raise SeedLoraError(f"{source} has no column {name!r}; pass {flag}, --messages-field or --text-field "
                                f"(columns: {columns})")
    return "completion"


def _ids(tokenizer, text: str, special: bool) -> list[int]:
    return list(tokenizer(str(text), add_special_tokens=special)["input_ids"])


def truncate(ids: list[int], labels: list[int], start: int, max_length: int) -> tuple[list, list, int]:
    """Cut from the left (keeping one prompt token and the answer), then from the right."""
    cut = min(max(0, len(ids) - max_length), max(0, start - 1))
    ids, labels, start = ids[cut:][:max_length], labels[cut:][:max_length], start - cut
    return ids, labels, min(start, len(ids))


def _completion(tokenizer, row: dict, fmt: DataFormat, eos: list[int]) -> tuple[list, list, int, str]:
    prompt = _ids(tokenizer, row[fmt.prompt], True)
    answer = str(row[fmt.completion])
    completion = _ids(tokenizer, answer, False) + eos
    return prompt + completion, [IGNORE] * len(prompt) + completion, len(prompt), answer


def _messages(tokenizer, messages: list[dict], template: str, where: str) -> tuple[list, list, int, str]:
    ids, labels, start = [], [], 0
    for text, scored in chat.segments(tokenizer, template, messages, where):
        piece = _ids(tokenizer, text, False)
        if scored:
            start = len(ids)
        ids += piece
        labels += piece if scored else [IGNORE] * len(piece)
    answer = next(m["content"] for m in reversed(messages) if m["role"] == "assistant")
    return ids, labels, start, answer


def tokenize_row(tokenizer, row: dict, index: int, mode: str, fmt: DataFormat, template: str | None) -> Example:
    """Tokenise one row in `mode` with the resolved chat template (None: plain text)."""
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    where = f"row {index}"
    if mode == "text":
        ids = _ids(tokenizer, row[fmt.text or "text"], True) + eos
        return Example(index, tuple(ids[: fmt.max_length]), tuple(ids[: fmt.max_length]))
    if mode == "messages":
        parts = _messages(tokenizer, chat.check_messages(row[fmt.messages], where), template, where)
    elif template is not None:
        turns = [{"role": "user", "content": str(row[fmt.prompt])}, {"role": "assistant", "content": str(row[fmt.completion])}]
        parts = _messages(tokenizer, turns, template, where)
    else:
        parts = _completion(tokenizer, row, fmt, eos)
    ids, labels, start = truncate(*parts[:3], fmt.max_length)
    return Example(index, tuple(ids), tuple(labels), start, parts[3])


def load_examples(source: str | Path, tokenizer, fmt: DataFormat = DataFormat()) -> list[Example]:
    """Read and tokenise every row of `source` (see the module docstring for the row forms)."""
    if fmt.max_length < 2:
        raise SeedLoraError(f"max_length {fmt.max_length} is too small; pass --max-length 2 or more")
    rows = read_rows(source, fmt.split)
    if not rows:
        raise SeedLoraError(f"data {source} has no rows; pass a non-empty file")
    mode = resolve_mode(source, list(rows[0]), fmt)
    template = chat.resolve_template(tokenizer, fmt.chat_template, mode, str(source))
    return [tokenize_row(tokenizer, row, i, mode, fmt, template) for i, row in enumerate(rows)]


def split_examples(examples: list[Example], fraction: float, seed: int = 0) -> tuple[list[Example], list[Example]]:
    """Hold out round(fraction * n) examples (seeded, same for every run); keep file order."""
    import torch

    from ..rng import module_generator

    if not 0.0 < fraction < 1.0:
        raise SeedLoraError(f"eval split {fraction} must be a fraction in (0, 1) or a file path; fix --eval-split")
    n_eval = round(fraction * len(examples))
    if n_eval < 1 or n_eval >= len(examples):
        raise SeedLoraError(f"eval split {fraction} of {len(examples)} rows leaves an empty side; change --eval-split")
    perm = torch.randperm(len(examples), generator=module_generator(seed, "eval-split")).tolist()
    held = set(perm[:n_eval])
    train = [ex for i, ex in enumerate(examples) if i not in held]
    return train, [ex for i, ex in enumerate(examples) if i in held]
