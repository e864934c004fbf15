"""Claim: mergekit CAN emit an adapter (merge, then mergekit-extract-lora); what it costs vs seedlora.

mergekit merges full models, then `mergekit-extract-lora` takes the merged model and the base,
and writes a PEFT LoRA adapter by a truncated SVD of every module's difference. Side by side:
mergekit `ties` (density 0.2, weights 1, on the K fused float32 models; fusing not counted) +
mergekit-extract-lora --max-rank R, with its defaults and with the options that keep only the
adapted modules, against `python -m seedlora merge ... -m ties --rank R` from the adapters.
Printed: whole-process seconds (merge + extract for mergekit) and peak RSS, adapter size on disk,
LoRA modules written and how many of them are all zero, and the relative error of the adapter's
update (read back with PEFT's get_delta_weight) against TIES on the exact deltas in float64,
next to the optimal rank-R error (SVD of that exact TIES result).

    python -m eval.compare.mergekit_extract --inputs sample --rank 24
"""

from __future__ import annotations

import math
import shutil
import tempfile
from pathlib import Path

import torch

from eval.compare.common import (arguments, entry, figure, folder_mb, header, ratio, run_measured,
                                 seedlora_merge)
from eval.compare.fusing import fused_inputs
from eval.compare.inputs import inputs
from eval.compare.mergekit_env import ensure_mergekit
from eval.compare.mergekit_runs import mergekit_env_vars, run_merge
from eval.compare.peft_merge import merged_deltas, peft_model
from eval.compare.reference import ErrorSum, read_factors, ties, updates

DENSITY = 0.2


def extract_command(mk, merged: Path, base: Path, out: Path, rank: int, only: list | None) -> list:
    """mergekit-extract-lora; `only`: the adapted module suffixes (skip embeddings, norms, others)."""
    command = [mk.cli("mergekit-extract-lora"), "--model", merged, "--base-model", base, "--out-path", out,
               "--max-rank", rank]
    if only:
        command += ["-i", rf"\.({'|'.join(only)})$", "-e", "embed_tokens", "-e", "lm_head"]
    return command


def adapter_errors(base: Path, folder: Path, factors: list, rule: str) -> dict:
    """The adapter's update per module (PEFT) against TIES on the exact deltas; zero modules counted."""
    model = peft_model(base, [folder])
    error, optimal, zero, written = ErrorSum(), ErrorSum(), 0, 0
    for name, found in merged_deltas(model, ["a0"]):
        delta, written = found["a0"], written + 1
        if name not in factors[0]:
            zero += int(not delta.any())
            continue
        reference = ties(updates(factors, name), DENSITY, rule)
        error.add(name, delta, reference)
        singular = torch.linalg.svdvals(reference)
        optimal.diff += float(singular[model.peft_config["a0"].r:].square().sum())
        optimal.norm += float(singular.square().sum())
    return {"error": error, "optimal": optimal, "zero": zero, "modules": written}


def saved_in_full(folder: Path) -> dict:
    """MB per modules_to_save kind (stored in full, not as LoRA factors) of an adapter, and the LoRA factors'."""
    import json

    from safetensors import safe_open

    config = json.loads((Path(folder) / "adapter_config.json").read_text())
    sizes = {kind: 0.0 for kind in config.get("modules_to_save") or []}
    sizes["LoRA factors"] = 0.0
    with safe_open(str(Path(folder) / "adapter_model.safetensors"), framework="pt") as handle:
        for key in handle.keys():
            tensor = handle.get_slice(key)
            kind = "LoRA factors" if ".lora_" in key else key.rsplit(".", 2)[-2]
            mb = math.prod(tensor.get_shape()) * {"F32": 4, "BF16": 2, "F16": 2}[tensor.get_dtype()] / 1e6
            sizes[kind] = sizes.get(kind, 0.0) + mb
    return sizes


