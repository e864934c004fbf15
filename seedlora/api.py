"""The public merge functions: each one opens its sources, picks its sink and runs the one pipeline.

    merge_adapters(folders, output)                 adapter folders -> adapter folder (or fused model with fuse=True)
    fuse_adapters(folders, base, output)            adapter folders -> fused model folder
    merge_checkpoints(folders, base, output)        full fine-tuned checkpoints -> model folder
    merge_peft_adapters(model, names, new_name)     adapters in a PeftModel -> new adapter in it
    merge(inputs, sink)                             any sources -> any sink
    preview(inputs, sink)                           what merge(inputs, sink) would do, without writing

Inputs and bases are folders or Hub ids (`org/name`, `org/name@revision`; sources.hub).
"""

from __future__ import annotations

from typing import Optional, Sequence

from .pipeline import Preview, preview_merge, run_merge
from .pipeline.report import MergeReport
from .sinks import AdapterFolderSink, FusedModelSink, PeftModelSink
from .sources import PeftModelAdapter, open_base, open_inputs


def merge(inputs: Sequence, sink, method="linear", weights: Optional[Sequence[float]] = None,
          params: Optional[dict] = None, seed: int = 0, base=None, strict: bool = False,
          progress=False) -> MergeReport:
    """Merge `inputs` (folders, Hub ids `org/name[@rev]`, or opened sources such as PeftModelAdapter) into `sink`.

    `base` (a model folder or Hub id) is needed for fused output, DoRA inputs and modules_to_save merged as
    deltas; `strict` turns warnings (modules not adapted by every input, differing base models,
    an input given twice) into errors.
    """
    sources = open_inputs(inputs)
    base_folder = open_base(base)
    return run_merge(sources, sink, method, weights, params, seed, base=base_folder, strict=strict, progress=progress)


def preview(inputs: Sequence, sink, method="linear", weights: Optional[Sequence[float]] = None,
            params: Optional[dict] = None, seed: int = 0, base=None, strict: bool = False) -> Preview:
    """A dry run of merge(): every check, then per-module ranks, output size, memory and time estimates."""
    return preview_merge(open_inputs(inputs), sink, method, weights, params, seed, base=open_base(base), strict=strict)


def output_sink(output, overwrite: bool = False, fuse: bool = False, rank: Optional[int] = None,
                dtype: Optional[str] = None, vllm: bool = False, shard_size=None):
    """The folder sink for these options: a fused model folder with `fuse`, else a PEFT adapter folder."""
    if fuse:
        if rank is not None or vllm or dtype:
            from .errors import MethodError

            raise MethodError("rank/vllm/dtype apply to adapter output; a fused model is exact in the base's dtypes")
        return FusedModelSink(output, overwrite=overwrite, shard_size=shard_size)
    return AdapterFolderSink(output, overwrite=overwrite, rank=rank, dtype=dtype, vllm=vllm)


def merge_adapters(
    adapters: Sequence,
    output,
    method="linear",
    weights: Optional[Sequence[float]] = None,
    params: Optional[dict] = None,
    rank: Optional[int] = None,
    seed: int = 0,
    overwrite: bool = False,
    dtype: Optional[str] = None,
    vllm: bool = False,
    progress=False,
    base=None,
    fuse: bool = False,
    strict: bool = False,
    shard_size=None,
) -> MergeReport:
    """Merge LoRA adapter folders into a new PEFT adapter folder at `output` (a model folder with `fuse`).

    Low-rank methods (linear, seedlora) are written exactly unless `rank` asks for less; dense
    methods are truncated to `rank` (default: the sum of the input ranks) by SVD, the loss reported.
    `vllm=True` pads (or truncates) to a rank vLLM's --max-lora-rank accepts.
    """
    sink = output_sink(output, overwrite, fuse, rank, dtype, vllm, shard_size)
    return merge(adapters, sink, method, weights, params, seed, base=base, strict=strict, progress=progress)


def fuse_adapters(adapter_paths: Sequence, base_dir, output, method="linear", weights=None, params=None, seed: int = 0,
                  shard_size=None, overwrite: bool = False, progress=False, strict: bool = False) -> MergeReport:
    """Merge LoRA adapters with `method` and write base + merged update as a model folder."""
    sink = FusedModelSink(output, overwrite=overwrite, shard_size=shard_size)
    return merge(adapter_paths, sink, method, weights, params, seed, base=base_dir, strict=strict, progress=progress)


def merge_checkpoints(checkpoint_dirs: Sequence, base_dir, output, method="linear", weights=None, params=None,
                      seed: int = 0, shard_size=None, overwrite: bool = False, progress=False) -> MergeReport:
    """Merge full model folders fine-tuned from `base_dir` through their task vectors into `output`."""
    sink = FusedModelSink(output, overwrite=overwrite, shard_size=shard_size)
    return merge(checkpoint_dirs, sink, method, weights, params, seed, base=base_dir, progress=progress)


def merge_peft_adapters(model, adapter_names: Sequence[str], new_adapter_name: str, method="linear",
                        weights: Optional[Sequence[float]] = None, params: Optional[dict] = None,
                        rank: Optional[int] = None, seed: int = 0, base=None, strict: bool = False,
                        output=None, fuse: bool = False, overwrite: bool = False) -> MergeReport:
    """Add `new_adapter_name` to `model`: the merge of its loaded `adapter_names`.

    Like the folder path, low-rank methods are exact (rank Σr, or Σr+1 for seedlora) unless
    `rank` asks for less. With `output`, the merge is written there instead (an adapter folder,
    or with `fuse` and `base` a fused model folder) and the model is left unchanged.
    """
    sources = [PeftModelAdapter(model, name) for name in adapter_names]
    if output is None:
        sink = PeftModelSink(model, new_adapter_name, rank=rank)
    elif fuse:
        sink = FusedModelSink(output, overwrite=overwrite)
    else:
        sink = AdapterFolderSink(output, overwrite=overwrite, rank=rank)
    return merge(sources, sink, method, weights, params, seed, base=base, strict=strict)
