"""Merge configs: a YAML file that describes a merge, read strictly and written byte-for-byte the same.

    inputs:                      # folders or Hub ids; a plain string or a mapping
      - path: adapters/seed-0
        weight: 0.5              # optional, all inputs or none
        density: 0.3             # optional: the method's density, the same for every input
      - adapters/seed-1
    method: ties
    params: {majority_sign: total}
    base: HuggingFaceTB/SmolLM2-135M-Instruct
    output: merged/
    rank: 16
    dtype: float32
    seed: 0

Every `seedlora merge` flag has a key (`KEYS`); relative paths are relative to the working
directory, as on the command line. `load_config` refuses unknown keys and wrong types with one
line naming the file and the key; `dump_config` writes the resolved config every output folder
holds (fixed key order, no timestamps), which `load_config` reads back to the same merge.
Pure: no files other than the one named are read, nothing is merged here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from .errors import ConfigError

NUMBER = (int, float)
SCALAR = (str, int, float, bool)
# key -> (accepted types, what to write in an error); order = the order dump_config writes
KEYS = {
    "inputs": (list, "a list of folders / Hub ids, or of mappings with path, weight, density"),
    "method": (str, "a method name (see `seedlora methods`)"),
    "params": (dict, "a mapping of method parameter names to values"),
    "weights": (list, "a list of numbers, one per input"),
    "seed": (int, "an integer"),
    "base": (str, "a folder or Hub id"),
    "fuse": (bool, "true or false"),
    "rank": (int, "a positive integer"),
    "dtype": (str, "float32, float16 or bfloat16"),
    "vllm": (bool, "true or false"),
    "shard_size": ((str, int), "a size such as 2GB, or a number of bytes"),
    "strict": (bool, "true or false"),
    "output": (str, "a folder"),
    "overwrite": (bool, "true or false"),
    "device": (str, "a torch device such as cpu or cuda"),
    "threads": (int, "an integer"),
}
INPUT_KEYS = {"path": (str, "a folder or Hub id"), "weight": (NUMBER, "a number"), "density": (NUMBER, "a number")}
HEADER = "# seedlora merge config (resolved); re-run with: seedlora merge --config seedlora_config.yaml -o OUTPUT\n"


def load_config(path) -> dict:
    """The validated settings of config file `path`: {key: value} with only the keys it sets.

    `inputs` becomes a list of {"path", "weight"?, "density"?}; per-input weights become
    `weights`, a shared per-input density becomes params["density"].
    """
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config ({exc.strerror or exc}); pass an existing YAML file") from None
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        raise ConfigError(f"{path}: not valid YAML{line} ({getattr(exc, 'problem', None) or exc}); fix the file") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys (inputs, method, output, ...), got {type(data).__name__}")
    return validate(data, str(path))


def validate(data: dict, where: str = "config") -> dict:
    """`data` checked key by key (see load_config); raises ConfigError naming the key."""
    unknown = sorted(str(k) for k in data if k not in KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}; known keys: {', '.join(KEYS)}")
    settings = {}
    for key, value in data.items():
        if value is None:
            continue
        settings[key] = check_type(value, *KEYS[key], f"{where}: {key}")
    if "params" in settings:
        settings["params"] = check_params(settings["params"], where)
    if "weights" in settings:
        settings["weights"] = [check_type(w, NUMBER, "a number", f"{where}: weights[{i}]") for i, w in enumerate(settings["weights"])]
    if "inputs" in settings:
        settings.update(split_inputs(settings.pop("inputs"), settings, where))
    return settings


def check_type(value, kinds, expected: str, where: str):
    """`value` if it is of `kinds` (a bool is not a number), else a one-line ConfigError."""
    kinds = kinds if isinstance(kinds, tuple) else (kinds,)
    is_bool = isinstance(value, bool)
    if not isinstance(value, kinds) or (is_bool and bool not in kinds):
        raise ConfigError(f"{where} must be {expected}, got {value!r} ({type(value).__name__})")
    return float(value) if kinds == NUMBER else value


def check_params(params: dict, where: str) -> dict:
    for name, value in params.items():
        if not isinstance(name, str) or not isinstance(value, SCALAR):
            raise ConfigError(f"{where}: params.{name} must be a number, string or true/false, got {value!r}")
    return dict(params)


def split_inputs(entries: list, settings: dict, where: str) -> dict:
    """inputs -> {"inputs": [paths], "weights"?: [...], "params"?: {"density": ...}}."""
    paths, weights, densities = [], [], []
    for i, entry in enumerate(entries):
        name = f"{where}: inputs[{i}]"
        if isinstance(entry, str):
            entry = {"path": entry}
        if not isinstance(entry, dict):
            raise ConfigError(f"{name} must be a folder / Hub id or a mapping with path (and weight, density), got {entry!r}")
        unknown = sorted(str(k) for k in entry if k not in INPUT_KEYS)
        if unknown or "path" not in entry:
            problem = f"unknown key {unknown[0]!r}" if unknown else "has no path"
            raise ConfigError(f"{name}: {problem}; an input takes path, weight and density")
        paths.append(check_type(entry["path"], *INPUT_KEYS["path"], f"{name}.path"))
        weights.append(None if entry.get("weight") is None else check_type(entry["weight"], *INPUT_KEYS["weight"], f"{name}.weight"))
        densities.append(None if entry.get("density") is None else check_type(entry["density"], *INPUT_KEYS["density"], f"{name}.density"))
    result = {"inputs": paths}
    weights = all_or_none("weight", weights, where)
    if weights is not None:
        if "weights" in settings:
            raise ConfigError(f"{where}: weights are given both per input and as a weights list; keep one")
        result["weights"] = weights
    densities = all_or_none("density", densities, where)
    if densities is not None:
        if len(set(densities)) > 1:
            raise ConfigError(f"{where}: inputs have different densities ({', '.join(map(str, sorted(set(densities))))}); "
                              "the methods take one density for all inputs (per-input density is not supported): set params.density")
        if "density" in settings.get("params", {}):
            raise ConfigError(f"{where}: density is given both per input and in params; keep one")
        result["params"] = {**settings.get("params", {}), "density": densities[0]}
    return result


def all_or_none(key: str, values: list, where: str) -> Optional[list]:
    """`values` if every input gave `key`, None if none did; a mix is an error."""
    given = [v for v in values if v is not None]
    if not given:
        return None
    if len(given) != len(values):
        raise ConfigError(f"{where}: some inputs have a {key} and some do not; give a {key} for every input or none")
    return values


def dump_config(settings: dict) -> str:
    """The YAML text of `settings` (keys in KEYS order, inputs with their weights): deterministic."""
    import yaml

    record = {}
    for key in KEYS:
        if key == "inputs" and "inputs" in settings:
            weights = settings.get("weights")
            record["inputs"] = [{"path": p, **({"weight": float(weights[i])} if weights else {})}
                                for i, p in enumerate(settings["inputs"])]
        elif key != "weights" and key in settings:
            record[key] = settings[key]
    body = yaml.safe_dump(record, sort_keys=False, default_flow_style=False, allow_unicode=True, width=1000)
    return HEADER + body