def run_all(mk, base: Path, adapters: list, rank: int, scratch: Path) -> dict:
    """mergekit merge + two extractions, and seedlora, each a measured whole process."""
    _, fused = fused_inputs(scratch.parent, base, adapters, None)
    targets = sorted({name.rsplit(".", 1)[-1] for name in read_factors(adapters[0])})
    runs = {"mergekit ties": run_merge(mk, "ties", base, fused, scratch / "merged", scratch / "merge.log", DENSITY)}
    for label, only in (("extract (defaults)", None), ("extract (adapted modules only)", targets)):
        out = scratch / label.split()[1].strip("()")
        runs[label] = run_measured(extract_command(mk, scratch / "merged", base, out, rank, only),
                                   scratch / f"{out.name}.log", env=mergekit_env_vars())
        runs[label]["folder"] = out
    ours = scratch / "seedlora"
    runs["seedlora ties --rank"] = run_measured(seedlora_merge(*adapters, "-m", "ties", "--density", DENSITY,
                                                               "--rank", rank, "-o", ours, "-q"), scratch / "ours.log")
    runs["seedlora ties --rank"]["folder"] = ours
    return runs


def main(argv=None) -> int:
    args = arguments(__doc__, argv, rank=(int, 24, "adapter rank for both tools (default 24 = sum of ranks)"))
    mk = ensure_mergekit()
    print(header(f"mergekit ties + mergekit-extract-lora vs seedlora ties --rank {args.rank} ({args.inputs})",
                 mk.versions))
    base, adapters = inputs(args.inputs, args.work, args.layers)
    factors = [read_factors(a) for a in adapters]
    args.work.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=args.work))
    try:
        runs = run_all(mk, base, adapters, args.rank, scratch)
        found = {label: {**adapter_errors(base, run["folder"], factors, "ceil" if "seedlora" in label else "floor"),
                         "mb": folder_mb(run["folder"]), "content": saved_in_full(run["folder"])}
                 for label, run in runs.items() if "folder" in run}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    merge = runs["mergekit ties"]
    ours = runs["seedlora ties --rank"]
    print(f"inputs: {args.inputs}, K={len(adapters)}, TIES density {DENSITY}, rank {args.rank}; "
          f"mergekit ties merge: {merge['seconds']:.1f} s, peak {merge['peak_mb']:.0f} MB (fusing not counted)")
    print(f"{'route':<46} {'seconds':>8} {'x seedlora':>10} {'peak MB':>8} {'size MB':>8} {'modules':>8} "
          f"{'all-zero':>8} {'rel.err':>8} {'optimal':>8}")
    for label, result in found.items():
        run = runs[label]
        total = run["seconds"] + (merge["seconds"] if "extract" in label else 0)
        peak = max(run["peak_mb"], merge["peak_mb"]) if "extract" in label else run["peak_mb"]
        name = f"mergekit ties + {label}" if "extract" in label else label
        print(f"{name:<46} {total:>8.1f} {ratio(total, ours['seconds']):>10} {peak:>8.0f} {result['mb']:>8.1f} "
              f"{result['modules']:>8} {result['zero']:>8} {result['error'].relative:>8.4f} "
              f"{math.sqrt(result['optimal'].diff / result['optimal'].norm):>8.4f}")
    for label, result in found.items():
        parts = ", ".join(f"{kind} {mb:.1f}" for kind, mb in result["content"].items())
        print(f"  {label}: MB by content: {parts}")
    print("seconds: whole processes (mergekit: merge + extract); rel.err against TIES on the exact deltas "
          "(floor rule for mergekit, ceil for seedlora); optimal: best rank-R error of that TIES result")
    d, t, s = found["extract (defaults)"], found["extract (adapted modules only)"], found["seedlora ties --rank"]
    figure("mergekit_extract", args.inputs, rank=args.rank, mk_default_mb=d["mb"], mk_default_zero=d["zero"],
           mk_default_err=d["error"].relative, mk_only_mb=t["mb"], mk_only_err=t["error"].relative,
           seedlora_mb=s["mb"], seedlora_err=s["error"].relative,
           mk_default_s=merge["seconds"] + runs["extract (defaults)"]["seconds"],
           mk_only_s=merge["seconds"] + runs["extract (adapted modules only)"]["seconds"], seedlora_s=ours["seconds"])
    return 0


if __name__ == "__main__":
    raise SystemExit(entry(main))
