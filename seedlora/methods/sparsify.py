"""The TIES / DARE family as configurations of one code path: sparsify, then combine.

sparsify: "magnitude" keeps the ⌈ρ·numel⌉ largest |τ_i| (TIES trim, no rescale) or "random"
keeps each entry with probability ρ and divides kept entries by ρ (DARE).
combine: "sum" = Σ w_i τ̂_i, or "sign_elect" = TIES sign election + disjoint merge.
  ties            = magnitude + sign_elect   (default weight 1)
  magnitude_prune = magnitude + sum          (default weight 1/K)
  dare_linear     = random    + sum          (default weight 1/K)
  dare_ties       = random    + sign_elect   (default weight 1)
Every step runs a block of entries at a time (K + 6 rows of CPU_BLOCK float32 values, which
stay in a core's cache) with vectorised float kernels, so memory is the K inputs, the result
and, for random drops, K boolean masks. Magnitude trims need no mask at all: the exact k-th
largest |τ_i| (methods.topk) makes them one hardshrink per block. On CPU the result is bit for
bit what the straightforward whole-tensor formulas give (tests/test_reference_outputs.py).
For LoRA inputs on the CPU the merger runs the magnitude trims through methods.rowwise instead,
which feeds these same block kernels from blocks of rows and never holds the K inputs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from functools import partial
from typing import Optional

import numpy as np
import torch

from .base import MergeMethod, Param, density_in_unit_interval
from .linear import weighted_sum  # noqa: F401  (re-exported: the family's "sum" combine)
from .topk import keep_mask, kth_largest_magnitude, shrink_level

TIES_PAPER = "https://arxiv.org/abs/2306.01708"
DARE_PAPER = "https://arxiv.org/abs/2311.03099"
CPU_BLOCK = 32704  # entries per step of the combine: K + 6 float32 rows stay in L2, and below torch's
# 32768-entry grain, each elementwise op runs on one thread (splitting 32K entries over busy cores costs more)
DEVICE_BLOCK = 1 << 24  # on a GPU, few large launches
RANDOM_CHUNK = 1 << 20  # uniform draws per step when drawing a DARE mask


def keep_count(numel: int, density: float) -> int:
    """⌈ρ·numel⌉ as methods.md says (PEFT uses int(), i.e. floor; equal when ρ·numel is whole).

    ρ is read as the decimal the user wrote (repr), so 0.07 x 100 keeps 7, not 8.
    """
    return min(numel, math.ceil(Fraction(repr(float(density))) * numel))


def magnitude_keep_mask(delta: torch.Tensor, density: float) -> torch.Tensor:
    """Boolean mask of the ⌈ρ·numel⌉ largest-magnitude entries of `delta` (ties: row-major order)."""
    k = keep_count(delta.numel(), density)
    if k == delta.numel():
        return torch.ones(delta.shape, dtype=torch.bool, device=delta.device)
    return keep_mask(delta, kth_largest_magnitude(delta, k))


def random_keep_mask(shape: torch.Size, density: float, generator: torch.Generator) -> torch.Tensor:
    """Boolean mask keeping each entry independently with probability ρ (seeded draw, on the CPU).

    Drawn a chunk at a time into the mask: the same numbers as one torch.rand(shape) < ρ (the CPU
    generator is sequential), without a float32 copy of the whole shape.
    """
    mask = torch.empty(shape, dtype=torch.bool)
    flat, level = mask.view(-1).numpy(), np.float32(density)  # torch compares float32 u with float32(ρ) too
    for start in range(0, flat.size, RANDOM_CHUNK):
        stop = min(flat.size, start + RANDOM_CHUNK)
        np.less(torch.rand(stop - start, generator=generator).numpy(), level, out=flat[start:stop])
    return mask


@dataclass(frozen=True)
class Trim:
    """How one input is sparsified, applied a block at a time: τ ⊙ mask (÷ρ when rescaling).

    The mask is either a magnitude level (hardshrink keeps |τ| > level: one vectorised op, no
    mask in memory) plus the few `extra` entries tied at the cut that the top k also keep, or a
    stored boolean mask (random drops; non-float32 inputs).
    """

    delta: Optional[torch.Tensor]  # flat view of the input (None: the values come block by block, methods.rowwise)
    level: float = 0.0  # used when there is no mask; 0.0 keeps every nonzero (no trim)
    mask: Optional[torch.Tensor] = None  # flat bool
    rescale: Optional[float] = None
    extra: Optional[torch.Tensor] = None  # sorted flat indices kept besides |τ| > level

    def block(self, start: int, stop: int, out: torch.Tensor) -> torch.Tensor:
        return self.apply(self.delta[start:stop], start, out)

    def apply(self, values: torch.Tensor, start: int, out: torch.Tensor) -> torch.Tensor:
        """out = the trimmed `values`, which are the input's flat entries from `start` on."""
        values = values if values.dtype == torch.float32 else values.float()
        if self.mask is None:
            torch.ops.aten.hardshrink.out(values, self.level, out=out)
            if self.extra is not None and self.extra.numel():
                first, last = np.searchsorted(self.extra.cpu().numpy(), (start, start + values.numel())).tolist()
                if last > first:
                    where = self.extra[first:last] - start
                    out[where] = values[where]
        else:
            torch.mul(values, self.mask[start : start + values.numel()], out=out)
        return out.div_(self.rescale) if self.rescale is not None else out


