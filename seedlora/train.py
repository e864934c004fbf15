"""Train K LoRA adapters of one base model on one dataset, one per seed, reproducibly.

A plain PyTorch loop (AdamW, warm-up + linear/cosine/constant schedule, gradient
accumulation) over PEFT LoRA layers, because such a loop is easy to make bit-exact and
resumable: every random choice comes from a generator seeded by (seed, purpose), the LoRA
A matrices are re-drawn from `module_generator(init_seed, module)`, and a checkpoint at each
epoch end (and every `save_steps`) holds weights, optimizer, schedule, position and RNG.
`vary` picks what the seed changes: data order, LoRA init, both, or only the order of fixed
batches (the parameter-selection paper's ablation). Each seed folder gets the adapter,
`samples.jsonl` (first-epoch position and final loss of every training row) and
`train_log.json`.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from .data import Example, collate, per_sample_losses, plan_epoch, scored_tokens, token_losses
from .errors import SeedLoraError
from .rng import module_generator
from . import train_io

VARY = ("order", "init", "both", "fixed-batches")
SCHEDULERS = ("linear", "cosine", "constant")


@dataclass
class TrainConfig:
    """Every setting that changes the trained adapter (saved in train_log.json)."""

    vary: str = "order"
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: list[str] | str | None = None  # None: PEFT's default for the architecture
    lr: float = 2e-4
    weight_decay: float = 0.0
    warmup_ratio: float = 0.0
    warmup_steps: int | None = None  # overrides warmup_ratio when set
    scheduler: str = "linear"
    epochs: int = 3
    max_steps: int | None = None  # overrides epochs when set
    batch_size: int = 8
    grad_accum: int = 1
    max_grad_norm: float | None = 1.0
    max_length: int = 512
    eval_split: float | str | None = None  # fraction held out, or a separate file
    prompt_field: str = "prompt"
    completion_field: str = "completion"
    text_field: str | None = None
    fixed_seed: int = 0  # seeds whatever `vary` holds fixed, and the eval split
    load_in_4bit: bool = False
    dtype: str = "float32"
    device: str = "auto"
    save_every_epoch: bool = False  # keep an adapter folder epoch-<e>/ per epoch
    save_steps: int | None = None  # extra checkpoint every N optimizer steps


@dataclass
class Run:
    """What all seeds of one call share: settings, tokenizer, tokenised data."""

    base_model: Path
    data: Path
    config: TrainConfig
    tokenizer: object
    train: list[Example]
    held: list[Example]
    device: torch.device
    progress: bool
    callback: Callable[[dict], None] | None = None

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.train) / (self.config.batch_size * self.config.grad_accum))

    @property
    def total_steps(self) -> int:
        return self.config.max_steps or self.config.epochs * self.steps_per_epoch

    @property
    def epochs(self) -> int:
        return math.ceil(self.total_steps / self.steps_per_epoch)


@dataclass
class State:
    """Where a run stands; saved in every checkpoint."""

    epoch: int = 0  # epoch in progress (== epochs when finished)
    batch: int = 0  # next optimizer batch within that epoch
    step: int = 0  # optimizer steps done
    losses: list = field(default_factory=list)
    eval_losses: list = field(default_factory=list)
    wall_s: float = 0.0
    identity: dict = field(default_factory=dict)  # settings this run belongs to
    init_digest: str = ""  # sha256 of the initial LoRA weights (shows what `vary` changed)


def make_config(config: TrainConfig | None = None, **options) -> TrainConfig:
    """A validated TrainConfig: `config` (or defaults) with `options` overriding fields."""
    names = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(options) - names)
    if unknown:
        raise SeedLoraError(f"unknown training option(s) {unknown}; valid options: {sorted(names)}")
    merged = TrainConfig(**{**asdict(config or TrainConfig()), **options})
    if isinstance(merged.eval_split, str):
        try:
            merged.eval_split = float(merged.eval_split)
        except ValueError:
            pass
    if isinstance(merged.target_modules, tuple):
        merged.target_modules = list(merged.target_modules)
    validate_config(merged)
    return merged


def validate_config(c: TrainConfig) -> None:
    """Raise SeedLoraError naming the option to fix for any out-of-range setting."""
    checks = [
        (c.vary in VARY, f"vary {c.vary!r} is not one of {VARY}; fix --vary"),
        (c.scheduler in SCHEDULERS, f"scheduler {c.scheduler!r} is not one of {SCHEDULERS}; fix --scheduler"),
        (c.rank >= 1, f"rank {c.rank} must be >= 1; fix --rank"),
        (c.lr > 0, f"learning rate {c.lr} must be > 0; fix --lr"),
        (c.epochs >= 1, f"epochs {c.epochs} must be >= 1; fix --epochs"),
        (c.max_steps is None or c.max_steps >= 1, f"max steps {c.max_steps} must be >= 1; fix --max-steps"),
        (c.batch_size >= 1 and c.grad_accum >= 1, "batch size and grad accumulation must be >= 1"),
        (0 <= c.warmup_ratio < 1, f"warm-up ratio {c.warmup_ratio} must be in [0, 1); fix --warmup-ratio"),
        (c.warmup_steps is None or c.warmup_steps >= 0, "warm-up steps must be >= 0; fix --warmup-steps"),
        (0 <= c.dropout < 1, f"LoRA dropout {c.dropout} must be in [0, 1); fix --dropout"),
        (c.max_length >= 2, f"max length {c.max_length} must be >= 2; fix --max-length"),
        (c.dtype in ("float32", "bfloat16", "float16"), f"dtype {c.dtype!r} must be float32, bfloat16 or float16"),
        (c.save_steps is None or c.save_steps >= 1, "save_steps must be >= 1"),
    ]
    for ok, message in checks:
        if not ok:
            raise SeedLoraError(message)


def run_seeds(config: TrainConfig, seed: int) -> dict[str, int | None]:
    """Seeds of one run: data order, batch composition (fixed-batches only), LoRA init, dropout."""
    fixed = config.fixed_seed
    return {
        "order": fixed if config.vary == "init" else seed,
        "compose": fixed if config.vary == "fixed-batches" else None,
        "init": seed if config.vary in ("init", "both") else fixed,
        "dropout": seed,
    }


def train_adapters(
    base_model: str | Path,
    data: str | Path,
    output_dir: str | Path,
    seeds: list[int],
    config: TrainConfig | None = None,
    *,
    resume: bool = True,
    overwrite: bool = False,
    progress: bool = True,
    callback: Callable[[dict], None] | None = None,
    **options,
) -> list[Path]:
    """Train one LoRA adapter per seed into output_dir/seed-<s>/ and return those folders.

    `options` are TrainConfig fields (rank=8, vary="init", epochs=2, ...). With `resume`, a
    finished seed folder with the same settings is kept and an interrupted one continues
    from its last checkpoint; `overwrite` replaces existing seed folders. `callback` gets a
    dict (seed, epoch, step, loss) after every optimizer step.
    """
    config = make_config(config, **options)
    seeds = [int(s) for s in seeds]
    if not seeds or len(set(seeds)) != len(seeds):
        raise SeedLoraError(f"seeds {seeds} must be a non-empty list of distinct integers; fix --seeds")
    run = train_io.prepare_run(Path(base_model), Path(data), config, progress, callback)
    return [train_seed(run, seed, Path(output_dir) / f"seed-{seed}", resume, overwrite) for seed in seeds]


@dataclass
class Session:
    """One seed's training in progress: the model and everything that must be checkpointed."""

    run: Run
    seed: int
    seeds: dict
    folder: Path
    model: object
    optimizer: torch.optim.Optimizer
    scheduler: object
    state: State

    def checkpoint(self, started: float) -> None:
        self.state.wall_s = time.perf_counter() - started
        train_io.save_checkpoint(self.folder, self.model, self.optimizer, self.scheduler, self.state)


