"""Train K LoRA adapters of one base model on one dataset, one per seed, reproducibly.

Each seed is one `transformers.Trainer` run (seedlora/train/trainer.py) with
`TrainingArguments(seed=<init seed>, data_seed=<order seed>, full_determinism=True)`; `vary`
picks what the run's seed changes (seedlora/train/config.py). Same settings and seed give a
byte-identical adapter; an interrupted seed resumes from its last checkpoint
(`resume_from_checkpoint`) to the same adapter; a finished one is kept. Started with
`torchrun --nproc_per_node N -m seedlora train ...` or `accelerate launch -m seedlora train ...`
the same code trains data-parallel; `batch_size` is then per process.
"""

from __future__ import annotations

import hashlib
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import SeedLoraError
from . import outputs
from .config import TrainConfig, make_config, run_seeds
from .data import DataFormat, Example, load_examples, load_tokenizer, split_examples


@dataclass
class Run:
    """What all seeds of one call share: settings, tokenizer, tokenised data, device."""

    base_model: Path
    data_path: str  # resolved file/folder path, or the dataset name
    config: TrainConfig
    tokenizer: object
    train: list[Example]
    held: list[Example]
    device: str
    processes: int = 1
    progress: str | None = None  # 'bar', 'lines' or None
    log_every: int = 10
    callbacks: list = field(default_factory=list)

    @property
    def data_digest(self) -> str:
        """sha256 of the tokenised training and held-out examples: the data as the model sees it."""
        hasher = hashlib.sha256()
        for part in (self.train, self.held):
            for ex in part:
                hasher.update(repr((ex.index, ex.input_ids, ex.labels)).encode())
            hasher.update(b"|")
        return hasher.hexdigest()

    @property
    def global_batch(self) -> int:
        return self.config.batch_size * self.config.grad_accum * self.processes

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.train) / self.global_batch)

    @property
    def total_steps(self) -> int:
        return self.config.max_steps or self.config.epochs * self.steps_per_epoch

    @property
    def epochs(self) -> int:
        return math.ceil(self.total_steps / self.steps_per_epoch)


def data_format(config: TrainConfig) -> DataFormat:
    """The loader options of a TrainConfig (the evaluator builds the same from its flags)."""
    return DataFormat(config.prompt_field, config.completion_field, config.text_field, config.messages_field,
                      config.chat_template, config.split, config.max_length)


def prepare_run(base: Path, data, config: TrainConfig, progress, log_every: int = 10, callbacks=()) -> Run:
    """Check inputs, pick the device, load the tokenizer and tokenise the data once."""
    from accelerate import PartialState

    from .model import check_device, resolve_base

    base = resolve_base(base)
    if not (Path(base) / "config.json").is_file():
        raise SeedLoraError(f"base model folder {base} has no config.json; pass a local transformers model folder")
    device = check_device(config)
    tokenizer = load_tokenizer(base)
    fmt = data_format(config)
    train, held = load_examples(data, tokenizer, fmt), []
    if isinstance(config.eval_split, float):
        train, held = split_examples(train, config.eval_split, config.fixed_seed)
    elif config.eval_split is not None:
        held = load_examples(config.eval_split, tokenizer, DataFormat(**{**fmt.__dict__, "split": None}))
    data_path = str(Path(data).resolve()) if Path(str(data)).exists() else str(data)
    mode = _progress_mode(progress)
    processes = PartialState(cpu=device == "cpu").num_processes
    return Run(Path(base), data_path, config, tokenizer, train, held, device, processes, mode, log_every, list(callbacks))


def _progress_mode(progress) -> str | None:
    """True: a bar on a terminal, lines otherwise; or 'bar' / 'lines' / False."""
    if progress is True:
        return "bar" if sys.stderr.isatty() else "lines"
    return progress or None


