"""Every setting that changes a trained adapter, validated before anything is loaded.

A TrainConfig starts from a named preset (seedlora/train/presets.py, default `papers`) and
explicit options override it. `run_seeds` says what a run's seed controls under `vary`:
the Trainer's `seed` (LoRA init, dropout) and `data_seed` (order of the data).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from ..errors import SeedLoraError
from .presets import DEFAULT_PRESET, PRESETS

VARY = ("order", "init", "both", "fixed-batches")
SCHEDULERS = ("linear", "cosine", "constant")
PRECISIONS = ("no", "bf16", "fp16")
DTYPES = ("float32", "bfloat16", "float16")


@dataclass
class TrainConfig:
    """Settings of one training call (saved in each seed's train_log.json)."""

    preset: str | None = DEFAULT_PRESET
    vary: str = "both"
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: list[str] | str | None = None  # None: PEFT's default for the architecture
    lr: float = 2e-4
    weight_decay: float = 0.0
    warmup_ratio: float = 0.03
    warmup_steps: int | None = None  # overrides warmup_ratio when set
    scheduler: str = "cosine"
    epochs: int = 3
    max_steps: int | None = None  # overrides epochs when set
    batch_size: int = 8  # per process
    grad_accum: int = 1
    max_grad_norm: float | None = 1.0
    max_length: int = 512
    eval_split: float | str | None = None  # fraction held out, or a separate file
    prompt_field: str = "prompt"
    completion_field: str = "completion"
    text_field: str | None = None
    messages_field: str = "messages"
    chat_template: str = "auto"  # auto | none | path of a Jinja template
    split: str | None = None  # split of a datasets folder or name
    fixed_seed: int = 0  # seeds whatever `vary` holds fixed, and the eval split
    load_in_4bit: bool = False
    dtype: str = "float32"  # dtype the base weights are loaded in
    mixed_precision: str = "no"  # autocast: bf16 / fp16 (fp16 needs CUDA)
    gradient_checkpointing: bool = False
    deterministic: bool = True  # TrainingArguments.full_determinism
    device: str = "auto"  # auto | cpu | cuda
    save_every_epoch: bool = False  # keep an adapter folder epoch-<e>/ per epoch
    save_steps: int | None = None  # extra checkpoint every N optimizer steps


NOT_RESULT = ("save_every_epoch", "save_steps", "device")  # settings that do not change the adapter


def make_config(config: TrainConfig | None = None, **options) -> TrainConfig:
    """A validated TrainConfig: `config` (or the preset named in options) with `options` on top."""
    names = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(options) - names)
    if unknown:
        raise SeedLoraError(f"unknown training option(s) {unknown}; valid options: {sorted(names)}")
    base = asdict(config) if config is not None else asdict(TrainConfig())
    preset = options.get("preset", base["preset"] if config is not None else DEFAULT_PRESET)
    if preset is not None and preset not in PRESETS:
        raise SeedLoraError(f"unknown preset {preset!r}; use one of {sorted(PRESETS)} (fix --preset)")
    if preset is not None and (config is None or "preset" in options):
        base.update(PRESETS[preset])
    merged = TrainConfig(**{**base, **options, "preset": preset})
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
        (c.dtype in DTYPES, f"dtype {c.dtype!r} must be one of {DTYPES}; fix --dtype"),
        (c.mixed_precision in PRECISIONS, f"mixed precision {c.mixed_precision!r} must be one of {PRECISIONS}"),
        (c.device in ("auto", "cpu", "cuda"), f"device {c.device!r} must be auto, cpu or cuda "
                                              "(pick GPUs with CUDA_VISIBLE_DEVICES); fix --device"),
        (c.save_steps is None or c.save_steps >= 1, "save_steps must be >= 1; fix --save-steps"),
    ]
    for ok, message in checks:
        if not ok:
            raise SeedLoraError(message)


def run_seeds(config: TrainConfig, seed: int) -> dict[str, int | None]:
    """Seeds of one run: `init` (TrainingArguments.seed: LoRA init, dropout), `order`
    (TrainingArguments.data_seed), and `compose` (fixed-batches only: the batches' contents)."""
    fixed = config.fixed_seed
    return {
        "init": seed if config.vary in ("init", "both") else fixed,
        "order": fixed if config.vary == "init" else seed,
        "compose": fixed if config.vary == "fixed-batches" else None,
    }