def train_seed(run: Run, seed: int, folder: Path, resume: bool, overwrite: bool) -> Path:
    """Train (or finish, or skip) one seed's adapter in `folder`."""
    identity = train_io.identity(run, seed)
    checkpoint = train_io.claim_folder(folder, identity, resume, overwrite)
    if checkpoint == "done":
        return folder
    seeds = run_seeds(run.config, seed)
    with train_io.deterministic(run.device):
        model = train_io.build_model(run, seeds["init"])
        optimizer, scheduler = _optimizer(run, model)
        state = State(identity=identity, init_digest=train_io.digest(model))
        if checkpoint is not None:
            state = train_io.load_checkpoint(checkpoint, model, optimizer, scheduler)
        else:
            torch.manual_seed(module_generator(seeds["dropout"], "dropout").initial_seed())
        session = Session(run, seed, seeds, folder, model, optimizer, scheduler, state)
        _loop(session)
        losses = per_sample_losses(model, run.train, run.tokenizer.pad_token_id, run.config.batch_size, run.progress)
    train_io.write_outputs(run, seed, seeds, folder, model, session.state, losses)
    return folder


def _optimizer(run: Run, model):
    """AdamW over the trainable (LoRA) parameters and its warm-up schedule."""
    from transformers import get_scheduler

    c = run.config
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=c.lr, weight_decay=c.weight_decay)
    warmup = c.warmup_steps if c.warmup_steps is not None else math.ceil(c.warmup_ratio * run.total_steps)
    name = "constant_with_warmup" if c.scheduler == "constant" else c.scheduler
    return optimizer, get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=run.total_steps)


