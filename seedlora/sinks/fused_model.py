"""Write a merge as a full model folder: base + merged update, streamed shard by shard.

`FusedModelSink` walks the base in on-disk order. An adapted weight is read in blocks of rows
and W + τ is summed in float32 (τ's rows are B[rows] @ A for low-rank results: never the whole
matrix), then cast back to W's dtype; a LoRA bias is added to the base bias; modules_to_save
tensors replace the base's; a save_embedding_layers copy stands in for the base weight it copies
(as PEFT loads it); full checkpoints add their merged task vector. Every other tensor is copied
byte for byte by the kernel. When the base ties its output head to the input embedding and the
merge changes either, the head is written as its own tensor and the config unties them, so the
model computes what the adapters computed. Peak memory: a few MB of blocks for low-rank methods
and for ties / magnitude_prune of LoRA inputs (their rows are formed as the base streams by,
methods/rowwise.py), one module's dense τ and its K inputs for other dense methods, never a shard.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

import torch

from ..errors import IncompatibleInputsError, UnsupportedFeatureError
from ..lowrank import LowRank
from ..methods.rowwise import RowwiseMerge
from ..pipeline.merger import progress_bar
from ..pipeline.plan import MergePlan
from ..pipeline.report import MergeReport
from ..safetensors_io import TensorInfo, row_blocks
from ..sources.model_folder import CONFIG_NAME, INDEX_NAME, OUTPUT_HEAD
from .adapter_folder import CARD_NAME, PROVENANCE_NAME, base_model_name, protected_paths
from .config_file import CONFIG_NAME as SETTINGS_NAME, config_text
from .model_card import model_card
from .provenance import provenance_record
from .shard_writer import ShardWriter, TensorSpec, parse_size, plan_by_size, tensor_bytes
from .staging import check_output_free, check_output_path, staged_output

# weight formats never copied as side files (the fused shards replace the base's weights)
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf", ".onnx")
NOT_COPIED = (INDEX_NAME, "pytorch_model.bin.index.json", PROVENANCE_NAME, CARD_NAME, SETTINGS_NAME, "merge_report.json")
BLOCK_ELEMENTS = 1 << 18  # rows of W + τ per step: 1 MB of float32, stays in a core's L2 cache


@dataclass(frozen=True)
class OutputTensor:
    """One tensor of the fused model: where its starting value comes from and what changes it.

    kind: "copy" (bytes of `source`), "weight"/"bias" (+ the merged update of `key`),
    "saved" (replaced by merged modules_to_save tensor `key` = (module, param)), "tensor"
    (+ a checkpoint merge's task vector).
    """

    name: str
    source: TensorInfo
    kind: str
    key: object = None

    @property
    def spec(self) -> TensorSpec:
        return TensorSpec(self.name, self.source.dtype, self.source.shape)


class FusedModelSink:
    """A model folder at `output`: the base with the merged update fused in."""

    kind = "fused"

    def __init__(self, output, overwrite: bool = False, shard_size=None):
        self.output, self.overwrite, self.shard_size = Path(output), overwrite, shard_size

    def prepare(self, plan: MergePlan) -> None:
        if plan.base is None:
            raise IncompatibleInputsError("a fused model needs the base model: pass --base BASE_DIR (base=...)")
        check_output_path(self.output, protected_paths(plan))
        check_output_free(self.output, self.overwrite)
        self.tensors, self.untie = output_tensors(plan)
        self.layout = output_layout(plan, self.tensors, self.shard_size)

    def write(self, plan: MergePlan, merger, report: MergeReport, facts) -> None:
        report.shards = [file for file, _ in self.layout]
        pending = PendingModules(plan, merger)
        base, started = plan.base, time.perf_counter()
        metadata = base.metadata.get(base.shards[0]) if base.shards else None
        with staged_output(self.output, self.overwrite) as staging:
            copy_side_files(base.path, staging, self.untie)
            with ShardWriter(staging, self.layout, metadata) as writer:
                for tensor in progress_bar(self.tensors, merger.progress, "fusing", "tensor"):
                    if tensor.kind == "copy":
                        writer.copy_from(tensor.name, tensor.source.file, tensor.source.start, tensor.source.nbytes)
                        report.tensors_copied += 1
                    else:
                        writer.write_chunks(tensor.name, self._chunks(tensor, pending, report))
                        report.tensors_merged += 1
                report.bytes_written = writer.total_bytes
            report.seconds = time.perf_counter() - started
            record = provenance_record(report, facts.result(), {"report": report.to_dict()})
            (staging / PROVENANCE_NAME).write_text(json.dumps(record, indent=2, sort_keys=True, default=str) + "\n")
            settings = config_text(plan, fuse=True, shard_size=self.shard_size)
            (staging / SETTINGS_NAME).write_text(settings)
            (staging / CARD_NAME).write_text(model_card(report, base_model_name(plan), facts.result(), settings))

    def _chunks(self, tensor: OutputTensor, pending: "PendingModules", report: MergeReport) -> Iterator:
        info = tensor.source
        if tensor.kind == "weight":
            merged, transposed = pending.take(tensor.key, "weight"), pending.plan.modules[tensor.key].transposed
            if merged.stats:  # the method's per-module statistics (Model Stock's t, ...) go into the report
                report.module_stats[tensor.key] = merged.stats
            start = pending.copy_weight(tensor.key)
            update = merged.weight
            if isinstance(update, RowwiseMerge) and transposed:
                update = update.dense()  # a Conv1D weight is stored in x out: its rows are the update's columns
            grid = update.grid if isinstance(update, RowwiseMerge) else 1
            return fused_blocks(info, update_rows(update, transposed), start, grid)
        if tensor.kind == "bias":
            bias = pending.take(tensor.key, "bias").bias
            return [tensor_bytes(add_delta(pending.plan.base.load(info), bias))]
        if tensor.kind == "saved":
            module, param = tensor.key
            return [tensor_bytes(pending.saved(module)[param].to(info.torch_dtype))]
        weight, delta, stats = pending.merger.tensor(tensor.name)
        if stats:
            report.module_stats[tensor.name] = stats
        report.merged_params += delta.numel()
        report.zero_delta_params += int(torch.count_nonzero(delta == 0))
        return [tensor_bytes(add_delta(weight, delta))]


class PendingModules:
    """Merged modules kept only until all their fused tensors (weight, bias) are written."""

    def __init__(self, plan: MergePlan, merger):
        self.plan, self.merger = plan, merger
        self._merged, self._saved, self._copies = {}, {}, {}
        self._uses = {name: 1 + int(t.bias) for name, t in plan.modules.items()}

    def take(self, module: str, part: str):
        if module not in self._merged:
            self._merged[module] = self.merger.module(module, rowwise=True).cpu()  # fused on the CPU, beside the mmap
        merged = self._merged[module]
        self._uses[module] -= 1
        if self._uses[module] == 0:
            del self._merged[module]
        return merged

    def saved(self, module: str) -> dict:
        if module not in self._saved:
            self._saved[module] = self.merger.saved(module)
        return self._saved[module]

    def copy_weight(self, module: str) -> Optional[torch.Tensor]:
        """The inputs' saved base layer of `module` (the weight PEFT loaded), if they saved one."""
        return self.merger.copy(module) if module in self.plan.copies else None


def output_tensors(plan: MergePlan) -> tuple[list, bool]:
    """The fused model's tensors in write order, and whether the output head must be untied."""
    base = plan.base
    roles = _roles(plan)
    tensors = []
    for name, info in base.tensors.items():
        kind, key = roles.get(name, ("copy", None))
        if plan.checkpoints:
            kind = "tensor" if info.is_float else "copy"
        elif kind in ("weight", "bias") and not info.is_float:
            raise IncompatibleInputsError(f"{base.path}: {name} is stored as {info.dtype}; fusing needs a float16/bfloat16/float32 base (not quantized)")
        tensors.append(OutputTensor(name, info, kind, key))
    untie = _untie(plan, roles)
    if untie and OUTPUT_HEAD not in base.tensors:
        embedding = base.tensors[base.embedding_name()]
        kind, key = roles.get(OUTPUT_HEAD, ("copy", None))
        at = next(i for i, t in enumerate(tensors) if t.name == embedding.name) + 1
        tensors.insert(at, OutputTensor(OUTPUT_HEAD, embedding, kind, key))
    return tensors, untie


def _roles(plan: MergePlan) -> dict:
    """base tensor name -> (kind, key) for every tensor the merge changes; checks the base can hold it."""
    roles, base = {}, plan.base
    for name, target in plan.modules.items():
        roles[target.weight_name] = ("weight", name)
        if target.bias:
            if target.bias_name not in base.tensors:
                raise UnsupportedFeatureError(
                    f"module {name} has a LoRA bias but base {base.path} has no {target.bias_name}; a fused model "
                    "cannot hold it (PEFT cannot merge it either): write an adapter instead of --fuse"
                )
            roles[target.bias_name] = ("bias", name)
    for module, target in plan.saved.items():
        for param, shape in target.shapes:
            info = base.weight(f"{module}.{param}")  # a tied head resolves to the embedding
            if info is None or tuple(info.shape) != tuple(shape):
                raise UnsupportedFeatureError(
                    f"modules_to_save {module}.{param} has no tensor of shape {list(shape)} in base {base.path} (a head "
                    "added for another task?); a fused model cannot add it: write an adapter instead of --fuse"
                )
            roles[f"{module}.{param}"] = ("saved", (module, param))
    for module, shape in plan.copies.items():
        info = base.weight(f"{module}.weight")
        if info is None or tuple(info.shape) != tuple(shape):
            raise UnsupportedFeatureError(
                f"the inputs' saved base layer of {module} has shape {list(shape)} but base {base.path} has "
                f"{list(info.shape) if info else 'none'}; a resized vocabulary cannot be fused: write an adapter instead"
            )
    return roles


def _untie(plan: MergePlan, roles: dict) -> bool:
    """True when the base ties its head to the embedding and the merge changes either of them."""
    base = plan.base
    embedding = base.embedding_name()
    if not base.tied_embeddings or embedding is None or plan.checkpoints:
        return False
    return OUTPUT_HEAD in roles or embedding in roles


def output_layout(plan: MergePlan, tensors: list, shard_size=None) -> list:
    """[(file, [TensorSpec])]: the base's own shards (a new head joins the embedding's), or `shard_size` shards."""
    if shard_size is not None:
        return plan_by_size([t.spec for t in tensors], parse_size(shard_size))
    layout = {shard.name: [] for shard in plan.base.shards}
    for tensor in tensors:
        layout[tensor.source.file.name].append(tensor.spec)
    return list(layout.items())


def update_rows(update, transposed: bool) -> Callable[[torch.Tensor, int], None]:
    """add(work, start): work += τ's rows from `start` on, in the base weight's layout.

    A low-rank update is never formed whole: each block of rows is one addmm with B[rows] and A.
    """
    if isinstance(update, RowwiseMerge):
        return update.add_to
    if isinstance(update, LowRank):
        left, right = (update.A.T, update.B.T) if transposed else (update.B, update.A)
        return lambda work, start: work.addmm_(left[start : start + work.shape[0]].to(work.dtype), right.to(work.dtype))
    dense = update.T if transposed else update
    return lambda work, start: work.add_(dense[start : start + work.shape[0]])


def fused_blocks(info: TensorInfo, add: Callable, start_weight: Optional[torch.Tensor] = None, grid: int = 1) -> Iterator:
    """Bytes of W + τ, block by block of rows: summed in float32 (float64 for float64 W), rounded once to W's dtype.

    W comes from the memory-mapped base (or `start_weight`, a saved base-layer copy). Each step
    is a same-dtype or plain-conversion kernel, which torch vectorises: W's block is converted
    into one reused float32 buffer, τ's rows are added in place, the sum is rounded into a new
    block of W's dtype (it goes to the writer thread). Blocks start on multiples of `grid` rows
    (a RowwiseMerge forms its rows on that grid).
    """
    compute = torch.promote_types(info.torch_dtype, torch.float32)
    per_block = max(grid, BLOCK_ELEMENTS // max(1, info.shape[1]) // grid * grid)
    work = torch.empty(min(per_block, info.shape[0]), info.shape[1], dtype=compute)
    blocks = row_blocks(info, per_block) if start_weight is None else (
        (start, start_weight[start : start + per_block]) for start in range(0, info.shape[0], per_block))
    for start, block in blocks:
        rows = work[: block.shape[0]]
        rows.copy_(block)
        add(rows, start)
        yield tensor_bytes(torch.empty(block.shape, dtype=info.torch_dtype).copy_(rows))


def add_delta(weight: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """(W + τ) computed in float32 (float64 for float64 weights), cast back to W's dtype."""
    return torch.add(delta.to(torch.promote_types(weight.dtype, torch.float32)), weight).to(weight.dtype)


def copy_side_files(source: Path, target: Path, untie: bool = False) -> list:
    """Copy config, generation config, tokenizer and other non-weight top-level files.

    With `untie`, config.json gets tie_word_embeddings = false (the head is written on its own).
    """
    copied = []
    for path in sorted(source.iterdir()):
        name = path.name
        if not path.is_file() or name.startswith(".") or name in NOT_COPIED or name.endswith(WEIGHT_SUFFIXES):
            continue
        shutil.copyfile(path, target / name)
        copied.append(name)
    if untie and (target / CONFIG_NAME).is_file():
        config = json.loads((target / CONFIG_NAME).read_text())
        config["tie_word_embeddings"] = False
        if isinstance(config.get("text_config"), dict):
            config["text_config"]["tie_word_embeddings"] = False
        (target / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return copied
