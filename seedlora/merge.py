"""Plan, validate, merge module by module, write: the adapter-to-adapter merge.

`merge_adapters` is the library function behind `seedlora merge`. Everything the configs and
headers can tell is checked before a tensor is read; then each module's factors are loaded,
merged (exactly in factor form for low-rank methods, on materialised deltas otherwise),
optionally compressed, and handed to the adapter writer.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence, Union

import torch

from . import lowrank
from .adapter import LoraAdapter
from .errors import IncompatibleInputsError, MethodError
from .lowrank import LowRank
from .methods import get_method
from .methods.base import MergeMethod, split_stats
from .output import check_output_free
from .provenance import input_facts
from .rng import module_generator


@dataclass
class ModuleResult:
    """How one module came out: its rank before and after, and what truncation lost."""

    name: str
    exact_rank: int  # rank of the exact result (Σr, Σr+1, or min(out, in) for dense)
    rank: int  # rank written
    energy_kept: float  # ‖τ_N‖² / ‖τ‖² (1.0 when nothing was cut)
    relative_error: float  # ‖τ − τ_N‖ / ‖τ‖
    norm_sq: Optional[float]  # ‖τ‖², to weight the overall figures (None: the merge cut nothing)
    stats: dict = field(default_factory=dict)  # per-module scalars the method reported (Model Stock's t, ...)


@dataclass
class MergeReport:
    """What a merge did; saved as merge_report.json and summarised on the terminal."""

    method: str
    params: dict
    weights: list
    seed: int
    rank: int
    output: str
    modules: list = field(default_factory=list)
    seconds: float = 0.0

    @property
    def energy_kept(self) -> float:
        total = sum(m.norm_sq or 0.0 for m in self.modules)
        return 1.0 if total == 0 else sum(m.energy_kept * (m.norm_sq or 0.0) for m in self.modules) / total

    @property
    def relative_error(self) -> float:
        total = sum(m.norm_sq or 0.0 for m in self.modules)
        lost = sum((m.relative_error**2) * (m.norm_sq or 0.0) for m in self.modules)
        return 0.0 if total == 0 else (lost / total) ** 0.5

    @property
    def lossless(self) -> bool:
        return all(m.rank >= m.exact_rank or m.relative_error == 0.0 for m in self.modules)

    def to_dict(self) -> dict:
        return {
            "method": self.method,
            "params": self.params,
            "weights": self.weights,
            "seed": self.seed,
            "rank": self.rank,
            "energy_kept": self.energy_kept,
            "relative_error": self.relative_error,
            "modules": [vars(m) for m in self.modules],
        }


# ---------------------------------------------------------------- validation
def open_adapters(paths: Sequence) -> list:
    """Open every adapter (headers only); at least two are needed to merge."""
    if len(paths) < 1:
        raise IncompatibleInputsError("no adapters given; pass two or more adapter folders")
    return [LoraAdapter.open(p) for p in paths]


def validate_compatible(adapters: Sequence[LoraAdapter]) -> list:
    """Same module set, same base shapes, same layout; returns the module names."""
    first = adapters[0]
    names = list(first.modules)
    for other in adapters[1:]:
        only_first = sorted(set(first.modules) - set(other.modules))
        only_other = sorted(set(other.modules) - set(first.modules))
        if only_first or only_other:
            what = "disjoint" if not set(first.modules) & set(other.modules) else "different"
            detail = "; ".join(
                f"only in {path}: {_few(mods)}" for path, mods in ((first.path, only_first), (other.path, only_other)) if mods
            )
            raise IncompatibleInputsError(
                f"adapters target {what} modules ({detail}); merge adapters trained on the same target_modules"
            )
        for name in names:
            a, b = first.modules[name], other.modules[name]
            if a.shape != b.shape or a.transposed != b.transposed:
                raise IncompatibleInputsError(
                    f"module {name}: {first.path} updates a {a.out_features}x{a.in_features} weight but "
                    f"{other.path} a {b.out_features}x{b.in_features} one; adapters must share one base model"
                )
    return names


def _few(items: list, shown: int = 3) -> str:
    more = f" (+{len(items) - shown} more)" if len(items) > shown else ""
    return ", ".join(items[:shown]) + more


def resolve_method(method: Union[str, MergeMethod], params: Optional[dict], weights, k: int):
    """The registry entry, its validated parameters and the K weights."""
    entry = get_method(method) if isinstance(method, str) else method
    resolved = entry.resolve_params(params)
    return entry, resolved, entry.resolve_weights(weights, k)


# ---------------------------------------------------------------- per module
def merge_module(
    adapters: Sequence[LoraAdapter],
    module: str,
    method: MergeMethod,
    weights: torch.Tensor,
    params: dict,
    seed: int,
    dense: bool = False,
) -> Union[LowRank, torch.Tensor]:
    """One module's merged update: LowRank on the factor path, else a float32 out x in tensor."""
    return merge_module_stats(adapters, module, method, weights, params, seed, dense)[0]


def merge_module_stats(adapters, module: str, method: MergeMethod, weights, params: dict, seed: int, dense: bool = False):
    """(merge_module's result, the per-module stats the method reported, e.g. {"t": 0.7})."""
    terms = [adapter.factors(module) for adapter in adapters]
    if method.low_rank:
        result, stats = split_stats(method.merge_factors(terms, weights, params))
        return (result.dense() if dense else result), stats
    deltas = [term.dense() for term in terms]
    return split_stats(method.merge_deltas(deltas, weights, params, module_generator(seed, module)))


def exact_rank(adapters: Sequence[LoraAdapter], module: str, method: MergeMethod) -> int:
    """Rank of the exact merged update's representation before any truncation."""
    ranks = sum(a.modules[module].rank for a in adapters)
    if method.low_rank:
        return ranks + method.extra_rank
    return min(adapters[0].modules[module].shape)