def magnitude_trim(delta: torch.Tensor, density: float) -> Trim:
    """Keep the ⌈ρ·numel⌉ largest |τ|: a hardshrink level, plus the tied entries kept at the cut."""
    flat = delta.reshape(-1)
    k = keep_count(flat.numel(), density)
    if k == flat.numel():
        return Trim(flat, mask=torch.ones_like(flat, dtype=torch.bool))
    threshold = kth_largest_magnitude(flat, k)
    if flat.dtype != torch.float32:
        return Trim(flat, mask=keep_mask(flat, threshold))
    if threshold.takes_all_tied:
        return Trim(flat, level=shrink_level(threshold, flat.dtype))
    return Trim(flat, level=threshold.value, extra=threshold.ties_kept(flat).to(flat.device))


def _block_size(device: torch.device) -> int:
    return CPU_BLOCK if device.type == "cpu" else DEVICE_BLOCK


def combine_trimmed(trims: list[Trim], coeffs: list[float], combine: str, majority_sign: str = "total") -> torch.Tensor:
    """Σ w_i τ̂_i ("sum") or TIES sign election + disjoint mean, block by block (flat, float32)."""
    device = trims[0].delta.device
    size, step = trims[0].delta.numel(), _block_size(device)
    out = torch.empty(size, dtype=torch.float32, device=device)
    work = combine_work(len(trims), min(step, max(size, 1)), device)
    for start in range(0, size, step):
        stop = min(size, start + step)
        combine_block([trim.delta[start:stop] for trim in trims], trims, start, coeffs, combine, majority_sign,
                      work, out[start:stop])
    return out


def combine_work(k: int, entries: int, device=None) -> torch.Tensor:
    """Scratch rows for combine_block: K trimmed inputs, 5 rows of the sign election and a row of ones."""
    work = torch.empty(k + 6, entries, dtype=torch.float32, device=device)
    work[-1].fill_(1.0)
    return work


def combine_block(values: list, trims: list, start: int, coeffs: list, combine: str, majority_sign: str,
                  work: torch.Tensor, out: torch.Tensor) -> None:
    """out = the combine of one block: `values` are each input's flat entries from `start` on."""
    rows = work[:, : out.numel()]
    sparse = [trim.apply(v, start, rows[i]) for i, (trim, v) in enumerate(zip(trims, values))]
    if combine == "sum":
        _sum_block(sparse, coeffs, out)
    else:
        _sign_elect_block(sparse, coeffs, majority_sign, rows[len(trims):], out)


def _sum_block(sparse: list, coeffs: list, out: torch.Tensor) -> None:
    """out = Σ c_i τ̂_i, summed from +0 in input order (as linear.weighted_sum)."""
    out.zero_()
    for values, coeff in zip(sparse, coeffs):
        out.add_(values, alpha=coeff)


