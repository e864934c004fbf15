"""Read a Hugging Face model folder lazily: config, safetensors shards, per-tensor headers.

`ModelFolder.open(path)` reads config.json, then `model.safetensors` or
`model.safetensors.index.json` plus every shard's header (names, dtypes, shapes, byte
offsets), and validates them before any tensor data is read. Tensors are then read one at a
time: `load(info)` reads one tensor with a plain file read, `row_blocks(info)` maps just that
tensor's bytes and yields blocks of rows. A streaming merge thus holds at most the tensor in
hand, never a shard.
"""

from __future__ import annotations

import json
import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import torch

from .errors import SeedLoraError

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
BIN_NAMES = ("pytorch_model.bin", "pytorch_model.bin.index.json")
ADAPTER_CONFIG = "adapter_config.json"

DTYPE_SIZES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2,
    "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8,
}
_TORCH_DTYPES = {
    "BOOL": "bool", "U8": "uint8", "I8": "int8", "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2",
    "I16": "int16", "U16": "uint16", "F16": "float16", "BF16": "bfloat16", "I32": "int32",
    "U32": "uint32", "F32": "float32", "I64": "int64", "U64": "uint64", "F64": "float64",
}
MERGEABLE = ("F16", "BF16", "F32", "F64")  # float dtypes a merge computes on (in float32)


class ModelFormatError(SeedLoraError):
    """A model folder is missing weights or files, or its shards disagree with its index."""


@dataclass(frozen=True)
class TensorInfo:
    """Where one stored tensor lives: file, absolute byte offset, dtype code, shape."""

    name: str
    shard: Path
    dtype: str  # safetensors code: F32, BF16, I64, ...
    shape: tuple
    start: int  # absolute offset of the first data byte in `shard`
    nbytes: int

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, _TORCH_DTYPES[self.dtype])

    @property
    def mergeable(self) -> bool:
        """True for float16/bfloat16/float32/float64 tensors (merged in float32)."""
        return self.dtype in MERGEABLE

    @property
    def numel(self) -> int:
        count = 1
        for size in self.shape:
            count *= size
        return count


