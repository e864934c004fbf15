"""One report for every merge: what was merged, how each module came out, what to watch for.

The same `MergeReport` comes back from an adapter, a fused model and a PeftModel merge; it is
saved as `merge_report.json` (adapters) or inside `seedlora_provenance.json` (fused models) and
summarised on the terminal. `to_dict` leaves out timing and paths, so reruns are byte-identical.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional


@dataclass
class ModuleResult:
    """How one module came out: its rank before and after, and what truncation lost."""

    name: str
    exact_rank: int  # rank of the exact result (Σr, Σr+1, or min(out, in) for dense)
    rank: int  # rank written
    energy_kept: float  # ‖τ_N‖² / ‖τ‖² (1.0 when nothing was cut)
    relative_error: float  # ‖τ − τ_N‖ / ‖τ‖
    norm_sq: Optional[float]  # ‖τ‖², to weight the overall figures (None: the merge cut nothing)
    stats: dict = field(default_factory=dict)  # the method's per-module statistics (e.g. model_stock's t)


@dataclass
class MergeReport:
    """What a merge did. `sink` is "adapter", "fused" or "peft_model"."""

    method: str
    params: dict
    weights: list
    seed: int
    sink: str
    output: str
    inputs: list = field(default_factory=list)
    rank: Optional[int] = None  # adapter outputs: the uniform rank written
    modules: list = field(default_factory=list)  # ModuleResult per adapted module (adapter outputs)
    warnings: list = field(default_factory=list)
    shards: list = field(default_factory=list)  # fused outputs
    tensors_merged: int = 0
    tensors_copied: int = 0
    bytes_written: int = 0
    merged_params: int = 0  # checkpoint merges: entries of the merged tensors
    zero_delta_params: int = 0  # of those, entries whose merged delta is exactly 0 (= base)
    module_stats: dict = field(default_factory=dict)  # fused outputs: module/tensor -> the method's statistics
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

    @property
    def unchanged_share(self) -> float:
        """Share of merged entries taken unchanged from the base (merged delta exactly 0)."""
        return self.zero_delta_params / self.merged_params if self.merged_params else 0.0

    def stat_summary(self) -> dict:
        """{stat: (min, median, max)} over modules, for the methods' per-module statistics."""
        values: dict = {}
        for stats in [m.stats for m in self.modules] + list(self.module_stats.values()):
            for key, value in stats.items():
                values.setdefault(key, []).append(float(value))
        summary = {}
        for key, found in values.items():
            found.sort()
            summary[key] = (found[0], found[len(found) // 2], found[-1])
        return summary

    def to_dict(self) -> dict:
        record = {"method": self.method, "params": self.params, "weights": self.weights, "seed": self.seed,
                  "output": self.sink, "warnings": self.warnings}
        if self.sink == "fused":
            record.update(shards=self.shards, tensors_merged=self.tensors_merged, tensors_copied=self.tensors_copied,
                          bytes_written=self.bytes_written)
            if self.merged_params:
                record.update(merged_params=self.merged_params, zero_delta_params=self.zero_delta_params,
                              unchanged_share=self.unchanged_share)
            if self.module_stats:
                record["module_stats"] = self.module_stats
            return record
        record.update(rank=self.rank, energy_kept=self.energy_kept, relative_error=self.relative_error,
                      modules=[vars(m) for m in self.modules])
        return record
