"""Batches and losses shared by training, diagnose and evaluation; the epoch plan as a Sampler.

`plan_epoch` is the papers' data-order control: a permutation drawn from (data seed, epoch),
or, for `--vary fixed-batches`, batches whose contents come from a fixed seed and whose order
comes from the run's seed. `PlannedSampler` hands that plan to transformers' Trainer (which
cuts it into per-device batches and, under `torchrun`/`accelerate launch`, deals consecutive
batches to the processes), so the global batch of every step is the same for any number of
processes with the same global batch size.
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset, Sampler
from tqdm.auto import tqdm

from ..rng import module_generator
from .data import IGNORE, Example


def scored_tokens(example: Example) -> int:
    """How many next-token predictions of `example` count in the loss."""
    return sum(label != IGNORE for label in example.labels[1:])


def collate(examples: list[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch: input_ids, attention_mask, labels (IGNORE on padding) and row index."""
    width = max(len(ex.input_ids) for ex in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, ex in enumerate(examples):
        n = len(ex.input_ids)
        ids[row, :n] = torch.tensor(ex.input_ids)
        labels[row, :n] = torch.tensor(ex.labels)
        mask[row, :n] = 1
    index = torch.tensor([ex.index for ex in examples], dtype=torch.long)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels, "index": index}


def token_losses(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row summed next-token loss and per-row count of scored tokens."""
    shift_logits = logits[:, :-1].float()  # batch x (len-1) x vocab
    shift_labels = labels[:, 1:].to(logits.device)  # batch x (len-1)
    loss = torch.nn.functional.cross_entropy(
        shift_logits.transpose(1, 2), shift_labels, ignore_index=IGNORE, reduction="none"
    )
    count = (shift_labels != IGNORE).sum(dim=1)
    return loss.sum(dim=1), count


@torch.no_grad()
def per_sample_losses(model, examples: list[Example], pad_id: int, batch_size: int = 8, progress: bool = False) -> list[float]:
    """Mean loss over each example's scored tokens (NaN where none), in `examples` order."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out: list[float] = []
    for start in tqdm(range(0, len(examples), batch_size), desc="scoring", disable=not progress, leave=False):
        batch = collate(examples[start : start + batch_size], pad_id)
        logits = model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)).logits
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
    run gets the same batches; only the order of the full batches is drawn from
    (order_seed, epoch), a trailing partial batch stays last (so a plain cut of the flattened
    order gives back the same batches).
    """
    source = order_seed if compose_seed is None else compose_seed
    perm = torch.randperm(n, generator=module_generator(source, f"order/epoch-{epoch}")).tolist()
    batches = [perm[i : i + batch] for i in range(0, n, batch)]
    if compose_seed is None:
        return batches
    full = [b for b in batches if len(b) == batch]
    order = torch.randperm(len(full), generator=module_generator(order_seed, f"batch-order/epoch-{epoch}"))
    return [full[i] for i in order.tolist()] + [b for b in batches if len(b) < batch]


class ExampleDataset(Dataset):
    """Examples as a map-style dataset (the collator builds the tensors)."""

    def __init__(self, examples: list[Example]):
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> Example:
        return self.examples[i]


class PlannedSampler(Sampler):
    """Positions in `plan_epoch` order for the epoch last given to `set_epoch` (Trainer calls it)."""

    def __init__(self, n: int, global_batch: int, order_seed: int, compose_seed: int | None):
        self.n, self.global_batch = n, global_batch
        self.order_seed, self.compose_seed, self.epoch = order_seed, compose_seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        for batch in plan_epoch(self.n, self.global_batch, self.epoch, self.order_seed, self.compose_seed):
            yield from batch
