"""A PEFT LoRA adapter folder as a merge source: config and header first, tensors per module.

`LoraAdapter.open(folder)` reads `adapter_config.json` and the weights file's header (names,
shapes, dtypes; no tensor data), refuses unsupported features by name (peft_format.FEATURES),
sorts every tensor into its role with peft_format's key grammar, and checks that the factors,
biases, DoRA magnitudes and ranks agree with the config. A folder that holds one adapter saved
under a non-default name (PEFT writes it to a sub-folder) is opened through that sub-folder.
Tensors are then read one module at a time from the memory-mapped file.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Optional

import torch

from .. import peft_format as fmt
from ..errors import AdapterFormatError, UnsupportedFeatureError
from ..lowrank import LowRank
from ..safetensors_io import MappedFile, read_header
from .base import LoraModule, check_finite, few


class TensorStore:
    """The tensors of one weights file by key: shapes and dtypes from the header, data on demand."""

    def __init__(self, path: Path):
        self.path = path
        if path.suffix == ".safetensors":
            self._infos, _ = read_header(path, error=AdapterFormatError)
            self._mapped = MappedFile(path, error=AdapterFormatError)
            self._state = None
        else:
            self._state = _load_bin(path)
            self._infos = None

    def keys(self) -> list:
        return list(self._infos if self._infos is not None else self._state)

    def shape(self, key: str) -> tuple:
        return tuple(self._infos[key].shape) if self._infos is not None else tuple(self._state[key].shape)

    def dtype(self, key: str) -> torch.dtype:
        return self._infos[key].torch_dtype if self._infos is not None else self._state[key].dtype

    def get(self, key: str) -> torch.Tensor:
        """The stored tensor: a read-only view of the mapped file (no copy) for safetensors."""
        return self._mapped.tensor(self._infos[key]) if self._infos is not None else self._state[key]


class LoraAdapter:
    """A PEFT LoRA adapter folder, opened lazily. See module docstring."""

    origin = None  # sources.hub.HubOrigin when fetched from the Hub

    def __init__(self, path: Path, config: dict, store: TensorStore):
        self.path = path
        self.config = config
        self.store = store
        self.weights_file = store.path
        self.modules, self.saved, self.base_copies = self._sort_tensors()
        self.dtypes = {str(store.dtype(k)).removeprefix("torch.") for k in self._factor_keys()}

    @classmethod
    def open(cls, folder) -> "LoraAdapter":
        path = adapter_folder(Path(folder))
        config = read_config(path)
        refused = fmt.refused_features(config)
        if refused:
            raise UnsupportedFeatureError(f"{path / fmt.CONFIG_NAME}: not mergeable: {'; '.join(refused)}")
        adapter = cls(path, config, TensorStore(weights_file(path)))
        if not adapter.modules:
            raise AdapterFormatError(f"{adapter.weights_file}: holds no lora_A/lora_B tensors; the adapter is empty or not LoRA")
        check_targets_present(adapter)
        return adapter

    @property
    def label(self) -> str:
        return str(self.path)

    @property
    def base_model(self) -> Optional[str]:
        return self.config.get("base_model_name_or_path")

    # ---- sorting the header (no data read)
    def _sort_tensors(self) -> tuple[dict, dict, dict]:
        saved_names = fmt.saved_module_names(self.config)
        pairs, saved, copies = {}, {}, {}
        for key in self.store.keys():
            role = fmt.parse_key(key, saved_names)
            if role is None:
                raise unknown_key_error(self.weights_file, key)
            if role.role == "saved":
                saved.setdefault(role.module, {})[role.param] = key
            elif role.role == "base_copy":
                copies[role.module] = key
            else:
                pairs.setdefault(role.module, {"embedding": role.embedding})[role.role] = key
        self._keys = pairs
        modules = {name: self._describe(name, entry) for name, entry in sorted(pairs.items())}
        return modules, saved, copies

    def _describe(self, name: str, entry: dict) -> LoraModule:
        where = f"{self.weights_file}: module {name}"
        if "A" not in entry or "B" not in entry:
            raise AdapterFormatError(f"{where} has only lora_{'A' if 'A' in entry else 'B'}; the file is incomplete, re-save the adapter")
        a_shape, b_shape = self.store.shape(entry["A"]), self.store.shape(entry["B"])
        if len(a_shape) != 2 or len(b_shape) != 2 or a_shape[0] != b_shape[1]:
            raise AdapterFormatError(f"{where}: lora_A {list(a_shape)} and lora_B {list(b_shape)} do not form B @ A")
        rank, configured = a_shape[0], fmt.module_rank(self.config, name)
        if configured != rank:
            raise AdapterFormatError(f"{where}: tensors have rank {rank} but adapter_config.json says r={configured}; fix r/rank_pattern")
        self._check_extras(where, entry, b_shape[0])
        alpha = fmt.module_alpha(self.config, name)
        return LoraModule(
            name=name, rank=rank, alpha=alpha, scale=fmt.lora_scale(alpha, rank, bool(self.config.get("use_rslora"))),
            out_features=b_shape[0], in_features=a_shape[1], embedding=entry["embedding"],
            fan_in_fan_out=bool(self.config.get("fan_in_fan_out")) and not entry["embedding"],
            bias="bias" in entry, dora="magnitude" in entry,
        )

    def _check_extras(self, where: str, entry: dict, out_features: int) -> None:
        """lora_B.bias and DoRA magnitudes: present exactly when the config says so, of shape (out,)."""
        if "bias" in entry and not self.config.get("lora_bias"):
            raise AdapterFormatError(f"{where} has lora_B.bias but adapter_config.json has lora_bias false; set \"lora_bias\": true or delete the bias tensors")
        if self.config.get("use_dora") and "magnitude" not in entry:
            raise AdapterFormatError(f"{where} lacks lora_magnitude_vector though use_dora is true; the file is incomplete, re-save the adapter")
        if "magnitude" in entry and not self.config.get("use_dora"):
            raise AdapterFormatError(f"{where} has a DoRA magnitude but adapter_config.json has use_dora false; fix use_dora")
        for role in ("bias", "magnitude"):
            if role in entry and self.store.shape(entry[role]) != (out_features,):
                raise AdapterFormatError(f"{where}: {role} has shape {list(self.store.shape(entry[role]))}, expected [{out_features}]")

    def _factor_keys(self) -> list:
        return [entry[r] for entry in self._keys.values() for r in ("A", "B")]

    # ---- tensors, one module at a time
    def factors(self, name: str) -> LowRank:
        """Module `name`'s update as float32 factors, scale folded into B (B is a new tensor)."""
        module, keys, where = self.modules[name], self._keys[name], f"{self.weights_file}: module {name}"
        A = check_finite(self.store.get(keys["A"]).to(torch.float32), where, "lora_A")  # float32 on disk: a view
        B = check_finite(self.store.get(keys["B"]).to(torch.float32) * module.scale, where, "lora_B")
        return LowRank(B=B, A=A)

    def bias(self, name: str) -> Optional[torch.Tensor]:
        """s · lora_B.bias (float32), the module's update to the base bias; None without lora bias."""
        key = self._keys[name].get("bias")
        if key is None:
            return None
        bias = self.store.get(key).to(torch.float32) * self.modules[name].scale
        return check_finite(bias, f"{self.weights_file}: module {name}", "lora_B.bias")

    def magnitude(self, name: str) -> torch.Tensor:
        """DoRA's magnitude vector m (float32) of module `name`."""
        return check_finite(self.store.get(self._keys[name]["magnitude"]).to(torch.float32),
                            f"{self.weights_file}: module {name}", "lora_magnitude_vector")

    def saved_tensor(self, module: str, param: str) -> torch.Tensor:
        """A modules_to_save tensor as stored."""
        return check_finite(self.store.get(self.saved[module][param]), f"{self.weights_file}: module {module}", param)

    def saved_shape(self, module: str, param: str) -> tuple:
        return self.store.shape(self.saved[module][param])

    def base_copy(self, module: str) -> torch.Tensor:
        """The base layer's weight saved beside an embedding adapter (save_embedding_layers)."""
        return self.store.get(self.base_copies[module])

    def base_copy_shape(self, module: str) -> tuple:
        return self.store.shape(self.base_copies[module])

    def files(self) -> list:
        """The files this input consists of (hashed for provenance)."""
        return [self.path / fmt.CONFIG_NAME, self.weights_file]

    def __repr__(self) -> str:
        return f"LoraAdapter({str(self.path)!r}, modules={len(self.modules)})"


