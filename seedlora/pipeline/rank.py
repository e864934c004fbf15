"""Turning merged updates into LoRA factors of one uniform rank, saying what truncation lost.

Shared by the adapter-folder and PeftModel sinks. Low-rank results are cut (if asked) by the
small-core SVD of lowrank.truncate, dense results by dense_lowrank.factorize; both then pad with
zero rows/columns to the uniform rank (exact), the form PEFT and every vLLM scale right. With
--rank auto each module keeps its own fewest triplets reaching the energy asked for, and the
adapter's uniform rank is the largest of them: per-module ranks through rank_pattern would
make smaller files, but older vLLM releases ignore rank_pattern, and `seedlora check` warns on it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional

from .. import lowrank
from ..dense_lowrank import factorize
from ..errors import MethodError
from ..lowrank import LowRank
from ..rng import module_generator
from .plan import MergePlan
from .report import MergeReport, ModuleResult

# vLLM's LoRAConfig.max_lora_rank is Literal[...] of exactly these (vllm/config/lora.py)
VLLM_MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
log = logging.getLogger(__name__)
DEFAULT_ENERGY = 0.9  # --rank auto without --energy
WARN_ENERGY = 0.9  # a dense method's adapter keeping less than this gets a warning


def vllm_rank_bucket(rank: int) -> int:
    """The smallest --max-lora-rank vLLM accepts that holds `rank` (vLLM zero-pads, exactly)."""
    if rank < 1:
        raise MethodError(f"LoRA rank must be positive, got {rank}")
    for bucket in VLLM_MAX_LORA_RANKS:
        if rank <= bucket:
            return bucket
    raise MethodError(
        f"rank {rank} is above vLLM's largest --max-lora-rank 512; re-merge with `seedlora merge ... --vllm --rank 512`"
    )


def target_rank(plan: MergePlan, rank: Optional[int], vllm: bool) -> int:
    """One uniform output rank: the exact rank (or the user's), bucketed for vLLM if asked.

    Dense results default to the sum of the input ranks (their exact rank is full).
    """
    if rank is not None and int(rank) < 1:
        raise MethodError(f"--rank must be a positive integer, got {rank}")
    if not plan.modules:
        raise MethodError("the inputs adapt no LoRA modules; nothing to write as an adapter")
    dense = any(plan.method.low_rank is False or t.dora for t in plan.modules.values())
    exact = max(plan.exact_rank(name) for name in plan.modules)
    if dense and rank is None:
        exact = max(sum(t.ranks) for t in plan.modules.values())
    target = exact if rank is None else min(int(rank), exact)
    if vllm:
        if rank is not None and int(rank) not in VLLM_MAX_LORA_RANKS:
            raise MethodError(
                f"--rank {rank} is not a rank vLLM serves; with --vllm choose one of {', '.join(map(str, VLLM_MAX_LORA_RANKS))}"
            )
        target = int(rank) if rank is not None else vllm_rank_bucket(target)
    return target


@dataclass(frozen=True)
class RankChoice:
    """The output rank asked for: one uniform `rank`, or `energy` (--rank auto: each module's
    fewest triplets keeping that share of ‖τ‖², bucketed for vLLM if asked, padded to the max)."""

    rank: Optional[int] = None
    energy: Optional[float] = None
    vllm: bool = False

    @property
    def auto(self) -> bool:
        return self.energy is not None


def rank_choice(plan: MergePlan, rank, vllm: bool, energy: Optional[float] = None) -> RankChoice:
    """Validate --rank/--energy: an int (or None: the default) gives a uniform rank; "auto" an energy."""
    if rank == "auto":
        energy = DEFAULT_ENERGY if energy is None else float(energy)
        if not 0.0 < energy <= 1.0:
            raise MethodError(f"--energy must be in (0, 1], got {energy}")
        if not plan.modules:
            raise MethodError("the inputs adapt no LoRA modules; nothing to write as an adapter")
        return RankChoice(energy=energy, vllm=vllm)
    if energy is not None:
        raise MethodError("--energy applies to --rank auto; pass --rank auto --energy E, or drop --energy")
    if rank is not None and not isinstance(rank, int) and not str(rank).isdigit():
        raise MethodError(f"--rank must be a positive integer or auto, got {rank!r}")
    return RankChoice(rank=target_rank(plan, None if rank is None else int(rank), vllm), vllm=vllm)


def upper_rank(plan: MergePlan, choice: RankChoice) -> int:
    """The uniform rank written: the chosen one, or for --rank auto the most it can be (the exact rank)."""
    if not choice.auto:
        return choice.rank
    dense = any(not plan.method.low_rank or t.dora for t in plan.modules.values())
    return max(min(t.shape) if dense else plan.exact_rank(name) for name, t in plan.modules.items())


def factor_modules(plan: MergePlan, merger, choice: RankChoice, report: MergeReport) -> tuple[int, dict]:
    """Merge and factor every module: (uniform rank, {name: (LowRank of that rank, bias)}).

    Each module's ModuleResult goes into `report`; the factors are moved to the CPU for writing.
    """
    cuts = choice.auto or cuts_anything(plan, choice.rank)
    found = {}
    for name, merged in merger.each_module(plan.modules, f"merging ({plan.method.name})"):
        factors, result = to_factors(plan, name, merged.weight, choice, weigh=cuts)
        result.stats = merged.stats
        report.modules.append(result)
        bias = merged.bias.cpu() if merged.bias is not None else None
        found[name] = (LowRank(B=factors.B.cpu(), A=factors.A.cpu()), bias)
    rank = choice.rank if not choice.auto else max(f.rank for f, _ in found.values())
    if choice.auto and choice.vllm:
        rank = vllm_rank_bucket(rank)
    report.rank = rank
    return rank, {name: (lowrank.pad_rank(f, rank), bias) for name, (f, bias) in found.items()}


def to_factors(plan: MergePlan, name: str, result, choice: RankChoice, weigh: bool) -> tuple[LowRank, ModuleResult]:
    """`result` (LowRank or dense) as factors of the chosen rank (auto: the module's own), and what was lost.

    `weigh` records ‖τ‖², the module's weight in the overall figures; a merge that cuts
    nothing anywhere skips it (every module keeps all its energy, so weights change nothing).
    """
    exact = plan.exact_rank(name)
    if isinstance(result, LowRank):
        return _low_rank_factors(name, result, choice, exact, weigh)
    round_up = vllm_rank_bucket if choice.vllm else int
    found = factorize(result, module_generator(plan.seed, name + "/svd"), rank=choice.rank, energy=choice.energy,
                      round_up=round_up)
    energy, error, kept = found.energy_kept, found.relative_error, found.rank
    if kept >= exact:  # nothing was cut: report exactly lossless, not rounding noise
        energy, error = 1.0, 0.0
    return found.factors, ModuleResult(name, exact, choice.rank or kept, energy, error, found.norm_sq)


def _low_rank_factors(name: str, result: LowRank, choice: RankChoice, exact: int, weigh: bool):
    rank = choice.rank
    g = None
    if choice.auto:
        g = lowrank.grams(result, exact=False)
        wanted = choice.energy * g.frobenius_sq()
        rank = lowrank.rank_for_energy(lowrank.singular_values(result, g), wanted)
        rank = min(vllm_rank_bucket(rank), result.rank) if choice.vllm else rank
    if rank >= result.rank:  # nothing to cut: exact
        norm_sq = (g or lowrank.grams(result, exact=False)).frobenius_sq() if weigh else None
        return lowrank.pad_rank(result, rank), ModuleResult(name, exact, rank, 1.0, 0.0, norm_sq)
    g = g or lowrank.grams(result, exact=False)  # one pass serves the norm (a weight) and the truncation
    kept, energy = lowrank.truncate(result, rank, g)
    return kept, ModuleResult(name, exact, rank, energy, max(0.0, 1.0 - energy) ** 0.5, g.frobenius_sq())


def cuts_anything(plan: MergePlan, rank: int) -> bool:
    return any(plan.exact_rank(name) > rank for name in plan.modules)


def warn_if_dense_energy_low(plan: MergePlan, report: MergeReport, choice: RankChoice) -> None:
    """Warn (report + log) when a dense method's adapter keeps under WARN_ENERGY of the update.

    Not under --rank auto, where the user chose the energy; not for low-rank methods, whose
    truncation below the exact rank is the user's own --rank.
    """
    dense = any(not plan.method.low_rank or t.dora for t in plan.modules.values())
    if not dense or choice.auto or report.energy_kept >= WARN_ENERGY:
        return
    message = (f"the adapter keeps only {report.energy_kept:.0%} of the merged update's energy (relative error "
               f"{report.relative_error:.2f}): a {plan.method.name} merge is not low-rank; for the exact merge use "
               f"--fuse --base BASE_DIR, or keep more with --rank auto --energy 0.9 (or a higher --rank)")
    report.warnings.append(message)
    log.warning(message)
