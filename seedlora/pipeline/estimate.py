"""What a merge would do, before it runs: per-module ranks, output size, memory peak, time (a dry run).

Built from the plan (headers only) and the sink after `prepare` (output rank, dtype, shard
layout): no tensor is read and nothing is written. Sizes are exact. The memory peak and the time
are estimates from simple cost models, and say so: memory counts the tensors the merge holds at
its largest step (the inputs' factors or dense deltas of the biggest module, the method's result,
the SVD's workspace, and an adapter's output, which is kept until it is saved); time counts
floating-point operations at the rate one matrix product reaches on this machine (measured
here, in a few milliseconds) plus the bytes read and written at an assumed disk rate.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from ..dense_lowrank import OVERSAMPLE, uses_exact_svd
from ..methods.rowwise import GRID_ENTRIES
from ..methods.sparsify import CPU_BLOCK
from .plan import MergePlan

DISK_BYTES_PER_S = 500e6  # assumed: a plain SSD; stated with every estimate
FLOAT = 4  # float32 working precision
FUSED_BUFFERS = 4 << 20  # fused output: a float32 block of W + τ, its cast copy, blocks queued for the writer


@dataclass(frozen=True)
class ModulePreview:
    """One adapted module: shape, the inputs' ranks, the exact merged rank and the rank written."""

    name: str
    shape: tuple
    ranks: tuple
    exact_rank: int
    output_rank: int  # None for a fused model (exact, no rank)
    dense: bool
    rowwise: bool = False  # dense, formed a block of rows at a time (methods/rowwise.py; on the CPU)


@dataclass
class Preview:
    """A dry run's answer: what would be merged and written, and what it would cost."""

    method: str
    sink: str  # "adapter" or "fused"
    output: str
    inputs: list
    modules: list = field(default_factory=list)  # ModulePreview
    output_rank: int = None
    output_dtype: str = None
    output_bytes: int = 0
    read_bytes: int = 0
    peak_bytes: int = 0
    flops: float = 0.0
    flops_per_s: float = 0.0
    warnings: list = field(default_factory=list)
    tensors_merged: int = 0  # fused / checkpoints: tensors that change

    @property
    def compute_seconds(self) -> float:
        return self.flops / self.flops_per_s if self.flops_per_s else 0.0

    @property
    def disk_seconds(self) -> float:
        return (self.read_bytes + self.output_bytes) / DISK_BYTES_PER_S


def preview(plan: MergePlan, sink) -> Preview:
    """The Preview of `plan` written by `sink` (after sink.prepare(plan))."""
    from ..sources.identity import display_name

    result = Preview(plan.method.name, sink.kind, str(sink.output), [display_name(s) for s in plan.sources],
                     warnings=list(plan.warnings), flops_per_s=matmul_rate())
    result.read_bytes = sum(input_bytes(s) for s in plan.sources) + (plan.base.total_bytes if sink.kind == "fused" else 0)
    if plan.checkpoints:
        return checkpoint_preview(plan, sink, result)
    rank = getattr(sink, "target_rank", None)
    for name, target in plan.modules.items():
        dense = target.dora or not plan.method.low_rank
        rowwise = dense and not target.dora and plan.method.merge_rowwise is not None
        result.modules.append(ModulePreview(name, target.shape, target.ranks, plan.exact_rank(name), rank, dense, rowwise))
        result.flops += module_flops(target, dense, rank if sink.kind == "adapter" else None, plan.exact_rank(name))
    result.peak_bytes = max((module_bytes(m, len(plan.sources), sink.kind) for m in result.modules), default=0)
    if sink.kind == "adapter":
        result.output_rank, result.output_dtype = rank, str(sink.dtype).removeprefix("torch.")
        result.output_bytes = adapter_bytes(plan, rank, sink.dtype.itemsize)
        result.peak_bytes += result.output_bytes  # the state dict is saved in one piece
    else:
        result.output_bytes = sum(spec.nbytes for _, specs in sink.layout for spec in specs)
        result.tensors_merged = sum(1 for t in sink.tensors if t.kind != "copy")
        result.flops += result.output_bytes / 2  # W + τ summed in float32 and cast back, per entry
        result.peak_bytes += FUSED_BUFFERS
    return result