def adapter_folder(path: Path) -> Path:
    """The folder holding adapter_config.json: `path`, or its one sub-folder (a named adapter)."""
    if path.is_file():
        raise AdapterFormatError(f"{path}: is a file; pass the adapter folder that holds it ({path.parent})")
    if not path.is_dir():
        raise AdapterFormatError(f"{path}: adapter folder not found; pass a folder made by PEFT save_pretrained")
    if (path / fmt.CONFIG_NAME).is_file():
        return path
    named = sorted(p for p in path.iterdir() if (p / fmt.CONFIG_NAME).is_file())
    if len(named) == 1:
        return named[0]
    if named:
        raise AdapterFormatError(f"{path}: holds several adapters ({few(p.name for p in named)}); pass one of their folders")
    raise AdapterFormatError(f"{path / fmt.CONFIG_NAME}: missing; an adapter folder needs the config PEFT writes")


def read_config(path: Path) -> dict:
    config_file = path / fmt.CONFIG_NAME
    if not config_file.is_file():
        raise AdapterFormatError(f"{config_file}: missing; an adapter folder needs the config PEFT writes")
    try:
        config = json.loads(config_file.read_text())
    except (OSError, ValueError) as exc:
        raise AdapterFormatError(f"{config_file}: not valid JSON ({exc}); re-save the adapter") from None
    if not isinstance(config, dict):
        raise AdapterFormatError(f"{config_file}: expected a JSON object")
    return config


