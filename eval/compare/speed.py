"""Claim: fused merges, whole processes side by side in one run: seedlora vs mergekit, time and memory.

seedlora fuses from the base and the K adapters (`python -m seedlora merge A B C -m M --base BASE
--fuse -o OUT`); mergekit merges the K fused full models it needs (`mergekit-yaml`, ties with
density 0.2 and weight 1, linear with weight 1, normalized; mergekit's default compute dtype).
Fusing mergekit's K inputs is done beforehand and NOT counted for it. A plain copy of the base
folder (`cp -r`) gives the disk floor. Each route runs as its own process; rounds are
interleaved (--repeats); wall seconds, CPU seconds and peak RSS (os.wait4) are printed for every
run, and the ratios from the best run of each route. The machine may be shared: read the ratios
of one run, not absolute seconds.

    OMP_WAIT_POLICY=PASSIVE python -m eval.compare.speed --inputs sample --repeats 3
    OMP_WAIT_POLICY=PASSIVE python -m eval.compare.speed --inputs 7b --layers 2 --repeats 1
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from eval.compare.common import arguments, entry, figure, folder_mb, header, run_measured, seedlora_merge
from eval.compare.fusing import fused_inputs
from eval.compare.inputs import inputs
from eval.compare.mergekit_env import ensure_mergekit
from eval.compare.mergekit_runs import run_merge

DENSITY = 0.2
ROUTES = ("copy base", "seedlora linear --fuse", "mergekit linear", "seedlora ties --fuse", "mergekit ties")


def run_route(label: str, mk, base: Path, adapters: list, fused: list, out: Path, log: Path) -> dict:
    """One measured whole process of `label`; its output is deleted afterwards."""
    try:
        if label == "copy base":
            return run_measured(["cp", "-r", base, out], log)
        method = label.split()[1]
        if label.startswith("mergekit"):
            return run_merge(mk, method, base, fused, out, log, DENSITY)
        extra = ["--density", DENSITY] if method == "ties" else []
        return run_measured(seedlora_merge(*adapters, "-m", method, *extra, "--base", base, "--fuse", "-o", out, "-q"),
                            log)
    finally:
        shutil.rmtree(out, ignore_errors=True)


def measure(mk, base: Path, adapters: list, fused: list, repeats: int, scratch: Path) -> dict:
    """label -> list of measurements, rounds interleaved."""
    runs = {label: [] for label in ROUTES}
    for round_ in range(repeats):
        for i, label in enumerate(ROUTES):
            out = scratch / f"r{round_}-{i}"
            runs[label].append(run_route(label, mk, base, adapters, fused, out, scratch / f"r{round_}-{i}.log"))
    return runs


def main(argv=None) -> int:
    args = arguments(__doc__, argv, repeats=(int, 1, "interleaved rounds (default 1)"))
    mk = ensure_mergekit()
    print(header(f"fused merges, whole processes: seedlora vs mergekit ({args.inputs})", mk.versions))
    base, adapters = inputs(args.inputs, args.work, args.layers)
    _, fused = fused_inputs(args.work, base, adapters, None)
    args.work.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=args.work))
    try:
        runs = measure(mk, base, adapters, fused, args.repeats, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"inputs: {args.inputs}, K={len(adapters)}; on disk: base {folder_mb(base):.0f} MB, adapters "
          f"{sum(folder_mb(a) for a in adapters):.0f} MB (seedlora's inputs), fused models "
          f"{sum(folder_mb(f) for f in fused):.0f} MB (mergekit's, made beforehand, not timed)")
    best = {label: min(found, key=lambda r: r["seconds"]) for label, found in runs.items()}
    print(f"{'route':<24} {'best s':>8} {'CPU s':>8} {'peak MB':>8}   every run (s)")
    for label in ROUTES:
        every = ", ".join(f"{r['seconds']:.1f}" for r in runs[label])
        print(f"{label:<24} {best[label]['seconds']:>8.2f} {best[label]['cpu_seconds']:>8.2f} "
              f"{best[label]['peak_mb']:>8.0f}   {every}")
    values = {}
    for method in ("linear", "ties"):
        mk_run, ours = best[f"mergekit {method}"], best[f"seedlora {method} --fuse"]
        values[f"{method}_time_x"] = mk_run["seconds"] / ours["seconds"]
        values[f"{method}_mem_x"] = mk_run["peak_mb"] / ours["peak_mb"]
        values[f"{method}_vs_copy"] = ours["seconds"] / best["copy base"]["seconds"]
        print(f"{method}: mergekit / seedlora wall time {values[f'{method}_time_x']:.2f}x, peak RSS "
              f"{values[f'{method}_mem_x']:.2f}x; seedlora / copy {values[f'{method}_vs_copy']:.2f}x")
    figure("speed", args.inputs, repeats=args.repeats, **values)
    return 0


if __name__ == "__main__":
    raise SystemExit(entry(main))
