"""`seedlora merge --config FILE`: a config file's settings under the command line's.

Every merge flag has a config key (seedlora.config.KEYS). The merge flags default to None, so
a value given on the command line is one that is not None: it wins over the file's; what
neither gives takes `DEFAULTS`. Method parameter flags (--density, ...) override the file's
`params` one by one; inputs given on the command line replace the file's inputs (and their
per-input weights, unless --weights is given).
"""

from __future__ import annotations

import argparse

from ..config import load_config
from ..errors import ConfigError

# what a merge takes when neither the command line nor the config gives a value
DEFAULTS = {"method": "linear", "seed": 0, "fuse": False, "vllm": False, "strict": False, "overwrite": False}
# config keys that are not one argparse destination of their own
NOT_FLAGS = ("inputs", "params", "weights")


def apply_config(args: argparse.Namespace) -> argparse.Namespace:
    """Fill `args` (parsed `seedlora merge` arguments) from args.config, then DEFAULTS; returns args."""
    settings = load_config(args.config) if getattr(args, "config", None) else {}
    for key, value in settings.items():
        if key in NOT_FLAGS:
            continue
        if not hasattr(args, key):
            raise ConfigError(f"{args.config}: key {key!r} has no matching option in this seedlora; remove it")
        if getattr(args, key) is None:
            setattr(args, key, value)
    if not args.inputs and settings.get("inputs"):
        args.inputs = list(settings["inputs"])
        if args.weights is None:
            args.weights = settings.get("weights")
    args.config_params = dict(settings.get("params", {}))
    for key, value in DEFAULTS.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    return args


def merged_params(config_params: dict, given: dict) -> dict:
    """The config's method parameters, each overridden by the one given on the command line."""
    return {**config_params, **given}
