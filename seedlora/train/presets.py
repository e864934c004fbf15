"""Named sets of training settings, so results can be reproduced by name instead of by hand.

`papers` is the regime of the seed-merging papers (SeedLoRA, parameter selection): 3 epochs,
a cosine schedule after 3 % warm-up, rank 8, seeds that change both the data order and the
LoRA init, and the learning rate usual for LoRA in that setting (2e-4). It is the default of
`seedlora train`. `quick` is the short regime of this project's first experiment (one epoch,
lr 1e-3, 10 % linear warm-up): minutes on a CPU, far from convergence. Explicit options always
win over the preset; the preset's name and the final settings are saved in train_log.json.
"""

from __future__ import annotations

PRESETS: dict[str, dict] = {
    "papers": {
        "epochs": 3, "scheduler": "cosine", "warmup_ratio": 0.03, "warmup_steps": None, "lr": 2e-4,
        "rank": 8, "alpha": 16.0, "dropout": 0.0, "vary": "both", "batch_size": 8, "grad_accum": 1,
        "weight_decay": 0.0, "max_grad_norm": 1.0,
    },
    "quick": {
        "epochs": 1, "scheduler": "linear", "warmup_ratio": 0.1, "warmup_steps": None, "lr": 1e-3,
        "rank": 8, "alpha": 16.0, "dropout": 0.0, "vary": "both", "batch_size": 8, "grad_accum": 1,
        "weight_decay": 0.0, "max_grad_norm": 1.0,
    },
}
DEFAULT_PRESET = "papers"


def describe(name: str) -> str:
    """One line: the preset's settings, as printed by `seedlora train --help`."""
    values = PRESETS[name]
    keys = ("epochs", "lr", "scheduler", "warmup_ratio", "rank", "alpha", "vary", "batch_size")
    return f"{name}: " + ", ".join(f"{k}={values[k]}" for k in keys)
