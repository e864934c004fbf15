"""Fuse merged LoRA updates into a base model: W' = W + τ, streamed one tensor at a time.

`fuse_adapters` validates everything headers can tell (adapters agree, every adapted module's
weight exists in the base with the right shape and a float dtype, output free), then walks
the base in on-disk order. An adapted weight is read in blocks of rows; τ comes from
`merge_module` (so random methods draw the same masks as on the adapter path), each block of
W + τ is summed in float32 and cast back to W's dtype; every other tensor is copied byte for
byte by the kernel. Output goes to a staged folder (complete or absent) with config, tokenizer
and other side files, a provenance file and a model card. Peak memory is a few MB of blocks for
low-rank methods (τ's rows are B[rows] @ A, never the whole matrix) and the largest module's
dense τ for dense methods: never a shard. `write_model_folder` is shared with checkpoints.py.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import torch

from .errors import IncompatibleInputsError
from .hf_model import INDEX_NAME, ModelFolder, TensorInfo
from .merge import merge_module_stats, open_adapters, resolve_method, validate_compatible
from .output import check_output_free, staged_output
from .provenance import provenance_record
from .lowrank import LowRank
from .shard_writer import ShardWriter, TensorSpec, parse_size, plan_by_size, tensor_bytes

PROVENANCE_NAME = "seedlora_provenance.json"
CARD_NAME = "README.md"
# weight formats never copied as side files (the fused shards replace the base's weights)
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf", ".onnx")
_NOT_COPIED = (INDEX_NAME, "pytorch_model.bin.index.json", PROVENANCE_NAME, CARD_NAME)
BLOCK_ELEMENTS = 1 << 18  # rows of W + τ per step: 1 MB of float32, stays in a core's L2 cache


@dataclass
class FusedReport:
    """What a fused-model merge wrote; the provenance file embeds it."""

    kind: str  # "adapters" (LoRA updates fused into base) or "checkpoints" (task vectors)
    output: str
    base: str
    method: str
    params: dict
    weights: list
    seed: int
    inputs: list
    shards: list
    updated: int = 0  # tensors recomputed
    copied: int = 0  # tensors copied byte for byte from the base
    bytes_written: int = 0
    merged_params: int = 0  # checkpoint merges: entries of the merged tensors
    zero_delta_params: int = 0  # of those, entries whose merged delta is exactly 0 (= base)
    seconds: float = 0.0
    module_stats: dict = field(default_factory=dict)  # module -> per-module stats the method reported

    @property
    def unchanged_share(self) -> float:
        """Share of merged entries taken unchanged from the base (merged delta exactly 0)."""
        return self.zero_delta_params / self.merged_params if self.merged_params else 0.0

    def to_dict(self) -> dict:
        """What the provenance file records (no output path or timing: reruns stay byte-identical)."""
        record = {"kind": self.kind, "shards": self.shards, "tensors_merged": self.updated,
                  "tensors_copied": self.copied, "bytes_written": self.bytes_written}
        if self.kind == "checkpoints":
            record.update(merged_params=self.merged_params, zero_delta_params=self.zero_delta_params,
                          unchanged_share=self.unchanged_share)
        if self.module_stats:
            record["module_stats"] = self.module_stats
        return record

    def summary(self) -> str:
        """One line for the terminal."""
        text = (
            f"{self.output}: {self.updated} tensors merged ({self.method}), {self.copied} copied unchanged, "
            f"{len(self.shards)} shard(s), {self.bytes_written / 1e9:.2f} GB in {self.seconds:.1f} s"
        )
        if self.kind == "checkpoints":
            text += f"; {self.unchanged_share:.1%} of merged entries left at the base value"
        from .methods import stats_summary  # per-module stats a method reported (Model Stock's t, ...)

        for name, (lo, mid, hi) in stats_summary(list(self.module_stats.values())).items():
            text += f"\n{name} per module: min {lo:.4g}, median {mid:.4g}, max {hi:.4g} ({len(self.module_stats)} modules)"
        return text


def fuse_adapters(
    adapter_paths: Sequence,
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
    """Merge LoRA adapters with `method` and write base + merged update as a model folder."""
    started = time.perf_counter()
    check_output_free(output, overwrite)
    adapters = open_adapters(adapter_paths)
    names = validate_compatible(adapters)
    entry, resolved, weight_tensor = resolve_method(method, params, weights, len(adapters))
    base = ModelFolder.open(base_dir)
    targets = adapted_weights(adapters[0], names, base)
    layout = output_layout(base, shard_size)
    report = _new_report("adapters", output, base, entry.name, resolved, weight_tensor, seed, adapters, layout)

    def new_chunks(info: TensorInfo) -> Optional[Iterator]:
        module = targets.get(info.name)
        if module is None:
            return None
        update, stats = merge_module_stats(adapters, module, entry, weight_tensor, resolved, seed)
        if stats:
            report.module_stats[module] = stats
        return fused_blocks(base, info, update_rows(update, adapters[0].modules[module].transposed))

    provenance = provenance_record(adapters, report, base=base.path)
    write_model_folder(base, output, layout, new_chunks, report, provenance, overwrite, progress)
    report.seconds = time.perf_counter() - started
    return report


def adapted_weights(adapter, names: Sequence[str], base: ModelFolder) -> dict:
    """base tensor name -> module, after checking each module's weight exists, fits and is float."""
    targets = {}
    for name in names:
        module, key = adapter.modules[name], f"{name}.weight"
        info = base.tensors.get(key)
        if info is None:
            raise IncompatibleInputsError(
                f"{adapter.path}: module {name} has no weight {key} in base {base.path} (a tied or renamed weight?); "
                "pass the base model the adapters were trained on"
            )
        expected = (module.in_features, module.out_features) if module.transposed else module.shape
        if info.shape != expected:
            raise IncompatibleInputsError(
                f"{adapter.path}: module {name} updates a {list(expected)} weight but base {base.path} has {key} of shape "
                f"{list(info.shape)}; pass the base model the adapters were trained on"
            )
        if not info.mergeable:
            raise IncompatibleInputsError(
                f"{base.path}: {key} is stored as {info.dtype}; fusing needs a float16/bfloat16/float32 base (not quantized)"
            )
        targets[key] = name
    return targets


