"""Turning merged updates into LoRA factors of one uniform rank, saying what truncation lost.

Shared by the adapter-folder and PeftModel sinks. Low-rank results are cut (if asked) by the
small-core SVD of lowrank.truncate, dense results by lowrank.truncate_dense; both then pad with
zero rows/columns to the uniform rank (exact), the form PEFT and every vLLM scale right.
"""

from __future__ import annotations

from typing import Optional

import torch

from .. import lowrank
from ..errors import MethodError
from ..lowrank import LowRank
from ..rng import module_generator
from .plan import MergePlan
from .report import ModuleResult

# vLLM's LoRAConfig.max_lora_rank is Literal[...] of exactly these (vllm/config/lora.py)
VLLM_MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


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


def to_factors(plan: MergePlan, name: str, result, rank: int, weigh: bool) -> tuple[LowRank, ModuleResult]:
    """`result` (LowRank or dense) as factors of exactly `rank` columns, and what was lost.

    `weigh` records ‖τ‖², the module's weight in the overall figures; a merge that cuts
    nothing anywhere skips it (every module keeps all its energy, so weights change nothing).
    """
    exact = plan.exact_rank(name)
    if isinstance(result, LowRank):
        if rank >= result.rank:  # nothing to cut: exact
            norm_sq = lowrank.grams(result, exact=False).frobenius_sq() if weigh else None
            return lowrank.pad_rank(result, rank), ModuleResult(name, exact, rank, 1.0, 0.0, norm_sq)
        g = lowrank.grams(result, exact=False)  # one pass serves the norm (a weight) and the truncation
        kept, energy = lowrank.truncate(result, rank, g)
        norm_sq, error = g.frobenius_sq(), max(0.0, 1.0 - energy) ** 0.5
    else:
        norm_sq = float(torch.linalg.vector_norm(result.double()) ** 2)
        kept, error = lowrank.truncate_dense(result, rank, module_generator(plan.seed, name + "/svd"))
        energy = max(0.0, 1.0 - error**2)
    if rank >= exact:  # nothing was cut: report exactly lossless, not rounding noise
        energy, error = 1.0, 0.0
    return lowrank.pad_rank(kept, rank), ModuleResult(name, exact, rank, energy, error, norm_sq)


def cuts_anything(plan: MergePlan, rank: int) -> bool:
    return any(plan.exact_rank(name) > rank for name in plan.modules)
