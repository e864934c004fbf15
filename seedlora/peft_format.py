"""PEFT's LoRA adapter format, both ways: the one place that knows it.

- Key grammar: what each tensor of `adapter_model.safetensors` is (`parse_key`) and what to name
  it when writing (`factor_keys`, `bias_key`, ...): linear and Conv1D factors (`lora_A/B.weight`),
  embedding factors (`lora_embedding_A/B`), LoRA bias (`lora_B.bias`), DoRA magnitudes,
  the base-layer copies of `save_embedding_layers`, and `modules_to_save` tensors, with or without
  an adapter name inside the key.
- Scale rules: rank and alpha per module (`rank_pattern`/`alpha_pattern` with PEFT's own
  first-match rule), scale alpha/r or alpha/sqrt(r) (rsLoRA), PEFT's defaults (r = 8, alpha = 8).
- Targeting: which module names a config wraps (`targets`), PEFT's rules for lists, regexes,
  `layers_to_transform`/`layers_pattern` and `exclude_modules`.
- Features: `FEATURES`, the one list of what merges exactly, what only fuses, and what is refused,
  with the reason for each; `refused_features(config)` applies it to a config.
- Writing: `adapter_config(...)`, a config PEFT and vLLM read as exactly the merged update.
Written against PEFT 0.21 (tuners/lora/layer.py, tuners/tuners_utils.py, utils/save_and_load.py).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Optional, Sequence

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
BIN_NAME = "adapter_model.bin"
KEY_PREFIX = "base_model.model."
DEFAULT_RANK = 8  # LoraConfig defaults, used when a config omits r / lora_alpha
DEFAULT_ALPHA = 8

# ------------------------------------------------------------------ key grammar: reading
_LORA_KEY = re.compile(
    r"^(?P<module>.+?)\.(?P<part>lora_embedding_A|lora_embedding_B|lora_A|lora_B|lora_magnitude_vector)"
    r"(?:\.(?P<adapter>(?!weight$|bias$)[^.]+))?(?P<suffix>\.weight|\.bias)?$"
)
_ROLES = {"lora_A": "A", "lora_B": "B", "lora_embedding_A": "A", "lora_embedding_B": "B", "lora_magnitude_vector": "magnitude"}


@dataclass(frozen=True)
class KeyRole:
    """What one stored tensor is: its module and its role there.

    role: "A", "B" (factors), "bias" (lora_B.bias), "magnitude" (DoRA), "base_copy" (the base
    layer saved by save_embedding_layers), "saved" (a modules_to_save tensor; `param` names it).
    """

    module: str
    role: str
    embedding: bool = False
    param: Optional[str] = None
    adapter: Optional[str] = None  # an adapter name kept inside the key (PEFT strips it; vLLM refuses it)


def strip_prefix(key: str) -> str:
    return key[len(KEY_PREFIX):] if key.startswith(KEY_PREFIX) else key


def parse_key(key: str, modules_to_save: Sequence[str] = ()) -> Optional[KeyRole]:
    """The role of a stored tensor, or None when the key is none of PEFT's LoRA keys."""
    name = re.sub(r"\.modules_to_save\.[^.]+\.", ".", strip_prefix(key))  # a wrapper's copy, as older PEFT saved it
    match = _LORA_KEY.match(name)
    if match is not None:
        role = _ROLES[match["part"]]
        if match["suffix"] == ".bias":
            if role != "B":
                return None
            role = "bias"
        return KeyRole(match["module"], role, embedding=match["part"].startswith("lora_embedding"), adapter=match["adapter"])
    if name.endswith(".base_layer.weight"):
        return KeyRole(name[: -len(".base_layer.weight")], "base_copy")
    module = saved_module_of(name, modules_to_save)
    if module is not None:
        return KeyRole(module, "saved", param=name[len(module) + 1:])
    return None


def saved_module_names(config: dict) -> list:
    """modules_to_save entries, plus the output head PEFT saves beside a tied embedding (ensure_weight_tying)."""
    names = list(config.get("modules_to_save") or ())
    if names and config.get("ensure_weight_tying"):
        names += list(config.get("modules_to_tie") or ("lm_head",))
    return names


def saved_module_of(name: str, modules_to_save: Sequence[str]) -> Optional[str]:
    """The modules_to_save module a tensor name belongs to (PEFT matches module names by suffix)."""
    parts = name.split(".")
    for end in range(1, len(parts)):
        module = ".".join(parts[:end])
        if any(module.endswith(entry) for entry in modules_to_save or ()):
            return module
    return None