def checkpoint_preview(plan: MergePlan, sink, result: Preview) -> Preview:
    """Full checkpoints: every float tensor is K task vectors merged by the method's dense rule."""
    k = len(plan.sources)
    sizes = [_numel(plan.base.tensors[name].shape) for name in plan.tensors]
    result.tensors_merged = len(plan.tensors)
    result.flops = sum(method_flops(n, k) for n in sizes)
    result.peak_bytes = max(sizes, default=0) * FLOAT * (k + 3)
    result.output_bytes = sum(spec.nbytes for _, specs in sink.layout for spec in specs)
    return result


def module_flops(target, dense: bool, rank, exact_rank: int) -> float:
    """Operations of one module's merge (and its cut to `rank` for an adapter; None: fused)."""
    out, inp = target.shape
    total_rank, k = sum(target.ranks), len(target.ranks)
    if not dense:
        flops = 4.0 * (out + inp) * total_rank**2 + 10.0 * total_rank**3  # Grams, core SVD
        if rank is not None and rank < exact_rank:
            flops += 2.0 * (out + inp) * total_rank * rank
        return flops
    flops = 2.0 * out * inp * total_rank + method_flops(out * inp, k)  # form the deltas, then the method
    if rank is not None:
        small = min(out, inp)
        exact_svd = uses_exact_svd((out, inp), rank)
        flops += 10.0 * out * inp * small if exact_svd else 12.0 * out * inp * (rank + OVERSAMPLE)
    return flops


def method_flops(entries: int, k: int) -> float:
    """A dense rule (masks, top-k, sign election, weighted sum) costs a few dozen passes over K deltas."""
    return 30.0 * entries * k


def module_bytes(module: ModulePreview, k: int, sink: str) -> int:
    """Working memory of one module's merge: its inputs, the result and (adapter, dense) the SVD.

    Row-block merges (ties / magnitude_prune of LoRA inputs) are counted as on the CPU; on a GPU
    they materialise the K updates like the other dense methods.
    """
    out, inp = module.shape
    if not module.dense:
        return FLOAT * (out + inp) * (2 * sum(module.ranks) + 2)
    svd = 3 if sink == "adapter" else 0
    if module.rowwise:  # K blocks of rows and the combine's rows; an adapter also holds the result it cuts
        blocks = FLOAT * (k + 1) * GRID_ENTRIES + FLOAT * (k + 6) * CPU_BLOCK
        return blocks + (FLOAT * out * inp * (1 + svd) if sink == "adapter" else 0)
    return FLOAT * out * inp * (k + 2 + svd)


def adapter_bytes(plan: MergePlan, rank: int, itemsize: int) -> int:
    """The adapter weights file: factors of the uniform rank, biases, saved modules and copies."""
    with_bias = any(t.bias for t in plan.modules.values())
    total = sum((t.out_features + t.in_features) * rank + (t.out_features if with_bias else 0) for t in plan.modules.values())
    total *= itemsize
    for target in plan.saved.values():
        total += sum(_numel(shape) for _, shape in target.shapes) * itemsize
    total += sum(_numel(shape) for shape in plan.copies.values()) * itemsize
    return total


def input_bytes(source) -> int:
    files = source.files() if hasattr(source, "files") else []
    return sum(f.stat().st_size for f in files if f.exists())


def matmul_rate(size: int = 384, repeats: int = 3) -> float:
    """Float32 operations per second of one matrix product on this machine (best of `repeats`)."""
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        a @ a
        best = min(best, time.perf_counter() - started)
    return 2.0 * size**3 / max(best, 1e-9)


def _numel(shape) -> int:
    count = 1
    for dim in shape:
        count *= int(dim)
    return count