def update_rows(update, transposed: bool) -> Callable[[torch.Tensor, int], None]:
    """add(work, start): work += τ's rows from `start` on, in the base weight's layout.

    A low-rank update is never formed whole: each block of rows is one addmm with B[rows] and A.
    """
    if isinstance(update, LowRank):
        left, right = (update.A.T, update.B.T) if transposed else (update.B, update.A)
        return lambda work, start: work.addmm_(left[start : start + work.shape[0]].to(work.dtype), right.to(work.dtype))
    dense = update.T if transposed else update
    return lambda work, start: work.add_(dense[start : start + work.shape[0]])


def fused_blocks(base: ModelFolder, info: TensorInfo, add: Callable[[torch.Tensor, int], None]) -> Iterator:
    """Bytes of W + τ, block by block of rows: summed in float32 (float64 for float64 W), rounded once to W's dtype.

    Every step is a same-dtype or plain-conversion kernel, which torch vectorizes (an add
    mixing bfloat16 and float32 operands runs ~10x slower): W's block is converted into one
    reused float32 buffer straight from the memory-mapped shard, τ's rows are added in place,
    and the sum is rounded into a new block of W's dtype (it goes to the writer thread).
    """
    compute = torch.promote_types(info.torch_dtype, torch.float32)
    per_block = max(1, BLOCK_ELEMENTS // max(1, info.shape[1]))
    work = torch.empty(min(per_block, info.shape[0]), info.shape[1], dtype=compute)
    for start, block in base.row_blocks(info, per_block):
        rows = work[: block.shape[0]]
        rows.copy_(block)
        add(rows, start)
        yield tensor_bytes(torch.empty(block.shape, dtype=info.torch_dtype).copy_(rows))


def add_delta(weight: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """(W + τ) computed in float32 (float64 for float64 weights), cast back to W's dtype."""
    return torch.add(delta.to(torch.promote_types(weight.dtype, torch.float32)), weight).to(weight.dtype)


def output_layout(base: ModelFolder, shard_size=None) -> list:
    """[(file, [TensorSpec])]: the base's own shard layout, or shards of at most `shard_size`."""
    if shard_size is None:
        return [
            (shard.name, [TensorSpec(i.name, i.dtype, i.shape) for i in base.tensors_in(shard)])
            for shard in base.shards
        ]
    specs = [TensorSpec(i.name, i.dtype, i.shape) for i in base.tensors.values()]
    return plan_by_size(specs, parse_size(shard_size))


def write_model_folder(
    base: ModelFolder,
    output,
    layout: list,
    new_chunks: Callable[[TensorInfo], Optional[Iterator]],
    report: FusedReport,
    provenance: dict,
    overwrite: bool,
    progress: bool,
) -> Path:
    """Stream every base tensor through `new_chunks` (None: copy its bytes) into a staged folder."""
    from tqdm.auto import tqdm

    metadata = base.metadata.get(base.shards[0]) if base.shards else None
    with staged_output(output, overwrite) as staging:
        copy_side_files(base.path, staging)
        with tqdm(total=base.total_bytes, unit="B", unit_scale=True, desc="fusing", disable=not progress, leave=False) as bar:
            with ShardWriter(staging, layout, metadata) as writer:
                for info in base.tensors.values():
                    chunks = new_chunks(info)
                    if chunks is None:
                        writer.copy_from(info.name, info.shard, info.start, info.nbytes)
                        report.copied += 1
                    else:
                        writer.write_chunks(info.name, chunks)
                        report.updated += 1
                    bar.update(info.nbytes)
            report.bytes_written = writer.total_bytes
        provenance = {**provenance, "output": "fused model", "report": report.to_dict()}
        (staging / PROVENANCE_NAME).write_text(json.dumps(provenance, indent=2, sort_keys=True, default=str) + "\n")
        (staging / CARD_NAME).write_text(model_card(report, base))
    return Path(output)


def copy_side_files(source: Path, target: Path) -> list:
    """Copy config, generation config, tokenizer and other non-weight top-level files."""
    copied = []
    for path in sorted(source.iterdir()):
        name = path.name
        if not path.is_file() or name.startswith(".") or name in _NOT_COPIED or name.endswith(_WEIGHT_SUFFIXES):
            continue
        shutil.copyfile(path, target / name)
        copied.append(name)
    return copied


def _new_report(kind, output, base, method, params, weights, seed, inputs, layout) -> FusedReport:
    return FusedReport(
        kind=kind, output=str(output), base=str(base.path), method=method, params=params,
        weights=[float(w) for w in weights], seed=int(seed), inputs=[str(getattr(i, "path", i)) for i in inputs],
        shards=[file for file, _ in layout],
    )


def model_card(report: FusedReport, base: ModelFolder) -> str:
    """README.md for the fused folder: what it is, how it was made, how to load and serve it."""
    base_name = (base.config or {}).get("_name_or_path") or base.path.name
    what = "LoRA adapters fused into the base" if report.kind == "adapters" else "full fine-tuned checkpoints (task vectors)"
    inputs = "\n".join(f"- `{path}`" for path in report.inputs)
    params = ", ".join(f"{k}={v}" for k, v in report.params.items()) or "none"
    return f"""---
base_model: {base_name}
library_name: transformers
tags: [seedlora, merge]
---
# Merged model ({report.method})

Made by seedlora from {len(report.inputs)} {what}:

{inputs}

- method: `{report.method}` ({params}); weights {report.weights}; seed {report.seed}
- each merged weight is W + τ computed in float32 and cast back to W's dtype; the other
  {report.copied} tensors are the base's, byte for byte; inputs and settings in `{PROVENANCE_NAME}`

```python
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained("path/to/this/folder")
```

Serve with vLLM: `vllm serve path/to/this/folder`
"""
