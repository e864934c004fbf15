"""Merge full fine-tuned checkpoints of one base model through their task vectors.

For every float tensor, τ_i = θ_i − θ_pre (float32), the method's `merge_deltas` combines
the K task vectors with the tensor's own seeded generator (`module_generator(seed, name)`),
and θ_pre + τ is cast back to the base dtype. This is the setting of parameter-selection
merging: fine-tuning in bf16 leaves many entries exactly unchanged, and `selection` with
resampling redraws those. Work streams in the base's on-disk order, one tensor at a time;
each checkpoint's copy is read by name, so checkpoints may be sharded differently from the
base. Non-float tensors (integer buffers) are copied from the base. Everything the headers
can tell (names, shapes, dtypes, shards) is validated before any tensor is read.
"""

from __future__ import annotations

import hashlib
import time
from typing import Optional, Sequence

import torch

from .errors import IncompatibleInputsError, UnsupportedFeatureError
from .fused import FusedReport, _new_report, add_delta, output_layout, write_model_folder
from .hf_model import CONFIG_NAME, ModelFolder, TensorInfo
from .merge import resolve_method
from .methods.base import split_stats
from .output import check_output_free
from .provenance import package_version
from .rng import module_generator
from .shard_writer import tensor_bytes


def merge_checkpoints(
    checkpoint_dirs: Sequence,
    base_dir,
    output,
    method="linear",
    weights: Optional[Sequence[float]] = None,
    params: Optional[dict] = None,
    seed: int = 0,
    shard_size=None,
    overwrite: bool = False,
    progress: bool = False,
) -> FusedReport:
    """Merge full model folders fine-tuned from `base_dir` into a model folder at `output`."""
    started = time.perf_counter()
    check_output_free(output, overwrite)
    if not checkpoint_dirs:
        raise IncompatibleInputsError("no checkpoints given; pass fine-tuned model folders and --base")
    entry, resolved, weight_tensor = resolve_method(method, params, weights, len(checkpoint_dirs))
    base = ModelFolder.open(base_dir)
    checkpoints = [ModelFolder.open(path) for path in checkpoint_dirs]
    for checkpoint in checkpoints:
        validate_checkpoint(checkpoint, base)
    layout = output_layout(base, shard_size)
    report = _new_report("checkpoints", output, base, entry.name, resolved, weight_tensor, seed, checkpoints, layout)

    def new_chunks(info: TensorInfo) -> Optional[list]:
        if not info.mergeable:
            return None
        weight = base.load(info)
        deltas = task_vectors(weight, [c.load(c.tensors[info.name]) for c in checkpoints])
        merged, stats = split_stats(entry.merge_deltas(deltas, weight_tensor, resolved, module_generator(seed, info.name)))
        if stats:
            report.module_stats[info.name] = stats
        report.merged_params += merged.numel()
        report.zero_delta_params += int(torch.count_nonzero(merged == 0))
        return [tensor_bytes(add_delta(weight, merged))]

    write_model_folder(base, output, layout, new_chunks, report, _provenance(report, base, checkpoints), overwrite, progress)
    report.seconds = time.perf_counter() - started
    return report


def task_vectors(base_weight: torch.Tensor, tuned: list) -> list:
    """τ_i = θ_i − θ_pre in float32 (float64 for float64 weights)."""
    compute = torch.promote_types(base_weight.dtype, torch.float32)
    pre = base_weight.to(compute)
    return [theta.to(compute).sub_(pre) for theta in tuned]


def validate_checkpoint(checkpoint: ModelFolder, base: ModelFolder) -> None:
    """Same tensor names, shapes and dtypes as the base; no fp8 tensors to merge."""
    missing = sorted(set(base.tensors) - set(checkpoint.tensors))
    extra = sorted(set(checkpoint.tensors) - set(base.tensors))
    if missing or extra:
        parts = [f"missing {_few(missing)}" if missing else "", f"extra {_few(extra)}" if extra else ""]
        raise IncompatibleInputsError(
            f"{checkpoint.path}: tensor names differ from base {base.path} ({'; '.join(p for p in parts if p)}); "
            "pass checkpoints fine-tuned from this base"
        )
    for name, info in base.tensors.items():
        other = checkpoint.tensors[name]
        if other.shape != info.shape:
            raise IncompatibleInputsError(
                f"{checkpoint.path}: tensor {name} has shape {list(other.shape)} but base {base.path} has "
                f"{list(info.shape)}; pass checkpoints fine-tuned from this base"
            )
        if other.dtype != info.dtype:
            raise IncompatibleInputsError(
                f"{checkpoint.path}: tensor {name} is {other.dtype} but base {base.path} stores it as {info.dtype} "
                "(dtype mix); save every checkpoint in the base's dtype (from_pretrained(dtype=...), save_pretrained)"
            )
        if info.dtype.startswith("F8"):
            raise UnsupportedFeatureError(
                f"{base.path}: tensor {name} is {info.dtype}; fp8 checkpoints cannot be merged, use bf16/fp16/fp32 ones"
            )


def fingerprint(model: ModelFolder) -> dict:
    """sha256 of config.json and of all shard headers (names, dtypes, shapes): no weight data read."""
    digest = hashlib.sha256()
    for info in model.tensors.values():
        digest.update(f"{info.name}|{info.dtype}|{list(info.shape)}|{info.shard.name}\n".encode())
    config = model.path / CONFIG_NAME
    return {
        CONFIG_NAME: hashlib.sha256(config.read_bytes()).hexdigest() if config.is_file() else None,
        "safetensors_headers": digest.hexdigest(),
        "bytes": model.total_bytes,
    }


def _provenance(report: FusedReport, base: ModelFolder, checkpoints: list) -> dict:
    return {
        "tool": "seedlora",
        "seedlora_version": package_version("seedlora"),
        "torch_version": package_version("torch"),
        "method": report.method,
        "params": report.params,
        "weights": report.weights,
        "seed": report.seed,
        "base": {"path": str(base.path), **fingerprint(base)},
        "inputs": [{"path": str(c.path), **fingerprint(c)} for c in checkpoints],
    }


def _few(items: list, shown: int = 3) -> str:
    more = f" (+{len(items) - shown} more)" if len(items) > shown else ""
    return ", ".join(items[:shown]) + more
