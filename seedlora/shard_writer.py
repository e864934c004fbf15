"""Write safetensors shards and model.safetensors.index.json, streaming one tensor at a time.

The layout (which tensor goes in which file, in which order) is planned up front from names,
dtypes and shapes, so each shard's header is written first and the tensors' bytes follow in
order: nothing but the tensor in hand is ever held in memory and no shard is assembled in
RAM. Layouts follow transformers' conventions: one `model.safetensors`, or
`model-0000i-of-0000n.safetensors` files plus an index with `total_size` and `weight_map`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Union

import torch

from .errors import SeedLoraError
from .hf_model import DTYPE_SIZES, INDEX_NAME, WEIGHTS_NAME

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?i?B)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


@dataclass(frozen=True)
class TensorSpec:
    """A tensor to be written: name, safetensors dtype code and shape."""

    name: str
    dtype: str
    shape: tuple

    @property
    def nbytes(self) -> int:
        return DTYPE_SIZES[self.dtype] * _numel(self.shape)


def _numel(shape: tuple) -> int:
    count = 1
    for size in shape:
        count *= size
    return count


def parse_size(text: Union[str, int]) -> int:
    """'2GB' -> 2*10**9, '500MiB' -> 500*2**20, 1000 -> 1000 (transformers' max_shard_size rules)."""
    match = _SIZE.match(str(text))
    unit = (match.group(2) or "").upper() if match else ""
    if match is None or unit not in _UNITS or float(match.group(1)) * _UNITS[unit] < 1:
        raise SeedLoraError(f"--shard-size {text!r} is not a size; write e.g. 2GB, 500MB or 4GiB")
    return int(float(match.group(1)) * _UNITS[unit])


def shard_file_names(count: int) -> list:
    """transformers' names for `count` shards."""
    if count == 1:
        return [WEIGHTS_NAME]
    return [f"model-{i:05d}-of-{count:05d}.safetensors" for i in range(1, count + 1)]


def plan_by_size(specs: list, max_bytes: int) -> list:
    """Split `specs` (in order) into shards of at most `max_bytes`; a bigger tensor gets its own."""
    groups, current, used = [], [], 0
    for spec in specs:
        if current and used + spec.nbytes > max_bytes:
            groups.append(current)
            current, used = [], 0
        current.append(spec)
        used += spec.nbytes
    if current or not groups:
        groups.append(current)
    return list(zip(shard_file_names(len(groups)), groups))


def tensor_bytes(tensor: torch.Tensor) -> memoryview:
    """The tensor's raw little-endian bytes, without a copy when it is already contiguous."""
    flat = tensor.detach().contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy()) if flat.numel() else memoryview(b"")


class ShardWriter:
    """Context manager writing a planned layout; `write` each tensor in planned order.

    `shards` is [(file name, [TensorSpec, ...]), ...]. On a clean exit every planned tensor
    must have been written; the index is then written when there is more than one shard.
    """

    def __init__(self, folder, shards: list, metadata: Optional[dict] = None):
        self.folder = Path(folder)
        self.shards = shards
        self.metadata = {"format": "pt", **(metadata or {})}
        self._queue = [(file, spec) for file, specs in shards for spec in specs]
        self._position = 0
        self._handle = None
        self._file = None

    def __enter__(self) -> "ShardWriter":
        for file, specs in self.shards:
            if not specs:  # an empty model still gets its (empty) file
                self._open(file, specs)
                self._close()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._close()
        if exc_type is None:
            if self._position != len(self._queue):
                raise RuntimeError(f"shard writer: {self._queue[self._position][1].name} was never written")
            self._write_index()

    @property
    def total_bytes(self) -> int:
        return sum(spec.nbytes for _, spec in self._queue)

    def write(self, name: str, data: Union[torch.Tensor, bytes, memoryview]) -> None:
        """Write tensor `name` (the next one planned) from a tensor or its raw bytes."""
        self.write_chunks(name, [tensor_bytes(data) if isinstance(data, torch.Tensor) else data])

    def write_chunks(self, name: str, chunks: Iterable) -> None:
        """Write tensor `name` from an iterable of byte chunks (for large byte-for-byte copies)."""
        file, spec = self._next(name)
        written = 0
        for chunk in chunks:
            written += len(memoryview(chunk).cast("B"))
            self._handle.write(chunk)
        if written != spec.nbytes:
            raise RuntimeError(f"shard writer: {name} got {written} bytes, expected {spec.nbytes}")
        self._position += 1

    def _next(self, name: str):
        if self._position >= len(self._queue) or self._queue[self._position][1].name != name:
            expected = self._queue[self._position][1].name if self._position < len(self._queue) else "nothing"
            raise RuntimeError(f"shard writer: got {name}, expected {expected}")
        file, spec = self._queue[self._position]
        if file != self._file:
            self._close()
            self._open(file, next(specs for f, specs in self.shards if f == file))
        return file, spec

    def _open(self, file: str, specs: list) -> None:
        header, offset = {"__metadata__": self.metadata}, 0
        for spec in specs:
            header[spec.name] = {"dtype": spec.dtype, "shape": list(spec.shape), "data_offsets": [offset, offset + spec.nbytes]}
            offset += spec.nbytes
        encoded = json.dumps(header, separators=(",", ":")).encode()
        encoded += b" " * (-len(encoded) % 8)  # safetensors pads the header to 8 bytes
        self._handle = open(self.folder / file, "wb")
        self._handle.write(len(encoded).to_bytes(8, "little") + encoded)
        self._file = file

    def _close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def _write_index(self) -> None:
        if len(self.shards) < 2:
            return
        index = {
            "metadata": {"total_parameters": sum(_numel(spec.shape) for _, spec in self._queue), "total_size": self.total_bytes},
            "weight_map": {spec.name: file for file, spec in sorted(self._queue, key=lambda item: item[1].name)},
        }
        (self.folder / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