def _sign_elect_block(sparse: list, coeffs: list, majority_sign: str, scratch: torch.Tensor, out: torch.Tensor) -> None:
    """TIES steps 2–3 on one block, with vectorised float kernels only (no bool tensors).

    elect: γ = sign(Σ τ̂_i) or sign(Σ sign τ̂_i), 0 → +1. agree: p_i = relu(γ τ̂_i) is |τ̂_i| where
    τ̂_i agrees with γ (and is nonzero), else 0. merge: γ · (Σ w_i p_i) / max(1, Σ sign p_i).
    Multiplying by γ = ±1 commutes exactly with rounding, so this equals summing the signed
    values; the final + 0.0 turns the −0 of γ = −1 with no agreeing input into +0.
    γ is copysign(1, score): a score of −0 (only a sum of zeros gives it) elects −1 where the
    formula elects +1, but then no input agrees either way and the result is the same +0. The
    first input writes the sums (w_0 p_0 is 0 + w_0 p_0 exactly) rather than adding to zeros.
    """
    score, elected, agree, total, count, ones = scratch
    for i, values in enumerate(sparse):
        term = values if majority_sign == "total" else torch.sign(values, out=agree)
        if i == 0:
            score.copy_(term)
        else:
            score.add_(term)
    torch.copysign(ones, score, out=elected)
    for i, (values, coeff) in enumerate(zip(sparse, coeffs)):
        torch.mul(values, elected, out=agree).relu_()
        if i == 0:
            torch.mul(agree, coeff, out=total)
            torch.sign(agree, out=count)
        else:
            total.add_(agree, alpha=coeff)
            count.add_(agree.sign_())
    torch.div(total, count.clamp_(min=1.0), out=out).mul_(elected).add_(0.0)


def sign_elect_merge(sparse: list[torch.Tensor], coeffs: list[float], majority_sign: str) -> torch.Tensor:
    """TIES steps 2–3: elect γ per entry, then average w_i τ̂_i over the inputs agreeing with it."""
    trims = [Trim(t.reshape(-1)) for t in sparse]  # level 0: already sparse, nothing more dropped
    return combine_trimmed(trims, [float(c) for c in coeffs], "sign_elect", majority_sign).view(sparse[0].shape)


def merge_masked(
    deltas: list[torch.Tensor],
    weights: torch.Tensor,
    masks: list[torch.Tensor],
    rescale: Optional[float],
    combine: str,
    majority_sign: str = "total",
) -> torch.Tensor:
    """Apply given keep-masks (rescaling kept entries by 1/rescale if set), then combine."""
    trims = [Trim(d.reshape(-1), mask=m.reshape(-1).to(d.device), rescale=rescale) for d, m in zip(deltas, masks)]
    return combine_trimmed(trims, [float(w) for w in weights], combine, majority_sign).view(deltas[0].shape)


def merge_sparsified(
    deltas: list[torch.Tensor],
    weights: torch.Tensor,
    params: dict,
    generator: torch.Generator,
    *,
    drop: str,
    combine: str,
) -> torch.Tensor:
    """The family's merge_deltas: trim by magnitude or draw random masks (CPU generator), then combine."""
    density = params["density"]
    if drop == "magnitude":
        trims = [magnitude_trim(d, density) for d in deltas]
    else:
        trims = [Trim(d.reshape(-1), mask=random_keep_mask(d.shape, density, generator).view(-1).to(d.device),
                      rescale=density) for d in deltas]
    merged = combine_trimmed(trims, [float(w) for w in weights], combine, params.get("majority_sign", "total"))
    return merged.view(deltas[0].shape)


def _density(default: float) -> Param:
    return Param("density", float, default, "fraction of each update's entries kept, in (0, 1]",
                 check=density_in_unit_interval)


MAJORITY_SIGN = Param("majority_sign", str, "total", "sign election: sum of values or count of signs",
                      choices=("total", "frequency"))


def _family(name, summary, paper, drop, combine, density, default_weight) -> MergeMethod:
    params = (_density(density),) + ((MAJORITY_SIGN,) if combine == "sign_elect" else ())
    return MergeMethod(
        name=name,
        summary=summary,
        paper=paper,
        merge_deltas=partial(merge_sparsified, drop=drop, combine=combine),
        params=params,
        random=drop == "random",
        default_weight=default_weight,
    )


TIES = _family("ties", "trim to top-ρ magnitudes, elect signs, disjoint mean (TIES)",
               TIES_PAPER, "magnitude", "sign_elect", 0.2, lambda k: 1.0)
DARE_LINEAR = _family("dare_linear", "random drop with 1/ρ rescale, weighted sum (DARE)",
                      DARE_PAPER, "random", "sum", 0.5, lambda k: 1.0 / k)
DARE_TIES = _family("dare_ties", "random drop with 1/ρ rescale, TIES sign election (DARE)",
                    DARE_PAPER, "random", "sign_elect", 0.5, lambda k: 1.0)
MAGNITUDE_PRUNE = _family("magnitude_prune", "trim to top-ρ magnitudes, weighted sum",
                          TIES_PAPER, "magnitude", "sum", 0.2, lambda k: 1.0 / k)