def read_header(path: Path) -> tuple[dict, dict, int]:
    """(tensor entries, __metadata__, data start offset) of a safetensors file; no data read."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            if length <= 1 or length > min(100_000_000, size):
                raise ValueError("bad header length")
            header = json.loads(handle.read(length))
        metadata = header.pop("__metadata__", None) or {}
        ends = [entry["data_offsets"][1] for entry in header.values()]
    except (OSError, ValueError, struct.error, KeyError, TypeError) as exc:
        raise ModelFormatError(f"{path}: not a readable safetensors file ({exc}); re-copy or re-save the model") from None
    if 8 + length + max(ends, default=0) > size:
        raise ModelFormatError(f"{path}: file is truncated (header promises more data than the file holds); re-copy it")
    return header, metadata, 8 + length


def is_model_folder(path) -> bool:
    """True if `path` looks like a full model (config or weights) rather than a LoRA adapter."""
    path = Path(path)
    if not path.is_dir() or (path / ADAPTER_CONFIG).exists():
        return False
    names = (CONFIG_NAME, WEIGHTS_NAME, INDEX_NAME) + BIN_NAMES
    return any((path / name).exists() for name in names)


class ModelFolder:
    """A Hugging Face model folder, opened lazily. See module docstring."""

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
            header, metadata[shard], data_start = read_header(shard)
            _check_index_agrees(path, shard, header, shard_map)
            for name, entry in sorted(header.items(), key=lambda item: item[1]["data_offsets"][0]):
                tensors[name] = _tensor_info(shard, name, entry, data_start)
        return cls(path, _read_config(path), sorted(metadata), tensors, metadata)

    def tensors_in(self, shard: Path) -> list:
        """The tensors stored in `shard`, in on-disk order."""
        return [info for info in self.tensors.values() if info.shard == shard]

    @property
    def total_bytes(self) -> int:
        return sum(info.nbytes for info in self.tensors.values())

    @staticmethod
    def row_blocks(info: TensorInfo, rows_per_block: int) -> Iterator[tuple]:
        """(first row, rows x cols tensor) blocks of a 2-D tensor, in order, read-only views.

        The tensor's byte range alone is memory-mapped (copy-on-write, never written), so the
        blocks are read straight from the page cache without a copy; the mapping goes away
        with the last view, so at most one tensor of the shard is ever mapped.
        """
        rows, cols = info.shape
        if info.nbytes == 0:
            return
        aligned = info.start - info.start % mmap.ALLOCATIONGRANULARITY
        with open(info.shard, "rb") as handle:
            try:
                mapped = mmap.mmap(handle.fileno(), info.start + info.nbytes - aligned, offset=aligned, access=mmap.ACCESS_COPY)
            except (OSError, ValueError) as exc:
                raise ModelFormatError(f"{info.shard}: cannot read tensor {info.name} ({exc}); re-copy the file") from None
        if hasattr(mapped, "madvise"):  # start reading the whole tensor ahead of the blocks
            mapped.madvise(mmap.MADV_WILLNEED)
        whole = torch.frombuffer(mapped, dtype=info.torch_dtype, count=info.numel, offset=info.start - aligned)
        whole = whole.view(rows, cols)
        for start in range(0, rows, rows_per_block):
            yield start, whole[start : start + rows_per_block]

    @staticmethod
    def load(info: TensorInfo) -> torch.Tensor:
        """The tensor itself (a fresh CPU tensor in its stored dtype)."""
        buffer = bytearray(info.nbytes)
        with open(info.shard, "rb") as handle:
            handle.seek(info.start)
            if handle.readinto(buffer) != info.nbytes:
                raise ModelFormatError(f"{info.shard}: ends inside tensor {info.name}; re-copy the file")
        if info.nbytes == 0:
            return torch.empty(info.shape, dtype=info.torch_dtype)
        return torch.frombuffer(buffer, dtype=info.torch_dtype).reshape(info.shape)

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
                raise ModelFormatError(
                    f"{path / shard}: shard named in {INDEX_NAME} is missing; copy every shard of the model"
                )
        return {name: path / shard for name, shard in weight_map.items()}
    single = path / WEIGHTS_NAME
    if single.is_file():
        header, _, _ = read_header(single)
        return {name: single for name in header}
    if any((path / name).is_file() for name in BIN_NAMES):
        raise ModelFormatError(
            f"{path}: only PyTorch .bin weights; convert to safetensors (from_pretrained, then save_pretrained)"
        )
    raise ModelFormatError(f"{path}: no model weights ({WEIGHTS_NAME} or {INDEX_NAME}); pass a model folder")


def _check_index_agrees(path: Path, shard: Path, header: dict, shard_map: dict) -> None:
    """Every tensor the index puts in `shard` is there, and the shard holds nothing unlisted."""
    listed = {name for name, where in shard_map.items() if where == shard}
    missing, extra = sorted(listed - set(header)), sorted(set(header) - listed)
    if missing:
        raise ModelFormatError(f"{shard}: lacks tensor {missing[0]} that {INDEX_NAME} places there; re-copy the model")
    if extra:
        raise ModelFormatError(f"{shard}: holds tensor {extra[0]} that {INDEX_NAME} does not list; re-save the model")


def _tensor_info(shard: Path, name: str, entry: dict, data_start: int) -> TensorInfo:
    dtype, shape = entry.get("dtype"), tuple(entry.get("shape", ()))
    begin, end = entry["data_offsets"]
    if dtype not in DTYPE_SIZES:
        raise ModelFormatError(f"{shard}: tensor {name} has unsupported dtype {dtype}")
    info = TensorInfo(name, shard, dtype, shape, data_start + begin, end - begin)
    if info.numel * DTYPE_SIZES[dtype] != info.nbytes:
        raise ModelFormatError(f"{shard}: tensor {name} size does not match its shape {list(shape)}; re-save the model")
    return info


def _read_config(path: Path) -> Optional[dict]:
    config_file = path / CONFIG_NAME
    if not config_file.is_file():
        return None
    try:
        return json.loads(config_file.read_text())
    except (OSError, ValueError) as exc:
        raise ModelFormatError(f"{config_file}: not valid JSON ({exc}); re-save the model") from None
