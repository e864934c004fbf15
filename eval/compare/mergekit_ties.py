"""Claim: mergekit's TIES on bf16 fused models runs on quantized deltas; seedlora's, on the factors.

mergekit merges full models: each adapter must first be fused, W_i = bf16(W + τ_i), and mergekit
sees the update only as W_i − W, τ_i rounded to bf16's steps at W's magnitude. Trimming to
the top ρ magnitudes and electing signs on those quantized deltas picks other entries than the
exact updates would. seedlora fuses from the adapters: TIES on the exact float32 deltas, W + τ*
rounded once. Printed per route (K = 3, density 0.2, weights 1; linear: the mean), against the
float64 exact result: entries beyond bf16 rounding (count and share of the adapted entries),
relative error of the update (overall and worst tensor) next to the bf16 rounding floor,
entries of untouched tensors changed, and whole-process seconds / peak RSS. mergekit runs
twice for TIES: its default (compute in the inputs' bf16) and `dtype: float32`.

    python -m eval.compare.mergekit_ties --inputs 7b --layers 2
    python -m eval.compare.mergekit_ties --inputs sample        # SmolLM2 cast to bf16 first
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from eval.compare.common import arguments, entry, figure, header, run_measured, seedlora_merge
from eval.compare.fused_accuracy import evaluate, update_to_weight
from eval.compare.fusing import fused_inputs
from eval.compare.inputs import inputs
from eval.compare.mergekit_env import ensure_mergekit
from eval.compare.mergekit_runs import run_merge

DENSITY = 0.2
# label -> (tool, method, mergekit compute dtype, exact target)
ROUTES = {
    "mergekit ties (default)": ("mergekit", "ties", None, "ties_floor"),
    "mergekit ties (dtype float32)": ("mergekit", "ties", "float32", "ties_floor"),
    "seedlora ties --fuse": ("seedlora", "ties", None, "ties_ceil"),
    "mergekit linear (default)": ("mergekit", "linear", None, "mean"),
    "seedlora linear --fuse": ("seedlora", "linear", None, "mean"),
}


def run_routes(mk, base: Path, adapters: list, fused: list, scratch: Path) -> dict:
    """Every route once, as whole processes: label -> (output folder, measurement)."""
    done = {}
    for label, (tool, method, dtype, _) in ROUTES.items():
        out, log = scratch / f"route-{len(done)}", scratch / f"route-{len(done)}.log"
        if tool == "mergekit":
            measured = run_merge(mk, method, base, fused, out, log, DENSITY, dtype, "bfloat16" if dtype else None)
        else:
            extra = ["--density", DENSITY] if method == "ties" else []
            measured = run_measured(seedlora_merge(*adapters, "-m", method, *extra, "--base", base, "--fuse",
                                                   "-o", out, "-q"), log)
        done[label] = (out, measured)
    return done


def report(tallies: dict, runs: dict) -> None:
    print(f"{'route':<30} {'beyond rounding':>22} {'rel.err':>9} {'worst tensor':>13} {'bf16 floor':>11} "
          f"{'untouched changed':>18} {'s':>7} {'peak MB':>8}")
    for label, tally in tallies.items():
        share = 100 * tally.beyond / tally.adapted
        measured = runs[label][1]
        print(f"{label:<30} {tally.beyond:>10} ({share:>7.4f} %) {tally.error.relative:>9.4g} "
              f"{tally.error.worst:>13.4g} {tally.floor.relative:>11.4g} {tally.changed:>18} "
              f"{measured['seconds']:>7.1f} {measured['peak_mb']:>8.0f}")
        if tally.missing:
            print(f"  {label}: {len(tally.missing)} base tensors not in the output, e.g. {tally.missing[0]}")


def main(argv=None) -> int:
    args = arguments(__doc__, argv, inputs=("7b", "sample"))
    mk = ensure_mergekit()
    print(header(f"mergekit TIES/linear on bf16 fused models vs seedlora from the factors ({args.inputs})", mk.versions))
    base, adapters = inputs(args.inputs, args.work, args.layers)
    bf16_base, fused = fused_inputs(args.work, base, adapters, None if args.inputs == "7b" else "bfloat16")
    ratio = update_to_weight(bf16_base, adapters)
    args.work.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=args.work))
    try:
        runs = run_routes(mk, bf16_base, adapters, fused, scratch)
        tallies = evaluate(bf16_base, adapters, {label: (out, ROUTES[label][3]) for label, (out, _) in runs.items()},
                           DENSITY)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    adapted = next(iter(tallies.values())).adapted
    print(f"inputs: {args.inputs}, K={len(adapters)}, bf16 base, {adapted / 1e6:.2f} M adapted entries; "
          f"update size RMS ||tau_i||/||W|| = {ratio:.4f}; fusing the K inputs not counted")
    report(tallies, runs)
    print("exact: W + tau* in float64 (TIES: mergekit's floor(rho n) rule for mergekit, ceil(rho n) for seedlora)")
    values = {}
    for label, key in (("mergekit ties (default)", "mk_ties"), ("mergekit ties (dtype float32)", "mk_ties_f32"),
                       ("seedlora ties --fuse", "seedlora_ties"), ("mergekit linear (default)", "mk_linear"),
                       ("seedlora linear --fuse", "seedlora_linear")):
        t = tallies[label]
        values.update({f"{key}_beyond": t.beyond, f"{key}_pct": 100 * t.beyond / t.adapted,
                       f"{key}_worst": t.error.worst, f"{key}_untouched_changed": t.changed})
    figure("mergekit_ties", args.inputs, adapted=adapted, bf16_floor=tallies["seedlora ties --fuse"].floor.relative,
           **values)
    return 0


if __name__ == "__main__":
    raise SystemExit(entry(main))
