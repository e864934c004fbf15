"""Training K seed adapters of one base model on one task (the merge core never imports this).

    from seedlora.train import train_adapters
    train_adapters("base/", "train.csv", "runs/", seeds=[0, 1, 2], preset="papers")

Modules: config (settings, what `vary` seeds), presets, sources (files, folders, dataset
names), chat (chat templates), data (the one loader of training and evaluation), batches
(collation, losses, the epoch plan), model (base + seeded LoRA), trainer (transformers.Trainer
with our sampler and per-sample losses), callbacks, outputs (seed folders), run (the entry).
"""

from .config import TrainConfig, make_config
from .data import DataFormat, Example, load_examples, load_tokenizer
from .presets import PRESETS
from .run import train_adapters

__all__ = ["DataFormat", "Example", "PRESETS", "TrainConfig", "load_examples", "load_tokenizer", "make_config", "train_adapters"]