# ------------------------------------------------------------------ key grammar: writing
def factor_keys(module: str, embedding: bool) -> tuple[str, str]:
    """(A key, B key) as PEFT saves them: embeddings have no `.weight` suffix."""
    if embedding:
        return f"{KEY_PREFIX}{module}.lora_embedding_A", f"{KEY_PREFIX}{module}.lora_embedding_B"
    return f"{KEY_PREFIX}{module}.lora_A.weight", f"{KEY_PREFIX}{module}.lora_B.weight"


def bias_key(module: str) -> str:
    return f"{KEY_PREFIX}{module}.lora_B.bias"


def base_copy_key(module: str) -> str:
    return f"{KEY_PREFIX}{module}.base_layer.weight"


def saved_key(module: str, param: str) -> str:
    return f"{KEY_PREFIX}{module}.{param}"


# ------------------------------------------------------------------ scale rules
def pattern_value(patterns: Optional[dict], module: str, default):
    """PEFT's rule (utils/other.py get_pattern_key): the first key k with
    re.match(rf"(.*\\.)?({k})$", module) wins; otherwise `default`."""
    for key, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def module_rank(config: dict, module: str) -> int:
    return int(pattern_value(config.get("rank_pattern"), module, config.get("r", DEFAULT_RANK)))


def module_alpha(config: dict, module: str) -> float:
    return float(pattern_value(config.get("alpha_pattern"), module, config.get("lora_alpha", DEFAULT_ALPHA)))


def lora_scale(alpha: float, rank: int, use_rslora: bool) -> float:
    """PEFT's scaling: alpha / r, or alpha / sqrt(r) with rsLoRA."""
    return alpha / math.sqrt(rank) if use_rslora else alpha / rank


# ------------------------------------------------------------------ targeting
def targets(config: dict, module: str) -> bool:
    """Whether PEFT wraps `module` under this config (tuners_utils.check_target_module_exists).

    `all-linear` cannot be decided from a name; it is treated as "any module" here.
    """
    excluded = config.get("exclude_modules")
    if excluded and _listed(excluded, module):
        return False
    saved = config.get("modules_to_save") or ()
    if any(re.match(rf"(^|.*\.){m}($|\..*)", module) for m in saved):
        return False
    target = config.get("target_modules")
    if target is None or target == "all-linear":
        return True
    if isinstance(target, str):
        return re.fullmatch(target, module) is not None
    if module in target:
        return True
    return any(module.endswith(f".{t}") for t in target) and _in_layers(config, module)


def _listed(entries, module: str) -> bool:
    if isinstance(entries, str):
        return re.fullmatch(entries, module) is not None
    return module in entries or any(module.endswith(f".{e}") for e in entries)


def _in_layers(config: dict, module: str) -> bool:
    indexes = config.get("layers_to_transform")
    if indexes is None or indexes == []:
        return True
    patterns = config.get("layers_pattern")
    if not patterns:
        match = re.match(r".*?\.[^.]*\.(?P<idx>\d+)\.", module)
    else:
        match = None
        for pattern in [patterns] if isinstance(patterns, str) else patterns:
            match = re.match(rf"(?:^|.*?\.){pattern}\.(?P<idx>\d+)\.", module)
            if match:
                break
    if match is None:
        return False
    index = int(match["idx"])
    return index == indexes if isinstance(indexes, int) else index in indexes


# ------------------------------------------------------------------ features
@dataclass(frozen=True)
class Feature:
    """One PEFT feature: how seedlora handles it and why."""

    name: str
    config_key: str
    support: str  # "exact", "fused or --rank" or "refused"
    reason: str


