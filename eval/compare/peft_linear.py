"""Claim: PEFT add_weighted_adapter `linear` is not the mean of the updates; `cat` and seedlora are.

PEFT's `linear` (and LoraHub-style merging) combines the A's and the B's separately: with
weights w_i it builds A = Σ √(w_i s_i) A_i and B = Σ √(w_i s_i) B_i, so B A = Σ_i w_i τ_i plus the
cross terms Σ_{i≠j} √(w_i s_i w_j s_j) B_i A_j. For K uncorrelated updates of equal size the
cross terms weigh √(K−1) times the mean (√2 for K = 3); for correlated seeds somewhat less.
Printed: relative error ‖Y − τ̄‖/‖τ̄‖ over all modules against the exact mean τ̄ = (1/K) Σ τ_i
computed in float64 from the input factors, for PEFT `linear` (w = 1/K), PEFT `cat` (w = 1/K)
and `python -m seedlora merge ... -m linear`, plus the mean pairwise cosine of the updates.

    python -m eval.compare.peft_linear --inputs sample
    python -m eval.compare.peft_linear --inputs 7b --layers 2
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import torch

from eval.compare.common import arguments, entry, figure, header, run_measured, seedlora_merge
from eval.compare.inputs import inputs
from eval.compare.peft_merge import add_weighted, merged_deltas, merged_rank, peft_model
from eval.compare.reference import ErrorSum, mean_update, read_factors, updates


def mean_cosine(taus: list) -> float:
    """Mean over pairs i < j of the cosine similarity of the flattened updates."""
    pairs = [(i, j) for i in range(len(taus)) for j in range(i + 1, len(taus))]
    return sum(float((taus[i] * taus[j]).sum() / (taus[i].norm() * taus[j].norm())) for i, j in pairs) / len(pairs)


def compare(base: Path, adapters: list, scratch: Path) -> dict:
    """Errors against the exact mean of PEFT linear, PEFT cat and seedlora linear; seconds of each."""
    k, factors = len(adapters), [read_factors(a) for a in adapters]
    ours_dir = scratch / "seedlora-linear"
    timing = {"seedlora linear": run_measured(seedlora_merge(*adapters, "-m", "linear", "-o", ours_dir, "-q"),
                                              scratch / "seedlora.log")["seconds"]}
    ours = read_factors(ours_dir)
    model = peft_model(base, adapters)
    timing["PEFT linear"] = add_weighted(model, k, "linear", [1 / k] * k, "linear")
    timing["PEFT cat"] = add_weighted(model, k, "cat", [1 / k] * k, "cat")
    ranks = {"PEFT linear": merged_rank(model, "linear"), "PEFT cat": merged_rank(model, "cat"),
             "seedlora linear": next(iter(ours.values()))[0].shape[0]}
    errors = {label: ErrorSum() for label in timing}
    cosines = []
    for name, found in merged_deltas(model, ["linear", "cat"]):
        taus = updates(factors, name)
        target = mean_update(taus)
        cosines.append(mean_cosine(taus))
        errors["PEFT linear"].add(name, found["linear"], target)
        errors["PEFT cat"].add(name, found["cat"], target)
        A, B = ours[name]
        errors["seedlora linear"].add(name, B @ A, target)
        del taus, target, found
    return {"errors": errors, "seconds": timing, "ranks": ranks, "cosine": sum(cosines) / len(cosines),
            "modules": len(cosines), "k": k}


def main(argv=None) -> int:
    args = arguments(__doc__, argv)
    torch.manual_seed(0)  # PEFT initialises the new adapter's factors before overwriting them
    print(header(f"PEFT add_weighted_adapter linear vs the mean of the updates ({args.inputs})"))
    base, adapters = inputs(args.inputs, args.work, args.layers)
    args.work.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.work) as scratch:
        found = compare(base, adapters, Path(scratch))
    k = found["k"]
    print(f"inputs: {args.inputs}, K={k}, {found['modules']} modules; mean pairwise cosine of the updates "
          f"{found['cosine']:.3f}; cross-term prediction for uncorrelated updates sqrt(K-1) = {math.sqrt(k - 1):.3f}")
    print(f"{'method (w = 1/K)':<20} {'rank':>5} {'rel.err vs mean':>16} {'per module min/median/max':>28} {'seconds':>8}")
    for label, err in found["errors"].items():
        spread = f"{err.best:.3g} / {err.median:.3g} / {err.worst:.3g}"
        print(f"{label:<20} {found['ranks'][label]:>5} {err.relative:>16.4g} {spread:>28} {found['seconds'][label]:>8.2f}")
    print("seconds: PEFT in process (add_weighted_adapter only); seedlora the whole `python -m seedlora merge` process")
    e = found["errors"]
    figure("peft_linear", args.inputs, peft_linear=e["PEFT linear"].relative,
           peft_linear_worst_module=e["PEFT linear"].worst, peft_cat=e["PEFT cat"].relative,
           seedlora_linear=e["seedlora linear"].relative, cosine=found["cosine"])
    return 0


if __name__ == "__main__":
    raise SystemExit(entry(main))
