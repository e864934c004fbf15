"""The one safetensors reader: headers without data, tensors as views of a memory-mapped file.

`read_header(path)` returns every tensor's name, dtype, shape and absolute byte range after
checking that the ranges fit the file and match the shapes, so corrupt files fail before any
merge work. `MappedFile` maps a file once (copy-on-write, never written) and hands out
zero-copy views; `row_blocks` maps one tensor's byte range and yields blocks of rows, so a
streaming merge holds at most the tensor in hand, never a shard.
"""

from __future__ import annotations

import json
import math
import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import torch

from .errors import InputFormatError

# safetensors dtype code -> (torch dtype name, bytes per element)
DTYPES = {
    "BOOL": ("bool", 1), "U8": ("uint8", 1), "I8": ("int8", 1), "F8_E4M3": ("float8_e4m3fn", 1),
    "F8_E5M2": ("float8_e5m2", 1), "I16": ("int16", 2), "U16": ("uint16", 2), "F16": ("float16", 2),
    "BF16": ("bfloat16", 2), "I32": ("int32", 4), "U32": ("uint32", 4), "F32": ("float32", 4),
    "I64": ("int64", 8), "U64": ("uint64", 8), "F64": ("float64", 8),
}
FLOAT_CODES = ("F16", "BF16", "F32", "F64")  # dtypes a merge computes on (in float32)
CODES = {torch_name: code for code, (torch_name, _) in DTYPES.items()}
MAX_HEADER_BYTES = 100_000_000


@dataclass(frozen=True)
class TensorInfo:
    """Where one stored tensor lives: file, absolute byte offset, dtype code, shape."""

    name: str
    file: Path
    dtype: str  # safetensors code: F32, BF16, I64, ...
    shape: tuple
    start: int  # absolute offset of the first data byte in `file`
    nbytes: int

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, DTYPES[self.dtype][0])

    @property
    def is_float(self) -> bool:
        """True for float16/bfloat16/float32/float64 tensors (merged in float32)."""
        return self.dtype in FLOAT_CODES

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def dtype_code(dtype: torch.dtype) -> str:
    """safetensors' code for a torch dtype (torch.bfloat16 -> 'BF16')."""
    return CODES[str(dtype).removeprefix("torch.")]


def read_header(path: Path, error=InputFormatError) -> tuple[dict, dict]:
    """({name: TensorInfo} in on-disk order, __metadata__) of a safetensors file; no data read.

    Raises `error` (an InputFormatError subclass) naming the file for anything unreadable.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            if length < 2 or length > min(MAX_HEADER_BYTES, size - 8):
                raise ValueError("bad header length")
            header = json.loads(handle.read(length))
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
        metadata = header.pop("__metadata__", None) or {}
        entries = sorted(header.items(), key=lambda item: item[1]["data_offsets"][0])
        infos = {name: _tensor_info(path, name, entry, 8 + length) for name, entry in entries}
    except (OSError, ValueError, struct.error, KeyError, TypeError) as exc:
        raise error(f"{path}: not a readable safetensors file ({exc}); re-save or re-copy it") from None
    if infos and max(i.start + i.nbytes for i in infos.values()) > size:
        raise error(f"{path}: file is truncated (its header promises more data than it holds); re-copy it")
    return infos, metadata


def _tensor_info(path: Path, name: str, entry: dict, data_start: int) -> TensorInfo:
    code, shape = entry["dtype"], tuple(int(s) for s in entry["shape"])
    begin, end = (int(v) for v in entry["data_offsets"])
    if code not in DTYPES:
        raise ValueError(f"tensor {name} has unsupported dtype {code}")
    if end < begin or end - begin != math.prod(shape) * DTYPES[code][1]:
        raise ValueError(f"tensor {name} has {end - begin} bytes for shape {list(shape)} {code}; the file is corrupt")
    return TensorInfo(name, path, code, shape, data_start + begin, end - begin)


class MappedFile:
    """One safetensors file mapped once (lazily); tensors are read-only zero-copy views."""

    def __init__(self, path: Path, error=InputFormatError):
        self.path = Path(path)
        self.error = error
        self._bytes: Optional[torch.Tensor] = None

    def tensor(self, info: TensorInfo) -> torch.Tensor:
        """The stored tensor (a view of the mapping; a copy only when the bytes are unaligned)."""
        if self._bytes is None:
            try:
                with open(self.path, "rb") as handle:
                    mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_COPY)
            except (OSError, ValueError) as exc:
                raise self.error(f"{self.path}: cannot read ({exc}); re-copy the file") from None
            self._bytes = torch.frombuffer(mapped, dtype=torch.uint8)
        raw = self._bytes[info.start : info.start + info.nbytes]
        if raw.numel() != info.nbytes:  # the header was checked at open: the file changed since
            raise self.error(f"{self.path}: ends inside tensor {info.name} (changed while open?); re-copy the file")
        if info.nbytes == 0:
            return torch.empty(info.shape, dtype=info.torch_dtype)
        if info.start % DTYPES[info.dtype][1]:  # unaligned: a copy is the only way to reinterpret it
            raw = raw.clone()
        return raw.view(info.torch_dtype).view(info.shape)


def load(info: TensorInfo, error=InputFormatError) -> torch.Tensor:
    """One tensor as a fresh CPU tensor in its stored dtype (a plain file read, no mapping)."""
    buffer = bytearray(info.nbytes)
    with open(info.file, "rb") as handle:
        handle.seek(info.start)
        if handle.readinto(buffer) != info.nbytes:
            raise error(f"{info.file}: ends inside tensor {info.name}; re-copy the file")
    if info.nbytes == 0:
        return torch.empty(info.shape, dtype=info.torch_dtype)
    return torch.frombuffer(buffer, dtype=info.torch_dtype).reshape(info.shape)


def row_blocks(info: TensorInfo, rows_per_block: int, error=InputFormatError) -> Iterator[tuple]:
    """(first row, rows x cols view) blocks of a 2-D tensor, in order, read from its mapped byte range.

    Only the tensor's own bytes are mapped, and the mapping goes away with the last view, so at
    most one tensor of a shard is ever mapped.
    """
    rows, cols = info.shape
    if info.nbytes == 0:
        return
    aligned = info.start - info.start % mmap.ALLOCATIONGRANULARITY
    with open(info.file, "rb") as handle:
        try:
            mapped = mmap.mmap(handle.fileno(), info.start + info.nbytes - aligned, offset=aligned, access=mmap.ACCESS_COPY)
        except (OSError, ValueError) as exc:
            raise error(f"{info.file}: cannot read tensor {info.name} ({exc}); re-copy the file") from None
    if hasattr(mapped, "madvise"):  # start reading the whole tensor ahead of the blocks
        mapped.madvise(mmap.MADV_WILLNEED)
    whole = torch.frombuffer(mapped, dtype=info.torch_dtype, count=info.numel, offset=info.start - aligned)
    whole = whole.view(rows, cols)
    for start in range(0, rows, rows_per_block):
        yield start, whole[start : start + rows_per_block]
