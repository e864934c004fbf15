"""Training data: read local JSONL/CSV/Parquet, tokenise with label masks, batch, score.

Rows hold either a prompt and a completion (loss only on completion tokens) or a single
text field (loss on every token). Files are read with `datasets` from disk only, never a
hub. Every example keeps `index`, its row number in the file, so per-sample records
(first-epoch position, final loss) can be joined across runs whatever the order was.
`per_sample_losses` is public: training, `diagnose` and evaluation all score the same way.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .errors import SeedLoraError
from .rng import module_generator

IGNORE = -100  # label value that cross-entropy skips
_FORMATS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


@dataclass(frozen=True)
class Fields:
    """Column names; `text` set (or only a text column present) means plain-text mode."""

    prompt: str = "prompt"
    completion: str = "completion"
    text: str | None = None


@dataclass(frozen=True)
class Example:
    """One tokenised row: `labels` is IGNORE wherever no loss is taken."""

    index: int
    input_ids: tuple[int, ...]
    labels: tuple[int, ...]


def read_rows(path: str | Path) -> list[dict]:
    """All rows of a local JSONL/JSON/CSV/Parquet file as dicts, in file order."""
    path = Path(path)
    if not path.is_file():
        raise SeedLoraError(f"data file {path} does not exist; pass an existing JSONL, CSV or Parquet file")
    builder = _FORMATS.get(path.suffix.lower())
    if builder is None:
        raise SeedLoraError(f"data file {path} has unknown extension {path.suffix!r}; use .jsonl, .csv or .parquet")
    from datasets import load_dataset  # heavy import, only when data is read

    with tempfile.TemporaryDirectory() as cache:  # private Arrow cache: nothing left in ~/.cache
        dataset = load_dataset(builder, data_files=str(path), split="train", cache_dir=cache)
        return [dict(row) for row in dataset]


def resolve_mode(path: str | Path, columns: list[str], fields: Fields) -> str:
    """'text' or 'completion', checking the needed columns exist in the file."""
    if fields.text is not None:
        if fields.text not in columns:
            raise SeedLoraError(f"file {path} has no column {fields.text!r}; pass --text-field (columns: {columns})")
        return "text"
    if fields.completion not in columns and "text" in columns:
        return "text"
    for name, flag in ((fields.completion, "--completion-field"), (fields.prompt, "--prompt-field")):
        if name not in columns:
            raise SeedLoraError(
                f"file {path} has no column {name!r}; pass {flag} (or --text-field) (columns: {columns})"
            )
    return "completion"


def _ids(tokenizer, text: str, special: bool) -> list[int]:
    return list(tokenizer(str(text), add_special_tokens=special)["input_ids"])


def tokenize_row(tokenizer, row: dict, index: int, mode: str, fields: Fields, max_length: int) -> Example:
    """Tokenise one row; prompt is cut from the left so the completion survives truncation."""
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    if mode == "text":
        ids = (_ids(tokenizer, row[fields.text or "text"], True) + eos)[:max_length]
        return Example(index, tuple(ids), tuple(ids))
    prompt = _ids(tokenizer, row[fields.prompt], True)
    completion = (_ids(tokenizer, row[fields.completion], False) + eos)[: max_length - 1]
    prompt = prompt[max(0, len(prompt) + len(completion) - max_length):]
    ids = prompt + completion
    return Example(index, tuple(ids), tuple([IGNORE] * len(prompt) + completion))


def load_examples(path: str | Path, tokenizer, fields: Fields = Fields(), max_length: int = 512) -> list[Example]:
    """Read and tokenise a whole file (see `resolve_mode` for the two row formats)."""
    if max_length < 2:
        raise SeedLoraError(f"max_length {max_length} is too small; pass --max-length 2 or more")
    rows = read_rows(path)
    if not rows:
        raise SeedLoraError(f"data file {path} has no rows; pass a non-empty file")
    mode = resolve_mode(path, list(rows[0]), fields)
    return [tokenize_row(tokenizer, row, i, mode, fields, max_length) for i, row in enumerate(rows)]


def split_examples(
    examples: list[Example], fraction: float, seed: int = 0
) -> tuple[list[Example], list[Example]]:
    """Hold out round(fraction * n) examples (seeded, same for every run); keep file order."""
    if not 0.0 < fraction < 1.0:
        raise SeedLoraError(f"eval split {fraction} must be a fraction in (0, 1) or a file path; fix --eval-split")
    n_eval = round(fraction * len(examples))
    if n_eval < 1 or n_eval >= len(examples):
        raise SeedLoraError(f"eval split {fraction} of {len(examples)} rows leaves an empty side; change --eval-split")
    perm = torch.randperm(len(examples), generator=module_generator(seed, "eval-split")).tolist()
    held = set(perm[:n_eval])
    train = [ex for i, ex in enumerate(examples) if i not in held]
    return train, [ex for i, ex in enumerate(examples) if i in held]


def scored_tokens(example: Example) -> int:
    """How many next-token predictions of `example` count in the loss."""
    return sum(label != IGNORE for label in example.labels[1:])


def collate(examples: list[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch: input_ids, attention_mask, labels (IGNORE on padding)."""
    width = max(len(ex.input_ids) for ex in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, ex in enumerate(examples):
        n = len(ex.input_ids)
        ids[row, :n] = torch.tensor(ex.input_ids)
        labels[row, :n] = torch.tensor(ex.labels)
        mask[row, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def token_losses(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row summed next-token loss and per-row count of scored tokens."""
    shift_logits = logits[:, :-1].float()  # batch x (len-1) x vocab
    shift_labels = labels[:, 1:]  # batch x (len-1)
    loss = torch.nn.functional.cross_entropy(
        shift_logits.transpose(1, 2), shift_labels, ignore_index=IGNORE, reduction="none"
    )
    count = (shift_labels != IGNORE).sum(dim=1)
    return loss.sum(dim=1), count


@torch.no_grad()
def per_sample_losses(
    model, examples: list[Example], pad_id: int, batch_size: int = 8, progress: bool = False
) -> list[float]:
    """Mean loss over each example's scored tokens (NaN where none), in `examples` order."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out: list[float] = []
    for start in tqdm(range(0, len(examples), batch_size), desc="scoring", disable=not progress, leave=False):
        batch = {k: v.to(device) for k, v in collate(examples[start : start + batch_size], pad_id).items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        total, count = token_losses(logits, batch["labels"])
        out.extend((total / count.clamp(min=1)).where(count > 0, torch.nan).tolist())
    model.train(was_training)
    return out


def mean_loss(losses: list[float], examples: list[Example]) -> float:
    """Token-weighted mean of per-sample mean losses (the loss over all scored tokens)."""
    counts = [scored_tokens(ex) for ex in examples]
    total = sum(loss * c for loss, c in zip(losses, counts) if c)
    return total / max(1, sum(counts))


def plan_epoch(n: int, batch: int, epoch: int, order_seed: int, compose_seed: int | None = None) -> list[list[int]]:
    """The epoch's batches of example positions, in training order.

    Ordinary shuffle (`compose_seed` None): one permutation from (order_seed, epoch), cut into
    batches. Fixed batches: the permutation and cut come from (compose_seed, epoch), so every
    run gets the same batches, and only their order is drawn from (order_seed, epoch).
    """
    source = order_seed if compose_seed is None else compose_seed
    perm = torch.randperm(n, generator=module_generator(source, f"order/epoch-{epoch}")).tolist()
    batches = [perm[i : i + batch] for i in range(0, n, batch)]
    if compose_seed is None:
        return batches
    order = torch.randperm(len(batches), generator=module_generator(order_seed, f"batch-order/epoch-{epoch}"))
    return [batches[i] for i in order.tolist()]
