"""`seedlora merge`: adapters → merged adapter, adapters + base → fused model, or
full fine-tuned checkpoints + base → merged model."""

from __future__ import annotations

import argparse
import os
import sys

from ..errors import SeedLoraError

HELP = "merge LoRA adapters (or full fine-tuned checkpoints) into one adapter or a fused model"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Every option defaults to None: a value given here overrides --config's (cli.config)."""
    parser.add_argument("inputs", nargs="*", metavar="ADAPTER", help="adapter folders or Hub ids org/name[@revision] (or model folders with --base)")
    parser.add_argument("--config", metavar="FILE", help="merge config (YAML, e.g. examples/merge.yaml or an output's seedlora_config.yaml); options given here override it")
    parser.add_argument("-m", "--method", help="merge method (see `seedlora methods`; default linear)")
    parser.add_argument("-o", "--output", help="output folder (must not exist or be empty)")
    parser.add_argument("--weights", type=weight_list, help="one weight per input, comma-separated, e.g. 0.5,0.3,0.2 (default: the method's)")
    parser.add_argument("--rank", type=int, help="compress the adapter to this rank (reports the energy kept)")
    parser.add_argument("--seed", type=int, help="seed of random methods (default 0)")
    parser.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), help="adapter output dtype (default: the inputs')")
    parser.add_argument("--vllm", action=argparse.BooleanOptionalAction, help="write a rank vLLM's --max-lora-rank accepts (pad exactly, or truncate to --rank)")
    parser.add_argument("--base", help="base model folder or Hub id: for --fuse, DoRA inputs, modules_to_save deltas, or full checkpoints")
    parser.add_argument("--fuse", action=argparse.BooleanOptionalAction, help="write base + merged update as a full model (needs --base)")
    parser.add_argument("--shard-size", help="fused output shard size, e.g. 2GB (default: the base's layout)")
    parser.add_argument("--strict", action=argparse.BooleanOptionalAction, help="refuse instead of warning (modules not adapted by every input, differing base models, an input given twice)")
    parser.add_argument("--overwrite", action=argparse.BooleanOptionalAction, help="replace an existing output folder")
    parser.add_argument("--dry-run", action="store_true", help="check everything and print the plan (ranks, output size, memory, time); write nothing")
    parser.add_argument("-q", "--quiet", action="store_true", help="errors only: no warnings, progress bar or summary")
    from ..methods import METHODS
    from ..methods.cli_params import add_param_arguments

    add_param_arguments(parser, METHODS)  # --density, --t, --epsilon, … and --param NAME=VALUE, from the registry


def weight_list(text: str) -> list:
    """'0.5,0.3,0.2' -> [0.5, 0.3, 0.2]."""
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers, e.g. 0.5,0.3,0.2") from None


def method_params(args) -> dict:
    """Only the method parameters the user actually gave (unknown ones are rejected later)."""
    from ..methods.cli_params import given_params

    return given_params(args)


def show_progress(args) -> bool:
    return not args.quiet and sys.stderr.isatty() and not os.environ.get("CI")


def run(args) -> None:
    from ..api import merge, output_sink, preview
    from .config import apply_config, merged_params

    apply_config(args)
    inputs, checkpoints = resolve_inputs(args)
    params = merged_params(args.config_params, method_params(args))
    fuse = bool(args.fuse or checkpoints)
    if fuse and (args.rank is not None or args.vllm or args.dtype):
        raise SeedLoraError("--rank/--vllm/--dtype apply to adapter output; a fused model is exact in the base's dtypes")
    if fuse and args.base is None:
        raise SeedLoraError("--fuse needs --base BASE_DIR, the model the adapters were trained on")
    if args.shard_size and not fuse:
        raise SeedLoraError("--shard-size applies to fused output; add --fuse --base BASE_DIR")
    sink = output_sink(args.output, args.overwrite, fuse, args.rank, args.dtype, args.vllm, args.shard_size)
    common = dict(method=args.method, weights=args.weights, params=params, seed=args.seed, base=args.base,
                  strict=args.strict)
    if args.dry_run:
        from .dry_run import show_preview

        print(show_preview(preview(inputs, sink, **common)))
        return
    report = merge(inputs, sink, progress=show_progress(args), **common)
    if not args.quiet:
        print(summary(report, args.rank) if report.sink == "adapter" else fused_summary(report))


def resolve_inputs(args) -> tuple:
    """(inputs as local folders with their Hub origin, whether they are full checkpoints)."""
    from ..sources import is_model_folder
    from ..sources.hub import resolve

    if not args.inputs:
        raise SeedLoraError("no inputs given; pass one or more adapter folders, e.g. seedlora merge adapters/seed-* -o merged/ "
                            "(or list them under inputs: in --config)")
    if not args.output:
        raise SeedLoraError("no output folder; pass -o DIR (or set output: in --config)")
    numbers = [i for i in args.inputs if _is_number(i)]
    if numbers:
        raise SeedLoraError(f"{numbers[0]!r} is not an adapter folder; give --weights as one comma-separated list, e.g. --weights 0.5,0.3,0.2")
    inputs = [resolve(i) for i in args.inputs]
    return inputs, args.base is not None and all(is_model_folder(r.path) for r in inputs)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return not os.path.exists(text)


def summary(report, asked_rank=None) -> str:
    """What the user reads after an adapter merge: shape of the result and what (if anything) was lost."""
    lines = [
        f"merged {len(report.inputs)} adapter{'s' if len(report.inputs) != 1 else ''} with {report.method}: {len(report.modules)} modules, "
        f"rank {report.rank} → {report.output} ({report.seconds:.1f} s)"
    ]
    if asked_rank is not None and asked_rank > report.rank:
        lines.append(f"--rank {asked_rank} is above the exact rank; wrote rank {report.rank}, which is lossless")
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
    for stat, (low, median, high) in report.stat_summary().items():
        lines.append(f"{stat} per module: min {low:.4g}, median {median:.4g}, max {high:.4g}")
    lines.append(serving_hint(report.rank))
    return "\n".join(lines)


def fused_summary(report) -> str:
    """One line for a fused-model merge."""
    text = (
        f"wrote {report.output}: {report.tensors_merged} tensors merged ({report.method}), {report.tensors_copied} copied "
        f"unchanged, {len(report.shards)} shard(s), {report.bytes_written / 1e9:.2f} GB in {report.seconds:.1f} s"
    )
    if report.merged_params:
        text += f"; {report.unchanged_share:.1%} of merged entries left at the base value"
    for stat, (low, median, high) in report.stat_summary().items():  # the method's per-module statistics
        text += f"\n{stat} per module: min {low:.4g}, median {median:.4g}, max {high:.4g}"
    return text


def serving_hint(rank: int) -> str:
    from ..pipeline.rank import VLLM_MAX_LORA_RANKS, vllm_rank_bucket

    if rank > VLLM_MAX_LORA_RANKS[-1]:
        return f"rank {rank} is above what vLLM serves (512): re-merge with --vllm --rank 512 to serve it"
    return f"serve with vLLM: --enable-lora --max-lora-rank {vllm_rank_bucket(rank)}"
