"""The resolved merge config every output folder holds: `seedlora merge --config` on it redoes the merge.

Resolved means: the method's parameters with their defaults filled in, the weights the merge
used, Hub inputs pinned to the commit they resolved to (`org/name@commit`), and the output
options that change the files (rank, dtype, vllm, fuse, shard_size, strict). The output folder
itself, overwrite and execution choices (device, threads) are left out, so a re-run into
another folder writes the same bytes, this file included.
"""

from __future__ import annotations

from ..config import dump_config
from ..sources.identity import display_name

CONFIG_NAME = "seedlora_config.yaml"


def resolved_settings(plan, **options) -> dict:
    """The settings of the merge `plan` describes, plus the sink's `options` (None ones left out)."""
    settings = {
        "inputs": [display_name(s) if s.files() else f"peft_model_adapter:{s.path}" for s in plan.sources],
        "weights": [float(w) for w in plan.weights],
        "method": plan.method.name,
        "params": dict(plan.params),
        "seed": int(plan.seed),
        "base": display_name(plan.base) if plan.base is not None else None,
        "strict": bool(plan.strict),
        **options,
    }
    return {key: value for key, value in settings.items() if value is not None}


def config_text(plan, **options) -> str:
    """The YAML text of resolved_settings: byte-identical for the same merge."""
    return dump_config(resolved_settings(plan, **options))
