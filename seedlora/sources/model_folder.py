"""A Hugging Face model folder, read lazily: config, safetensors shards, per-tensor headers.

`ModelFolder.open(path)` reads config.json, then `model.safetensors` or
`model.safetensors.index.json` plus every shard's header, and checks the index and the shards
agree, before any tensor data is read. Used as the base of a fused merge and as a full
fine-tuned checkpoint (`sources.checkpoint`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import torch

from ..errors import ModelFormatError
from ..safetensors_io import TensorInfo, load, read_header

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
BIN_NAMES = ("pytorch_model.bin", "pytorch_model.bin.index.json")
ADAPTER_CONFIG = "adapter_config.json"
# names of the input embedding, in the architectures transformers ships (first match wins)
EMBEDDING_SUFFIXES = ("embed_tokens.weight", "wte.weight", "word_embeddings.weight", "embed_in.weight")
OUTPUT_HEAD = "lm_head.weight"


def is_model_folder(path) -> bool:
    """True if `path` looks like a full model (config or weights) rather than a LoRA adapter."""
    path = Path(path)
    if not path.is_dir() or (path / ADAPTER_CONFIG).exists():
        return False
    return any((path / name).exists() for name in (CONFIG_NAME, WEIGHTS_NAME, INDEX_NAME) + BIN_NAMES)


class ModelFolder:
    """A Hugging Face model folder, opened lazily. See module docstring."""

    origin = None  # sources.hub.HubOrigin when fetched from the Hub

    def __init__(self, path: Path, config: Optional[dict], shards: list, tensors: dict, metadata: dict):
        self.path = path
        self.config = config  # parsed config.json, or None when the folder has none
        self.shards = shards  # shard paths in file-name order
        self.tensors = tensors  # name -> TensorInfo, in (shard, offset) order
        self.metadata = metadata  # shard path -> its safetensors __metadata__

    @classmethod
    def open(cls, folder) -> "ModelFolder":
        path = Path(folder)
        if not path.is_dir():
            raise ModelFormatError(f"{path}: model folder not found; pass a folder made by save_pretrained")
        shard_map = _shard_map(path)
        tensors, metadata = {}, {}
        for shard in sorted(set(shard_map.values())):
            infos, metadata[shard] = read_header(shard, error=ModelFormatError)
            _check_index_agrees(shard, infos, shard_map)
            tensors.update(infos)
        return cls(path, _read_config(path), sorted(metadata), tensors, metadata)

    @property
    def label(self) -> str:
        return str(self.path)

    def tensors_in(self, shard: Path) -> list:
        """The tensors stored in `shard`, in on-disk order."""
        return [info for info in self.tensors.values() if info.file == shard]

    @property
    def total_bytes(self) -> int:
        return sum(info.nbytes for info in self.tensors.values())

    @property
    def tied_embeddings(self) -> bool:
        """Whether the output head shares the input embedding (transformers' default is True)."""
        config = self.config or {}
        text = config.get("text_config") or {}
        return bool(config.get("tie_word_embeddings", text.get("tie_word_embeddings", True)))

    def embedding_name(self) -> Optional[str]:
        """The input embedding's tensor name, if one of the known names is present."""
        for suffix in EMBEDDING_SUFFIXES:
            found = next((n for n in self.tensors if n.endswith(suffix)), None)
            if found:
                return found
        return None

    def weight(self, name: str) -> Optional[TensorInfo]:
        """The stored tensor `name`; `lm_head.weight` resolves to the embedding when tied and absent."""
        info = self.tensors.get(name)
        if info is None and name.endswith(OUTPUT_HEAD) and self.tied_embeddings and self.embedding_name():
            return self.tensors[self.embedding_name()]
        return info

    @staticmethod
    def load(info: TensorInfo) -> torch.Tensor:
        """The tensor itself (a fresh CPU tensor in its stored dtype)."""
        return load(info, error=ModelFormatError)

    def files(self) -> list:
        """Every file a merge reads from this folder (hashed for provenance)."""
        extra = [self.path / n for n in (CONFIG_NAME, INDEX_NAME) if (self.path / n).is_file()]
        return extra + list(self.shards)

    def __repr__(self) -> str:
        return f"ModelFolder({str(self.path)!r}, tensors={len(self.tensors)}, shards={len(self.shards)})"


def _shard_map(path: Path) -> dict:
    """tensor name -> shard path, from the index or the single weights file."""
    index_file = path / INDEX_NAME
    if index_file.is_file():
        try:
            weight_map = json.loads(index_file.read_text())["weight_map"]
            if not isinstance(weight_map, dict) or not weight_map:
                raise ValueError("empty or not a mapping")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ModelFormatError(f"{index_file}: no usable weight_map ({exc}); re-save the model") from None
        for shard in sorted(set(weight_map.values())):
            if not (path / shard).is_file():
                raise ModelFormatError(f"{path / shard}: shard named in {INDEX_NAME} is missing; copy every shard of the model")
        return {name: path / shard for name, shard in weight_map.items()}
    single = path / WEIGHTS_NAME
    if single.is_file():
        infos, _ = read_header(single, error=ModelFormatError)
        return {name: single for name in infos}
    if any((path / name).is_file() for name in BIN_NAMES):
        raise ModelFormatError(f"{path}: only PyTorch .bin weights; convert to safetensors (from_pretrained, then save_pretrained)")
    raise ModelFormatError(f"{path}: no model weights ({WEIGHTS_NAME} or {INDEX_NAME}); pass a model folder")


def _check_index_agrees(shard: Path, infos: dict, shard_map: dict) -> None:
    """Every tensor the index puts in `shard` is there, and the shard holds nothing unlisted."""
    listed = {name for name, where in shard_map.items() if where == shard}
    missing, extra = sorted(listed - set(infos)), sorted(set(infos) - listed)
    if missing:
        raise ModelFormatError(f"{shard}: lacks tensor {missing[0]} that {INDEX_NAME} places there; re-copy the model")
    if extra:
        raise ModelFormatError(f"{shard}: holds tensor {extra[0]} that {INDEX_NAME} does not list; re-save the model")


def _read_config(path: Path) -> Optional[dict]:
    config_file = path / CONFIG_NAME
    if not config_file.is_file():
        return None
    try:
        return json.loads(config_file.read_text())
    except (OSError, ValueError) as exc:
        raise ModelFormatError(f"{config_file}: not valid JSON ({exc}); re-save the model") from None
