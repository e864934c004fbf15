"""Claim: PEFT's factor-wise `ties` is not TIES; its `svd`/`ties_svd` are right but dense and slow.

PEFT add_weighted_adapter `ties` trims, sign-elects and averages the A's and the B's separately
(each as a stack of K factor matrices), so its product is neither the mean of the updates nor
TIES on the updates. `svd` / `ties_svd` form every out × in update densely, merge those, and
take a full SVD per module: right up to the rank-R truncation, but slow. seedlora's `ties`
works on the dense deltas one module at a time (exact when fused; --rank R truncates).
Printed, over all modules, against float64 references from the input factors:
- PEFT `ties` (density 0.2, weights 1): relative error vs the mean τ̄ and vs TIES on the
  deltas (⌊ρn⌋ kept, PEFT's own rule);
- PEFT `svd` (w = 1/K) and `ties_svd` at rank R = Σr with PEFT's default full_matrices: error
  and seconds (7B-shaped: on one layer, --svd-layers);
- seedlora `ties` at rank R on the same adapters, through `seedlora.merge_peft_adapters` on the
  same PeftModel (timed in process like PEFT) and through `python -m seedlora merge ... -m ties
  --rank R` (whole process): error vs TIES (⌈ρn⌉, seedlora's rule) and seconds.

    python -m eval.compare.peft_ties --inputs sample
    python -m eval.compare.peft_ties --inputs 7b --layers 2 --svd-layers 1
"""

from __future__ import annotations

import gc
import tempfile
from pathlib import Path

import torch

from eval.compare.common import arguments, entry, figure, header, ratio, run_measured, seedlora_merge
from eval.compare.inputs import inputs
from eval.compare.peft_merge import add_weighted, merged_deltas, peft_model, seedlora_in_peft
from eval.compare.reference import ErrorSum, mean_update, read_factors, ties, updates

DENSITY = 0.2


def factorwise(base: Path, adapters: list) -> dict:
    """PEFT ties (factor-wise) against the mean and against TIES on the deltas."""
    k, factors = len(adapters), [read_factors(a) for a in adapters]
    model = peft_model(base, adapters)
    seconds = add_weighted(model, k, "ties", [1.0] * k, "ties", density=DENSITY)
    vs_mean, vs_ties, ties_vs_mean = ErrorSum(), ErrorSum(), ErrorSum()
    for name, found in merged_deltas(model, ["ties"]):
        taus = updates(factors, name)
        mean, dense_ties = mean_update(taus), ties(taus, DENSITY, "floor")
        vs_mean.add(name, found["ties"], mean)
        vs_ties.add(name, found["ties"], dense_ties)
        ties_vs_mean.add(name, dense_ties, mean)
        del taus, mean, dense_ties, found
    return {"vs_mean": vs_mean, "vs_ties": vs_ties, "ties_vs_mean": ties_vs_mean, "seconds": seconds}


def dense_paths(base: Path, adapters: list, rank: int, scratch: Path) -> dict:
    """PEFT svd / ties_svd and seedlora ties --rank: error against their exact targets, seconds."""
    k, factors = len(adapters), [read_factors(a) for a in adapters]
    ours_dir = scratch / "seedlora-ties"
    ours_run = run_measured(seedlora_merge(*adapters, "-m", "ties", "--density", DENSITY, "--rank", rank,
                                           "-o", ours_dir, "-q"), scratch / "seedlora.log")
    ours = read_factors(ours_dir)
    model = peft_model(base, adapters)
    seconds = {"PEFT svd": add_weighted(model, k, "svd", [1 / k] * k, "svd", svd_rank=rank),
               "PEFT ties_svd": add_weighted(model, k, "ties_svd", [1.0] * k, "ties_svd", svd_rank=rank,
                                             density=DENSITY),
               "seedlora ties --rank (API)": seedlora_in_peft(model, k, "ties", "ours", rank=rank,
                                                              params={"density": DENSITY}),
               "seedlora ties --rank": ours_run["seconds"]}
    errors = {label: ErrorSum() for label in seconds}
    for name, found in merged_deltas(model, ["svd", "ties_svd", "ours"]):
        taus = updates(factors, name)
        errors["PEFT svd"].add(name, found["svd"], mean_update(taus))
        errors["PEFT ties_svd"].add(name, found["ties_svd"], ties(taus, DENSITY, "floor"))
        reference = ties(taus, DENSITY, "ceil")
        errors["seedlora ties --rank (API)"].add(name, found["ours"], reference)
        A, B = ours[name]
        errors["seedlora ties --rank"].add(name, B @ A, reference)
        del taus, found
    return {"errors": errors, "seconds": seconds, "modules": len(errors["PEFT svd"].per_module)}


