"""`seedlora merge`: adapters → merged adapter, adapters + base → fused model, or
full fine-tuned checkpoints + base → merged model."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..errors import SeedLoraError

HELP = "merge LoRA adapters (or full fine-tuned checkpoints) into one adapter or a fused model"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="ADAPTER", help="adapter folders (or model folders with --base)")
    parser.add_argument("-m", "--method", default="linear", help="merge method (see `seedlora methods`; default linear)")
    parser.add_argument("-o", "--output", required=True, help="output folder (must not exist or be empty)")
    parser.add_argument("--weights", nargs="+", type=float, help="one weight per input (default: the method's)")
    parser.add_argument("--rank", type=int, help="compress the adapter to this rank (reports the energy kept)")
    parser.add_argument("--seed", type=int, default=0, help="seed of random methods (default 0)")
    parser.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), help="adapter output dtype (default: the inputs')")
    parser.add_argument("--vllm", action="store_true", help="write a rank vLLM's --max-lora-rank accepts (pad exactly, or truncate to --rank)")
    parser.add_argument("--base", help="base model folder: with --fuse, or when the inputs are full checkpoints")
    parser.add_argument("--fuse", action="store_true", help="write base + merged update as a full model (needs --base)")
    parser.add_argument("--shard-size", help="fused output shard size, e.g. 2GB (default: the base's layout)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar or summary")
    from ..methods import METHODS
    from ..methods.cli_params import add_param_arguments

    add_param_arguments(parser, METHODS)  # --density, --t, --epsilon, … and --param NAME=VALUE


def method_params(args) -> dict:
    """Only the method parameters the user actually gave (unknown ones are rejected later)."""
    from ..methods.cli_params import given_params

    return given_params(args)


def show_progress(args) -> bool:
    return not args.quiet and sys.stderr.isatty() and not os.environ.get("CI")


def run(args) -> None:
    common = dict(
        method=args.method,
        weights=args.weights,
        params=method_params(args),
        seed=args.seed,
        overwrite=args.overwrite,
        progress=show_progress(args),
    )
    inputs_are_models = args.base is not None and _all_models(args.inputs)
    if args.fuse or inputs_are_models:
        if args.base is None:
            raise SeedLoraError("--fuse needs --base BASE_DIR, the model the adapters were trained on")
        if args.rank is not None or args.vllm or args.dtype:
            raise SeedLoraError("--rank/--vllm/--dtype apply to adapter output; a fused model is exact in the base's dtypes")
        _run_fused(args, inputs_are_models, common)
        return
    from ..merge import merge_adapters

    if args.shard_size:
        raise SeedLoraError("--shard-size applies to fused output; add --fuse --base BASE_DIR")
    report = merge_adapters(args.inputs, args.output, rank=args.rank, dtype=args.dtype, vllm=args.vllm, **common)
    if not args.quiet:
        print(summary(report, len(args.inputs)))


def _all_models(inputs) -> bool:
    from ..hf_model import is_model_folder

    kinds = [is_model_folder(Path(p)) for p in inputs]
    if any(kinds) and not all(kinds):
        raise SeedLoraError("inputs mix adapter folders and full model folders; merge one kind at a time")
    return all(kinds)


def _run_fused(args, inputs_are_models: bool, common: dict) -> None:
    if inputs_are_models:
        from ..checkpoints import merge_checkpoints as fuse
    else:
        from ..fused import fuse_adapters as fuse
    report = fuse(args.inputs, args.base, args.output, shard_size=args.shard_size, **common)
    if not args.quiet:
        print(f"wrote {report.summary()}")


def summary(report, n_inputs: int) -> str:
    """What the user reads after a merge: shape of the result and what (if anything) was lost."""
    lines = [
        f"merged {n_inputs} adapters with {report.method}: {len(report.modules)} modules, "
        f"rank {report.rank} → {report.output} ({report.seconds:.1f} s)"
    ]
    if report.lossless:
        lines.append("exact: no truncation (energy kept 100%)")
    else:
        lines.append(
            f"truncated to rank {report.rank}: energy kept {report.energy_kept:.4%}, "
            f"relative error {report.relative_error:.3e} overall"
        )
        worst = sorted(report.modules, key=lambda m: -m.relative_error)[:5]
        for m in worst:
            lines.append(f"  {m.name}: rank {m.exact_rank}→{m.rank}, energy kept {m.energy_kept:.4%}, rel. error {m.relative_error:.3e}")
        lines.append("per-module figures: merge_report.json in the output folder")
    lines += stats_lines([m.stats for m in report.modules])
    lines.append(serving_hint(report.rank))
    return "\n".join(lines)


def stats_lines(per_module: list) -> list:
    """One line per statistic a method reported per module (Model Stock's t, ...): min/median/max."""
    from ..methods import stats_summary

    return [f"{name} per module: min {lo:.4g}, median {mid:.4g}, max {hi:.4g} ({len(per_module)} modules)"
            for name, (lo, mid, hi) in stats_summary(per_module).items()]


def serving_hint(rank: int) -> str:
    from ..vllm_compat import VLLM_MAX_LORA_RANKS, vllm_rank_bucket

    if rank > VLLM_MAX_LORA_RANKS[-1]:
        return f"rank {rank} is above what vLLM serves (512): re-merge with --vllm --rank 512 to serve it"
    return f"serve with vLLM: --enable-lora --max-lora-rank {vllm_rank_bucket(rank)}"