FEATURES = (
    Feature("plain LoRA, Conv1D (fan_in_fan_out), rsLoRA, rank/alpha patterns", "r", "exact",
            "the update s·B·A is read with PEFT's own scale rules"),
    Feature("embedding targets (lora_embedding_A/B)", "target_modules", "exact",
            "same algebra; written back under PEFT's embedding keys"),
    Feature("save_embedding_layers copies of the base layer", "target_modules", "exact",
            "the copies must agree across inputs; carried into the output as PEFT loaded them"),
    Feature("LoRA bias (lora_bias)", "lora_bias", "exact",
            "s·lora_B.bias is part of the update; merged as its own tensor by the same method"),
    Feature("modules_to_save", "modules_to_save", "exact",
            "full modules: linear soup Σ w_i M_i, other methods merge M_i − M_base (needs --base)"),
    Feature("differing target sets, layers_to_transform", "layers_to_transform", "exact",
            "a module an input does not adapt is a zero update for it (reported; --strict refuses)"),
    Feature("DoRA (use_dora)", "use_dora", "fused or --rank",
            "its update m/‖W+sBA‖·(W+sBA) − W is not low-rank: exact when fused, a plain LoRA only by truncation"),
    Feature("base model biases (bias='all'/'lora_only')", "bias", "refused",
            "trains the base layers' own bias vectors, which are not merged; retrain with bias='none' (lora_bias=True is supported)"),
    Feature("trainable tokens (trainable_token_indices)", "trainable_token_indices", "refused",
            "per-token embedding deltas are not merged; merge_and_unload them into the base first"),
    Feature("LoRA on parameters (target_parameters)", "target_parameters", "refused",
            "LoRA on raw parameters (e.g. MoE experts) has another key layout"),
    Feature("layer_replication", "layer_replication", "refused", "the adapter changes the model's layer structure"),
    Feature("Activated LoRA (alora_invocation_tokens)", "alora_invocation_tokens", "refused",
            "the update applies only after invocation tokens, so it is not a weight update"),
    Feature("QALoRA (use_qalora)", "use_qalora", "refused", "A acts on pooled inputs: the update is not B·A"),
    Feature("block-diagonal LoRA (use_bdlora)", "use_bdlora", "refused", "another factor layout"),
    Feature("KaSA, VeLoRA, MonteCLoRA, Arrow variants", "kasa_config", "refused",
            "the variant changes the forward pass: the update is not s·B·A"),
    Feature("Megatron parallel layers (megatron_config)", "megatron_config", "refused", "sharded factor layout"),
    Feature("base-modifying inits (PiSSA, OLoRA, CorDA, LoftQ, LoRA-GA) not converted", "init_lora_weights", "refused",
            "the update is relative to a modified base; save with path_initial_model_for_weight_conversion"),
)
_VARIANT_KEYS = ("kasa_config", "velora_config", "monteclora_config", "arrow_config")
_BASE_MODIFYING_INITS = ("pissa", "olora", "corda", "loftq", "lora_ga")


def refused_features(config: dict) -> list[str]:
    """'<feature>: <reason>' for every refused feature this config uses."""
    found = []
    peft_type = str(config.get("peft_type", "LORA")).upper()
    if peft_type != "LORA":
        found.append(f"peft_type {peft_type}: seedlora merges LoRA adapters only")
    for feature in FEATURES:
        if feature.support != "refused":
            continue
        if _uses(config, feature.config_key):
            found.append(f"{feature.name}: {feature.reason}")
    return found


def _uses(config: dict, key: str) -> bool:
    if key == "bias":
        return config.get("bias", "none") not in (None, "none")
    if key == "kasa_config":
        return any(config.get(k) for k in _VARIANT_KEYS)
    if key == "init_lora_weights":
        init = config.get("init_lora_weights", True)
        return isinstance(init, str) and init.lower().startswith(_BASE_MODIFYING_INITS)
    return bool(config.get(key))


# ------------------------------------------------------------------ writing
def adapter_config(
    first: dict,
    rank: int,
    target_modules,
    lora_bias: bool = False,
    modules_to_save: Optional[Sequence[str]] = None,
    layers: Optional[dict] = None,
) -> dict:
    """A LoRA config PEFT and vLLM read as: every module rank `rank`, scale exactly 1.

    Written as a plain dict (PEFT fills any field it lacks with its default), so writing an
    adapter does not import peft. `layers` carries layers_to_transform/layers_pattern when the
    inputs share them; otherwise `target_modules` lists the exact module names.
    """
    layers = layers or {}
    return {
        "peft_type": "LORA",
        "task_type": first.get("task_type"),
        "base_model_name_or_path": first.get("base_model_name_or_path"),
        "r": rank,
        "lora_alpha": rank,
        "target_modules": target_modules,
        "rank_pattern": {},
        "alpha_pattern": {},
        "use_rslora": False,
        "use_dora": False,
        "lora_dropout": 0.0,
        "bias": "none",
        "lora_bias": bool(lora_bias),
        "fan_in_fan_out": bool(first.get("fan_in_fan_out", False)),
        "layers_to_transform": layers.get("layers_to_transform"),
        "layers_pattern": layers.get("layers_pattern"),
        "modules_to_save": sorted(modules_to_save) if modules_to_save else None,
        "init_lora_weights": True,
        "inference_mode": True,
    }