def weights_file(path: Path) -> Path:
    for name in (fmt.WEIGHTS_NAME, fmt.BIN_NAME):
        if (path / name).is_file():
            return path / name
    raise AdapterFormatError(f"{path}: no {fmt.WEIGHTS_NAME} or {fmt.BIN_NAME}; the adapter weights are missing")


def unknown_key_error(weights: Path, key: str) -> Exception:
    """The error for a tensor that is no LoRA key: refused feature if recognisable, else corrupt."""
    if "trainable_tokens" in key:
        return UnsupportedFeatureError(f"{weights}: tensor {key} is a trainable-tokens delta; trainable tokens are not merged, merge_and_unload them into the base first")
    if key.endswith(".bias") and "lora_" not in key:
        return UnsupportedFeatureError(f"{weights}: tensor {key} is a trained base bias; base biases are not merged, retrain with bias='none' (lora_bias=True is supported)")
    if "lora_" not in key:
        return UnsupportedFeatureError(f"{weights}: tensor {key} is a full weight not listed in modules_to_save; add its module to modules_to_save in adapter_config.json or drop the tensor")
    return AdapterFormatError(f"{weights}: unrecognised tensor name {key}; re-save the adapter with PEFT")


def check_targets_present(adapter: LoraAdapter) -> None:
    """Refuse a config that names modules its weights lack (a truncated or edited weights file).

    For list target_modules: every plain name must be adapted somewhere, and (without
    exclude_modules) no name may be missing from a layer where another name's modules are.
    """
    config, where = adapter.config, adapter.path / fmt.CONFIG_NAME
    names = [t for t in config.get("target_modules") or () if isinstance(t, str) and "." not in t]
    if isinstance(config.get("target_modules"), str) or not names:
        return
    layers = {t: {_layer(m) for m in adapter.modules if m == t or m.endswith("." + t)} for t in names}
    for name, found in layers.items():
        if not found:
            raise AdapterFormatError(f"{where}: target_modules names {name!r} but {adapter.weights_file.name} holds no {name} factors; the weights file is incomplete (re-save it) or drop {name!r} from target_modules")
    if config.get("exclude_modules"):
        return
    for name, found in layers.items():
        for other, theirs in layers.items():
            if found < theirs and None not in theirs:
                missing = sorted(theirs - found)
                raise AdapterFormatError(f"{adapter.weights_file}: no {name} factors in layer(s) {few(missing)} where {other} is adapted; the weights file is incomplete, re-save the adapter")


def _layer(module: str) -> Optional[int]:
    match = re.match(r".*?\.[^.]*\.(\d+)\.", module)
    return int(match.group(1)) if match else None


def _load_bin(path: Path) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad pickle
        raise AdapterFormatError(f"{path}: cannot be loaded safely ({exc}); convert it to safetensors") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise AdapterFormatError(f"{path}: expected a state dict of tensors")
    return state

