"""Read PEFT LoRA adapters lazily: config and safetensors header first, factors per module.

`LoraAdapter.open(folder)` parses `adapter_config.json` and the weights file's header (shapes
and dtypes, no tensor data), validates everything it can, and resolves each module's rank,
alpha and scale (lora_alpha, use_rslora, rank_pattern, alpha_pattern). `factors(module)` then
loads just that module's A and B as float32 with the scale folded into B (the file is memory-mapped:
a float32 A is a view of it, nothing is read twice).
"""

from __future__ import annotations

import hashlib
import json
import math
import mmap
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from .errors import AdapterFormatError, UnsupportedFeatureError
from .lowrank import LowRank

CONFIG_NAME = "adapter_config.json"
SAFETENSORS_NAME = "adapter_model.safetensors"
BIN_NAME = "adapter_model.bin"
KEY_PREFIX = "base_model.model."

_SAFETENSORS_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64"}
# module, A/B, then ".weight" (Linear), nothing (embeddings), with an optional adapter name
# in between (some tools keep ".default"); ".bias" means lora_bias
_LORA_KEY = re.compile(
    r"^(?:base_model\.model\.)?(?P<module>.+?)\.lora_(?P<embedding>embedding_)?(?P<ab>[AB])"
    r"(?:\.(?!weight$|bias$)[^.]+)?(?P<suffix>\.weight|\.bias)?$"
)


@dataclass(frozen=True)
class LoraModule:
    """One adapted module: its resolved rank and scale, and the base weight's shape."""

    name: str  # e.g. model.layers.0.self_attn.q_proj (no base_model.model. prefix)
    rank: int
    alpha: float
    scale: float
    out_features: int
    in_features: int
    a_key: str
    b_key: str
    transposed: bool  # base weight stores the update transposed (fan_in_fan_out, embeddings)

    @property
    def shape(self) -> tuple[int, int]:
        """Shape of the update B @ A (out x in), whatever the base weight layout."""
        return (self.out_features, self.in_features)


def pattern_value(patterns: dict, module: str, default):
    """PEFT's rule: the first key k with re.match(rf"(.*\\.)?({k})$", module) wins."""
    for key, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def lora_scale(alpha: float, rank: int, use_rslora: bool) -> float:
    """PEFT's scaling: alpha / r, or alpha / sqrt(r) with rsLoRA."""
    return alpha / math.sqrt(rank) if use_rslora else alpha / rank


def read_safetensors_header(path: Path) -> dict:
    """The JSON header of a safetensors file (names, dtypes, shapes), without reading data."""
    return _read_header(path)[0]


