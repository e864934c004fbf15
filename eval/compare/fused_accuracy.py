"""How far a fused merged model is from the exact one: entries beyond rounding, relative errors.

For every adapted weight W (as stored in the base) the exact merged weight is W + τ* in float64,
τ* being the method's result on the exact updates (TIES with the tool's own ⌈ρn⌉/⌊ρn⌋ rule, or
the mean). An output entry is "beyond rounding" when it is more than half a step of the output
dtype away from that exact value: a correctly rounded writer has none. The relative error of a
tensor is ‖(out − W) − τ*‖/‖τ*‖; "rounding floor" is the same for dtype(W + τ*) itself, what
any writer of that dtype must lose. Tensors that no adapter touches are checked for equality
with the base.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open

from eval.compare.reference import ErrorSum, beyond_rounding, mean_update, read_factors, ties, updates

MANTISSA_BITS = {torch.bfloat16: 8, torch.float16: 11, torch.float32: 24}


def tensor_index(folder: Path) -> dict:
    """tensor name -> shard file of a model folder."""
    index = {}
    for shard in sorted(Path(folder).glob("*.safetensors")):
        with safe_open(str(shard), framework="pt") as handle:
            index.update({key: shard for key in handle.keys()})
    return index


def get(index: dict, key: str) -> torch.Tensor:
    with safe_open(str(index[key]), framework="pt") as handle:
        return handle.get_tensor(key)


def target(kind: str, taus: list, density: float) -> torch.Tensor:
    """τ*: "mean", or "ties_ceil" / "ties_floor" (TIES with that top-k rule)."""
    return mean_update(taus) if kind == "mean" else ties(taus, density, kind.split("_")[1])


class Tally:
    """Per output: entries beyond rounding, errors against τ*, untouched entries changed."""

    def __init__(self):
        self.beyond, self.adapted, self.changed, self.untouched = 0, 0, 0, 0
        self.error, self.floor, self.missing = ErrorSum(), ErrorSum(), []


def evaluate(base: Path, adapters: list, outputs: dict, density: float = 0.2) -> dict:
    """outputs: label -> (folder, target kind). Returns label -> Tally."""
    factors = [read_factors(a) for a in adapters]
    base_index = tensor_index(base)
    indexes = {label: tensor_index(folder) for label, (folder, _) in outputs.items()}
    tallies = {label: Tally() for label in outputs}
    for key in base_index:
        W, name = get(base_index, key), key.removesuffix(".weight")
        taus = updates(factors, name) if name in factors[0] else None
        exacts = {}
        for label, (folder, kind) in outputs.items():
            tally = tallies[label]
            if key not in indexes[label]:
                tally.missing.append(key)
                continue
            out = get(indexes[label], key)
            if taus is None:
                tally.changed += int((out.double() != W.double()).sum())
                tally.untouched += W.numel()
                continue
            if kind not in exacts:
                tau = target(kind, taus, density)
                exacts[kind] = (tau, W.double() + tau)
            tau, exact = exacts[kind]
            tally.beyond += beyond_rounding(out, exact, MANTISSA_BITS[out.dtype])
            tally.adapted += out.numel()
            tally.error.add(key, out.double() - W.double(), tau)
            tally.floor.add(key, exact.to(out.dtype).double() - W.double(), tau)
        del taus, exacts
    return tallies


def update_to_weight(base: Path, adapters: list) -> float:
    """RMS over inputs of ‖τ_i‖/‖W‖ on the adapted weights: how small the updates are next to W."""
    factors, index = [read_factors(a) for a in adapters], tensor_index(base)
    tau_sq = w_sq = 0.0
    for name in factors[0]:
        tau_sq += sum(float(t.square().sum()) for t in updates(factors, name)) / len(factors)
        w_sq += float(get(index, f"{name}.weight").double().square().sum())
    return (tau_sq / w_sq) ** 0.5