def _loop(s: Session) -> None:
    """Train from the saved position to the end; checkpoint at every epoch end and save_steps."""
    run, state, started = s.run, s.state, time.perf_counter() - s.state.wall_s
    unit, save_steps = run.config.batch_size * run.config.grad_accum, run.config.save_steps
    with tqdm(total=run.total_steps, initial=state.step, desc=f"seed {s.seed}", disable=not run.progress) as bar:
        s.model.train()
        for epoch in range(state.epoch, run.epochs):
            batches = plan_epoch(len(run.train), unit, epoch, s.seeds["order"], s.seeds["compose"])
            for index in range(state.batch, len(batches)):
                if state.step >= run.total_steps:
                    break
                lr = s.scheduler.get_last_lr()[0]
                loss = optimizer_step(run, s.model, s.optimizer, s.scheduler, [run.train[i] for i in batches[index]])
                state.step, state.batch = state.step + 1, index + 1
                state.losses.append({"step": state.step, "epoch": epoch, "loss": loss, "lr": lr})
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}")
                if run.callback is not None:
                    run.callback({"seed": s.seed, "epoch": epoch, "step": state.step, "loss": loss})
                if save_steps and state.step % save_steps == 0 and state.batch < len(batches):
                    s.checkpoint(started)
            state.epoch, state.batch = epoch + 1, 0
            train_io.end_epoch(run, s.folder, s.model, state, epoch)
            s.checkpoint(started)


def optimizer_step(run: Run, model, optimizer, scheduler, batch: list[Example]) -> float:
    """One optimizer step over `batch` in micro-batches; loss is the mean over its scored tokens."""
    c = run.config
    n_tokens = max(1, sum(scored_tokens(ex) for ex in batch))
    total = 0.0
    for start in range(0, len(batch), c.batch_size):
        micro = collate(batch[start : start + c.batch_size], run.tokenizer.pad_token_id)
        micro = {k: v.to(run.device) for k, v in micro.items()}
        logits = model(input_ids=micro["input_ids"], attention_mask=micro["attention_mask"], use_cache=False).logits
        loss = token_losses(logits, micro["labels"])[0].sum() / n_tokens
        loss.backward()
        total += loss.item()
    if c.max_grad_norm:
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], c.max_grad_norm)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return total