def _read_header(path: Path) -> tuple[dict, int]:
    """(header without metadata, byte where the data starts: the origin of data_offsets)."""
    try:
        with open(path, "rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            if length <= 0 or length > 100_000_000:
                raise ValueError("bad header length")
            header = json.loads(handle.read(length))
        size = path.stat().st_size
    except (OSError, ValueError, struct.error) as exc:
        raise AdapterFormatError(
            f"{path}: not a readable safetensors file ({exc}); re-save the adapter with save_pretrained"
        ) from None
    header.pop("__metadata__", None)
    end = max((v["data_offsets"][1] for v in header.values()), default=0)
    if 8 + length + end > size:
        raise AdapterFormatError(f"{path}: file is truncated (header promises {end} data bytes); re-copy it")
    return header, 8 + length


def _tensor_layout(path: Path) -> dict:
    """key -> (torch dtype, shape, absolute byte offset), after checking every entry is readable."""
    header, data_start = _read_header(path)
    layout = {}
    for key, entry in header.items():
        name = _SAFETENSORS_DTYPES.get(entry.get("dtype"))
        if name is None:
            raise AdapterFormatError(
                f"{path}: tensor {key} is stored as {entry.get('dtype')}; LoRA factors must be float32/float16/bfloat16/float64"
            )
        dtype, shape = getattr(torch, name), tuple(entry["shape"])
        start, end = entry["data_offsets"]
        if end - start != math.prod(shape) * dtype.itemsize:
            raise AdapterFormatError(f"{path}: tensor {key} has {end - start} bytes for shape {list(shape)}; the file is corrupt, re-save it")
        layout[key] = (dtype, shape, data_start + start)
    return layout


class LoraAdapter:
    """A PEFT LoRA adapter folder, opened lazily. See module docstring."""

    def __init__(self, path: Path, config: dict, weights_file: Path, shapes: dict, dtypes: set):
        self.path = path
        self.config = config
        self.weights_file = weights_file
        self.dtypes = dtypes
        self._bin_state: Optional[dict] = None
        self._layout: dict = {}  # safetensors: key -> (dtype, shape, byte offset)
        self._bytes: Optional[torch.Tensor] = None  # the weights file, memory-mapped, as uint8
        self.modules = self._resolve_modules(shapes)

    # ---- opening and validation (headers only) ----
    @classmethod
    def open(cls, folder) -> "LoraAdapter":
        path = Path(folder)
        if not path.is_dir():
            raise AdapterFormatError(f"{path}: adapter folder not found; pass a folder made by PEFT save_pretrained")
        config = _read_config(path)
        _reject_unsupported_config(path, config)
        weights_file = path / SAFETENSORS_NAME
        if weights_file.is_file():
            layout = _tensor_layout(weights_file)
            shapes = {k: shape for k, (_, shape, _) in layout.items()}
            dtypes = {str(dtype).removeprefix("torch.") for dtype, _, _ in layout.values()}
            adapter = cls(path, config, weights_file, shapes, dtypes)
            adapter._layout = layout
        elif (path / BIN_NAME).is_file():
            state = _load_bin(path / BIN_NAME)
            shapes = {k: tuple(v.shape) for k, v in state.items()}
            dtypes = {str(v.dtype).replace("torch.", "") for v in state.values()}
            adapter = cls(path, config, path / BIN_NAME, shapes, dtypes)
            adapter._bin_state = state
        else:
            raise AdapterFormatError(
                f"{path}: no {SAFETENSORS_NAME} or {BIN_NAME}; the adapter weights are missing"
            )
        if not adapter.modules:
            raise AdapterFormatError(f"{weights_file}: holds no lora_A/lora_B tensors")
        return adapter

    def _resolve_modules(self, shapes: dict) -> dict:
        pairs: dict[str, dict] = {}
        for key, shape in shapes.items():
            match = _LORA_KEY.match(key)
            if match is None:
                _reject_unknown_key(self.weights_file, key)
            if match["suffix"] == ".bias":
                raise UnsupportedFeatureError(
                    f"{self.weights_file}: tensor {key} looks like a LoRA bias; lora bias is not supported, retrain with lora_bias=False"
                )
            entry = pairs.setdefault(match["module"], {"embedding": bool(match["embedding"])})
            entry[match["ab"]] = (key, shape)
        return {name: self._module(name, entry) for name, entry in sorted(pairs.items())}

    def _module(self, name: str, entry: dict) -> LoraModule:
        where = f"{self.weights_file}: module {name}"
        if "A" not in entry or "B" not in entry:
            raise AdapterFormatError(f"{where} has only lora_{'A' if 'A' in entry else 'B'}; the file is incomplete")
        (a_key, a_shape), (b_key, b_shape) = entry["A"], entry["B"]
        if len(a_shape) != 2 or len(b_shape) != 2 or a_shape[0] != b_shape[1]:
            raise AdapterFormatError(f"{where}: lora_A {list(a_shape)} and lora_B {list(b_shape)} do not form B @ A")
        rank = a_shape[0]
        configured = int(pattern_value(self.config.get("rank_pattern"), name, self.config.get("r", rank)))
        if configured != rank:
            raise AdapterFormatError(
                f"{where}: tensors have rank {rank} but adapter_config.json says r={configured}; fix r/rank_pattern"
            )
        alpha = float(pattern_value(self.config.get("alpha_pattern"), name, self.config.get("lora_alpha", rank)))
        return LoraModule(
            name=name,
            rank=rank,
            alpha=alpha,
            scale=lora_scale(alpha, rank, bool(self.config.get("use_rslora", False))),
            out_features=b_shape[0],
            in_features=a_shape[1],
            a_key=a_key,
            b_key=b_key,
            transposed=entry["embedding"] or bool(self.config.get("fan_in_fan_out", False)),
        )

    # ---- data access (one module at a time) ----
    def _tensor(self, key: str) -> torch.Tensor:
        """The stored tensor; for safetensors a read-only view of the memory-mapped file (no copy)."""
        if self._bin_state is not None:
            return self._bin_state[key]
        dtype, shape, offset = self._layout[key]
        if self._bytes is None:  # one copy-on-write mapping, made on first use, never written
            try:
                with open(self.weights_file, "rb") as handle:
                    mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_COPY)
            except (OSError, ValueError) as exc:
                raise AdapterFormatError(f"{self.weights_file}: cannot read ({exc}); re-copy the file") from None
            self._bytes = torch.frombuffer(mapped, dtype=torch.uint8)
        nbytes = math.prod(shape) * dtype.itemsize
        raw = self._bytes[offset : offset + nbytes]
        if raw.numel() != nbytes:  # the header was checked at open: the file changed since
            raise AdapterFormatError(f"{self.weights_file}: ends inside tensor {key} (changed while open?); re-copy the file")
        if offset % dtype.itemsize:  # unaligned in the file: a copy is the only way to reinterpret it
            raw = raw.clone()
        return raw.view(dtype).view(shape)

    def factors(self, name: str) -> LowRank:
        """Module `name`'s update as float32 factors, scale folded into B (B is a new tensor)."""
        module = self.modules[name]
        A = self._tensor(module.a_key).to(torch.float32)  # float32 on disk: a view, no copy
        B = self._tensor(module.b_key).to(torch.float32) * module.scale
        for label, tensor in (("lora_A", A), ("lora_B", B)):
            # a finite sum proves every entry finite; only a non-finite sum needs the full check
            if not math.isfinite(float(tensor.sum())) and not bool(torch.isfinite(tensor).all()):
                raise AdapterFormatError(
                    f"{self.weights_file}: module {name} {label} contains NaN or Inf; this adapter is broken, retrain or drop it"
                )
        return LowRank(B=B, A=A)

    @property
    def base_model(self) -> Optional[str]:
        return self.config.get("base_model_name_or_path")

    def content_hashes(self) -> dict:
        """sha256 of the config and the weights file, for provenance."""
        return {
            CONFIG_NAME: _sha256(self.path / CONFIG_NAME),
            self.weights_file.name: _sha256(self.weights_file),
        }

    def __repr__(self) -> str:
        return f"LoraAdapter({str(self.path)!r}, modules={len(self.modules)})"


