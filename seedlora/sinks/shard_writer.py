"""Write safetensors shards and model.safetensors.index.json, streaming one tensor at a time.

The layout (which tensor goes in which file, in which order) is planned up front from names,
dtypes and shapes, so each shard's header is written first and the tensors' bytes follow in
order: nothing but the bytes in hand is ever held in memory and no shard is assembled in RAM.
Writes run on one background I/O thread (a short bounded queue), overlapping the caller's
compute; untouched tensors are copied file to file by the kernel (copy_file_range). Layouts follow transformers' conventions: one `model.safetensors`, or
`model-0000i-of-0000n.safetensors` files plus an index with `total_size` and `weight_map`.
"""

from __future__ import annotations

import json
import os
import queue
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Union

import torch

from ..errors import SeedLoraError
from ..safetensors_io import DTYPES
from ..sources.model_folder import INDEX_NAME, WEIGHTS_NAME

CHUNK_BYTES = 64 << 20  # largest single kernel copy (copy_file_range) of an untouched tensor
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
        return DTYPES[self.dtype][1] * _numel(self.shape)


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


def _copy_range(source, target, offset: int, count: int) -> int:
    """Copy up to `count` bytes at `offset` of `source` to `target`'s position; bytes copied."""
    try:
        return os.copy_file_range(source.fileno(), target.fileno(), count, offset)
    except (AttributeError, OSError):  # not Linux, or a file system without it: copy through memory
        source.seek(offset)
        data = source.read(count)
        return target.write(data) if data else 0


def tensor_bytes(tensor: torch.Tensor) -> memoryview:
    """The tensor's raw little-endian bytes, without a copy when it is already contiguous."""
    flat = tensor.detach().contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy()) if flat.numel() else memoryview(b"")


class _IOThread:
    """Runs file operations in order on one background thread, so disk writes overlap compute.

    At most `depth` operations wait (each holds its bytes; a memoryview keeps its tensor
    alive). The first error stops all later operations and is raised in the caller at the next
    submit or at join.
    """

    def __init__(self, depth: int):
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._error: Optional[BaseException] = None
        self._thread = threading.Thread(target=self._run, name="seedlora-shard-writer", daemon=True)
        self._thread.start()

    def submit(self, fn, *args) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put((fn, args))

    def join(self) -> None:
        self._queue.put(None)
        self._thread.join()
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            if self._error is None:
                try:
                    item[0](*item[1])
                except BaseException as exc:  # handed to the caller's thread
                    self._error = exc


class ShardWriter:
    """Context manager writing a planned layout; `write` each tensor in planned order.

    `shards` is [(file name, [TensorSpec, ...]), ...]. With `background` (default) the file
    writes run on one I/O thread, overlapping the caller's compute; bytes handed over must not
    be modified afterwards. On a clean exit every planned tensor must have been written; the
    index is then written when there is more than one shard.
    """

    def __init__(self, folder, shards: list, metadata: Optional[dict] = None, background: bool = True):
        self.folder = Path(folder)
        self.shards = shards
        self.metadata = {"format": "pt", **(metadata or {})}
        self._queue = [(file, spec) for file, specs in shards for spec in specs]
        self._position = 0
        self._file = None  # the file the caller is filling (main thread's view)
        self._handle = None  # the open file (touched only by the I/O thread)
        self._background = background
        self._io: Optional[_IOThread] = None

    def __enter__(self) -> "ShardWriter":
        self._io = _IOThread(depth=4) if self._background else None
        for file, specs in self.shards:
            if not specs:  # an empty model still gets its (empty) file
                self._do(self._open, file, self._header(specs))
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        error = None
        if self._io is not None:
            try:
                self._io.submit(self._close)
            except BaseException as failure:  # the I/O thread failed earlier; it still drains and stops
                error = failure
            try:
                self._io.join()
            except BaseException as failure:
                error = error or failure
        self._close()
        if exc_type is not None:
            return  # the caller's own error propagates
        if error is not None:
            raise error
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
        """Write tensor `name` from an iterable of byte chunks, in order."""
        spec = self._next(name)
        written = 0
        for chunk in chunks:
            view = memoryview(chunk).cast("B")
            written += len(view)
            self._do(self._write_all, view)
        self._done(spec, written)

    def copy_from(self, name: str, source: Path, offset: int, nbytes: int) -> None:
        """Write tensor `name` as the `nbytes` bytes at `offset` of file `source`, copied in the kernel."""
        spec = self._next(name)
        self._do(self._copy, source, offset, nbytes, name)
        self._done(spec, nbytes)

    def _do(self, fn, *args) -> None:
        if self._io is not None:
            self._io.submit(fn, *args)
        else:
            fn(*args)

    def _done(self, spec: TensorSpec, written: int) -> None:
        if written != spec.nbytes:
            raise RuntimeError(f"shard writer: {spec.name} got {written} bytes, expected {spec.nbytes}")
        self._position += 1

    def _next(self, name: str) -> TensorSpec:
        if self._position >= len(self._queue) or self._queue[self._position][1].name != name:
            expected = self._queue[self._position][1].name if self._position < len(self._queue) else "nothing"
            raise RuntimeError(f"shard writer: got {name}, expected {expected}")
        file, spec = self._queue[self._position]
        if file != self._file:
            self._do(self._open, file, self._header(next(specs for f, specs in self.shards if f == file)))
            self._file = file
        return spec

    def _header(self, specs: list) -> bytes:
        header, offset = {"__metadata__": self.metadata}, 0
        for spec in specs:
            header[spec.name] = {"dtype": spec.dtype, "shape": list(spec.shape), "data_offsets": [offset, offset + spec.nbytes]}
            offset += spec.nbytes
        encoded = json.dumps(header, separators=(",", ":")).encode()
        encoded += b" " * (-len(encoded) % 8)  # safetensors pads the header to 8 bytes
        return len(encoded).to_bytes(8, "little") + encoded

    # ---- file operations (on the I/O thread when background) ----
    def _open(self, file: str, header: bytes) -> None:
        self._close()
        self._handle = open(self.folder / file, "wb", buffering=0)
        self._write_all(memoryview(header))

    def _write_all(self, view: memoryview) -> None:
        done = 0
        while done < len(view):  # raw writes may be partial (Linux caps one write at ~2 GiB)
            done += self._handle.write(view[done:])

    def _copy(self, source: Path, offset: int, nbytes: int, name: str) -> None:
        copied = 0
        with open(source, "rb", buffering=0) as handle:
            while copied < nbytes:
                count = _copy_range(handle, self._handle, offset + copied, min(nbytes - copied, CHUNK_BYTES))
                if count == 0:
                    raise RuntimeError(f"shard writer: {source} ends inside tensor {name}")
                copied += count

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