def train_adapters(
    base_model: str | Path,
    data: str | Path,
    output_dir: str | Path,
    seeds: list[int],
    config: TrainConfig | None = None,
    *,
    resume: bool = True,
    overwrite: bool = False,
    progress: bool | str = True,
    log_every: int = 10,
    callbacks: list | tuple = (),
    **options,
) -> list[Path]:
    """Train one LoRA adapter per seed into output_dir/seed-<s>/ and return those folders.

    `options` are TrainConfig fields (preset="quick", rank=8, vary="init", epochs=2, ...).
    With `resume`, a finished seed folder with the same settings is kept and an interrupted
    one continues from its last checkpoint; `overwrite` replaces existing seed folders.
    `progress`: True (a bar on a terminal, else a line every `log_every` steps), 'bar',
    'lines' or False. `callbacks` are extra transformers TrainerCallbacks.
    """
    config = make_config(config, **options)
    seeds = [int(s) for s in seeds]
    if not seeds or len(set(seeds)) != len(seeds):
        raise SeedLoraError(f"seeds {seeds} must be a non-empty list of distinct integers; fix --seeds")
    run = prepare_run(Path(base_model), data, config, progress, log_every, callbacks)
    return [train_seed(run, seed, Path(output_dir) / f"seed-{seed}", resume, overwrite) for seed in seeds]


def train_seed(run: Run, seed: int, folder: Path, resume: bool, overwrite: bool) -> Path:
    """Train (or finish, or skip) one seed's adapter in `folder`."""
    from accelerate import PartialState

    state = PartialState()
    ident = outputs.identity(run, seed)
    checkpoint = outputs.claim_folder(folder, ident, resume, overwrite)
    state.wait_for_everyone()
    if checkpoint == "done":
        return folder
    if state.is_main_process:
        outputs.prepare_folder(folder, ident, checkpoint)
    state.wait_for_everyone()
    with outputs.restored_globals(run.device):
        history = _fit(run, seed, folder, checkpoint, ident)
        if state.is_main_process:
            outputs.write_outputs(run, seed, history["seeds"], folder, history.pop("model"), history)
    state.wait_for_everyone()
    return folder


def _fit(run: Run, seed: int, folder: Path, checkpoint, ident: dict) -> dict:
    """One Trainer run; returns the model and what train_log.json records."""
    from transformers.trainer_callback import PrinterCallback

    from .batches import ExampleDataset, collate
    from .callbacks import EpochEnd, Progress, SampleLosses
    from .model import build_model, digest
    from .trainer import SeedTrainer, training_arguments

    seeds = run_seeds(run.config, seed)
    args = training_arguments(folder, run.config, seeds, run.device, bool(run.held))
    model = build_model(run.base_model, run.config, seeds["init"])
    init_digest = digest(model)
    recorder = SampleLosses(args.process_index)
    if checkpoint is not None:
        recorder.load(checkpoint)
    pad = run.tokenizer.pad_token_id
    trainer = SeedTrainer(
        model=model, args=args, train_dataset=ExampleDataset(run.train),
        eval_dataset=ExampleDataset(run.held) if run.held else None, data_collator=lambda rows: collate(rows, pad),
        callbacks=[recorder, EpochEnd(folder, run.config.save_every_epoch), *run.callbacks],
        plan={"global_batch": run.global_batch, "order": seeds["order"], "compose": seeds["compose"]}, recorder=recorder,
    )
    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(Progress(seed, run.progress, run.log_every))
    started = time.perf_counter()
    trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint is not None else None)
    history = trainer.state.log_history
    return {
        "model": trainer.model, "seeds": seeds, "identity": ident, "init_digest": init_digest,
        "steps": trainer.state.global_step, "records": recorder.gathered(),
        "losses": [{"step": h["step"], "epoch": h["epoch"], "loss": h["loss"], "lr": h["learning_rate"]}
                   for h in history if "loss" in h],
        "eval_losses": [{"epoch": round(h["epoch"]) - 1, "step": h["step"], "loss": h["eval_loss"]}
                        for h in history if "eval_loss" in h],
        "wall_s": time.perf_counter() - started, "resumed_from": checkpoint.name if checkpoint is not None else None,
        "steps_run": trainer.state.global_step - (int(checkpoint.name.split("-")[-1]) if checkpoint is not None else 0),
    }