def compress(result, module: str, rank: int, exact: int, seed: int, weigh: bool = True):
    """Bring a module result to at most `rank` (small-core SVD on factors, SVD on dense), reporting the loss.

    `weigh` records ‖τ‖², the module's weight in the overall figures; a merge that cuts
    nothing anywhere skips it (every module keeps all its energy, so weights change nothing).
    """
    if isinstance(result, LowRank):
        if rank >= result.rank:  # nothing to cut: exact
            norm_sq = lowrank.grams(result, exact=False).frobenius_sq() if weigh else None
            return result, ModuleResult(module, exact, result.rank, 1.0, 0.0, norm_sq)
        g = lowrank.grams(result, exact=False)  # one pass serves the norm (a weight) and the truncation
        kept, energy = lowrank.truncate(result, rank, g)  # energy from the core's exact SVD
        norm_sq = g.frobenius_sq()
        error = max(0.0, 1.0 - energy) ** 0.5
    else:
        norm_sq = float(torch.linalg.vector_norm(result.double()) ** 2)
        kept, error = lowrank.truncate_dense(result, rank, module_generator(seed, module + "/svd"))
        energy = max(0.0, 1.0 - error**2)
    if rank >= exact:  # nothing was cut: report exactly lossless, not rounding noise
        energy, error = 1.0, 0.0
    return kept, ModuleResult(module, exact, kept.rank, energy, error, norm_sq)


def merge_all(sources, names, method: MergeMethod, weights, params: dict, rank: int, seed: int, progress=False):
    """Every module merged, compressed and padded to `rank`: ({module: LowRank}, [ModuleResult])."""
    exact = {name: exact_rank(sources, name, method) for name in names}
    cuts = any(exact[name] > rank for name in names)
    merged, results = {}, []
    for name in _progress(names, progress, f"merging ({method.name})"):
        result, stats = merge_module_stats(sources, name, method, weights, params, seed)
        factors, info = compress(result, name, rank, exact[name], seed, weigh=cuts)
        info.stats = stats
        merged[name] = lowrank.pad_rank(factors, rank)
        results.append(info)
    return merged, results


# ---------------------------------------------------------------- whole merge
def merge_adapters(
    adapters: Sequence,
    output,
    method: Union[str, MergeMethod] = "linear",
    weights: Optional[Sequence[float]] = None,
    params: Optional[dict] = None,
    rank: Optional[int] = None,
    seed: int = 0,
    overwrite: bool = False,
    dtype: Optional[str] = None,
    vllm: bool = False,
    progress: Union[bool, Callable] = False,
) -> MergeReport:
    """Merge LoRA adapter folders into a new PEFT adapter folder at `output`.

    Low-rank methods (linear, seedlora) are written exactly unless `rank` asks for less;
    dense methods are truncated to `rank` (default: the sum of the input ranks) by SVD.
    `vllm=True` pads (or truncates) to a rank vLLM's --max-lora-rank accepts.
    """
    from .writers import write_adapter  # local: writers imports this module's report types

    started = time.perf_counter()
    opened = [a if isinstance(a, LoraAdapter) else LoraAdapter.open(a) for a in adapters]
    names = validate_compatible(opened)
    entry, resolved, weight_tensor = resolve_method(method, params, weights, len(opened))
    if rank is not None and int(rank) < 1:
        raise MethodError(f"--rank must be a positive integer, got {rank}")
    out_dtype = _output_dtype(opened, dtype)
    target_rank = _target_rank(opened, names, entry, rank, vllm)
    check_output_free(output, overwrite)

    report = MergeReport(entry.name, resolved, [float(w) for w in weight_tensor], int(seed), target_rank, str(output))
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="seedlora-provenance") as background:
        facts = background.submit(input_facts, opened)  # hash the inputs while merging
        merged, report.modules = merge_all(opened, names, entry, weight_tensor, resolved, target_rank, seed, progress)
        facts = facts.result()
    report.seconds = time.perf_counter() - started
    write_adapter(output, opened, merged, report, out_dtype, overwrite, facts)
    report.seconds = time.perf_counter() - started
    return report


def _target_rank(adapters, names, method: MergeMethod, rank: Optional[int], vllm: bool) -> int:
    """One uniform output rank: the exact rank (or the user's), bucketed for vLLM if asked."""
    exact = max(exact_rank(adapters, n, method) for n in names)
    if not method.low_rank and rank is None:
        exact = max(sum(a.modules[n].rank for a in adapters) for n in names)
    target = exact if rank is None else min(int(rank), exact)
    if vllm:
        from .vllm_compat import VLLM_MAX_LORA_RANKS, vllm_rank_bucket

        if rank is not None and int(rank) not in VLLM_MAX_LORA_RANKS:
            raise MethodError(
                f"--rank {rank} is not a rank vLLM serves; with --vllm choose one of {', '.join(map(str, VLLM_MAX_LORA_RANKS))}"
            )
        target = int(rank) if rank is not None else vllm_rank_bucket(target)
    return target


def _output_dtype(adapters, dtype: Optional[str]) -> torch.dtype:
    """The inputs' common dtype (float32 if they differ) unless the user chose one."""
    allowed = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    if dtype is not None:
        if dtype not in allowed:
            raise MethodError(f"--dtype must be one of {', '.join(allowed)}, got {dtype!r}")
        return allowed[dtype]
    found = set().union(*(a.dtypes for a in adapters))
    return allowed[found.pop()] if len(found) == 1 and next(iter(found)) in allowed else torch.float32


def _progress(items, progress, description: str):
    if callable(progress):
        return progress(items, description)
    if not progress:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=description, unit="module", leave=False)