def main(argv=None) -> int:
    args = arguments(__doc__, argv, svd_layers=(int, 1, "7B-shaped layers for svd/ties_svd (default 1)"),
                     rank=(int, 0, "rank of svd/ties_svd/--rank (default: sum of the input ranks)"))
    torch.manual_seed(0)
    print(header(f"PEFT add_weighted_adapter ties / svd / ties_svd vs seedlora ties ({args.inputs})"))
    base, adapters = inputs(args.inputs, args.work, args.layers)
    rank = args.rank or sum(read_factors(a)[next(iter(read_factors(a)))][0].shape[0] for a in adapters)
    fw = factorwise(base, adapters)
    gc.collect()
    print(f"PEFT ties (factor-wise, density {DENSITY}, weights 1), {len(fw['vs_mean'].per_module)} modules, "
          f"{fw['seconds']:.2f} s in process:")
    for label, err in (("vs the mean of the updates", fw["vs_mean"]), ("vs TIES on the deltas", fw["vs_ties"]),
                       ("(TIES on the deltas vs the mean)", fw["ties_vs_mean"])):
        print(f"  {label:<34} rel.err {err.relative:.4g}  (per module {err.best:.3g} / {err.median:.3g} / {err.worst:.3g})")
    dense_base, dense_adapters = (base, adapters) if args.inputs == "sample" else inputs("7b", args.work, args.svd_layers)
    args.work.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.work) as scratch:
        dense = dense_paths(dense_base, dense_adapters, rank, Path(scratch))
    print(f"dense paths at rank {rank} on {dense['modules']} modules:")
    print(f"  {'route':<28} {'target':<26} {'rel.err':>10} {'seconds':>9} {'x seedlora API':>15}")
    targets = {"PEFT svd": "mean (w = 1/K)", "PEFT ties_svd": "TIES on the deltas (floor)",
               "seedlora ties --rank (API)": "TIES on the deltas (ceil)",
               "seedlora ties --rank": "TIES on the deltas (ceil)"}
    ours_s = dense["seconds"]["seedlora ties --rank (API)"]
    for label, err in dense["errors"].items():
        s = dense["seconds"][label]
        print(f"  {label:<28} {targets[label]:<26} {err.relative:>10.4g} {s:>9.2f} {ratio(s, ours_s):>15}")
    print("seconds: PEFT add_weighted_adapter and seedlora.merge_peft_adapters (API) in process on the same")
    print("PeftModel (model load not counted); `seedlora ties --rank` is the whole `python -m seedlora merge` process")
    figure("peft_ties", args.inputs, ties_vs_mean=fw["vs_mean"].relative, ties_vs_ties=fw["vs_ties"].relative,
           svd_err=dense["errors"]["PEFT svd"].relative, svd_s=dense["seconds"]["PEFT svd"],
           ties_svd_err=dense["errors"]["PEFT ties_svd"].relative, ties_svd_s=dense["seconds"]["PEFT ties_svd"],
           seedlora_ties_rank_err=dense["errors"]["seedlora ties --rank"].relative, seedlora_api_s=ours_s,
           seedlora_cli_s=dense["seconds"]["seedlora ties --rank"], ties_svd_x=dense["seconds"]["PEFT ties_svd"] / ours_s,
           dense_modules=dense["modules"])
    return 0


if __name__ == "__main__":
    raise SystemExit(entry(main))