def _sha256(path: Path) -> str:
    digest, buffer = hashlib.sha256(), bytearray(1 << 20)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as handle:
        while count := handle.readinto(buffer):
            digest.update(view[:count])  # hashlib releases the GIL here: hashing can run beside a merge
    return digest.hexdigest()


def _read_config(path: Path) -> dict:
    config_file = path / CONFIG_NAME
    if not config_file.is_file():
        raise AdapterFormatError(f"{config_file}: missing; an adapter folder needs the config PEFT writes")
    try:
        config = json.loads(config_file.read_text())
    except (OSError, ValueError) as exc:
        raise AdapterFormatError(f"{config_file}: not valid JSON ({exc}); re-save the adapter") from None
    if not isinstance(config, dict):
        raise AdapterFormatError(f"{config_file}: expected a JSON object")
    return config


def _reject_unsupported_config(path: Path, config: dict) -> None:
    where = path / CONFIG_NAME
    peft_type = str(config.get("peft_type", "LORA")).upper()
    if peft_type != "LORA":
        raise UnsupportedFeatureError(f"{where}: peft_type {peft_type} is not LoRA; seedlora merges LoRA adapters only")
    if config.get("use_dora"):
        raise UnsupportedFeatureError(f"{where}: DoRA adapters (use_dora=true) are not supported; merge plain LoRA adapters")
    if config.get("bias", "none") != "none" or config.get("lora_bias"):
        raise UnsupportedFeatureError(f"{where}: bias training (bias={config.get('bias')!r}) is not supported; retrain with bias='none'")
    if config.get("modules_to_save"):
        raise UnsupportedFeatureError(
            f"{where}: modules_to_save={config['modules_to_save']} (fully trained modules) is not supported; retrain without it"
        )


def _reject_unknown_key(weights_file: Path, key: str) -> None:
    if "lora_magnitude_vector" in key:
        raise UnsupportedFeatureError(f"{weights_file}: tensor {key} is a DoRA magnitude; DoRA adapters are not supported")
    if key.endswith("base_layer.weight"):
        raise UnsupportedFeatureError(
            f"{weights_file}: tensor {key} is a saved base embedding (save_embedding_layers); if the vocabulary "
            "was not resized, re-save the adapter with save_pretrained(..., save_embedding_layers=False)"
        )
    if "modules_to_save" in key or not ("lora_" in key):
        raise UnsupportedFeatureError(
            f"{weights_file}: tensor {key} is not a LoRA factor (modules_to_save or extra weights); retrain without it"
        )
    raise AdapterFormatError(f"{weights_file}: unrecognised tensor name {key}")


def _load_bin(path: Path) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise AdapterFormatError(f"{path}: cannot be loaded safely ({exc}); convert it to safetensors") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise AdapterFormatError(f"{path}: expected a state dict of tensors")
    return state
