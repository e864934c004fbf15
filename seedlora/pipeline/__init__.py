"""The one merge pipeline: plan (headers only) -> sink checks -> per-module merge -> sink writes.

Every source/sink pair goes through `run_merge`: the same validation (`plan.plan_merge`), the
same per-module merge (`merger.Merger`), one report type and one provenance record. Input files
are hashed on a background thread while the merge runs.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Optional, Sequence

from ..sources.identity import display_name, input_facts
from .estimate import Preview, preview
from .merger import MergedModule, Merger
from .plan import MergePlan, plan_merge
from .report import MergeReport, ModuleResult

log = logging.getLogger(__name__)


def run_merge(sources: Sequence, sink, method="linear", weights: Optional[Sequence[float]] = None,
              params: Optional[dict] = None, seed: int = 0, base=None, strict: bool = False,
              progress=False) -> MergeReport:
    """Merge opened `sources` into `sink` (sinks.AdapterFolderSink, FusedModelSink, PeftModelSink)."""
    started = time.perf_counter()
    plan = plan_merge(sources, method, weights, params, seed, base=base, strict=strict)
    sink.prepare(plan)
    log.info("merging %d input(s) with %s: %d module(s) -> %s %s", len(plan.sources), plan.method.name,
             len(plan.modules) or len(plan.tensors), sink.kind, sink.output)
    report = MergeReport(plan.method.name, plan.params, [float(w) for w in plan.weights], plan.seed, sink.kind,
                         str(sink.output), inputs=[display_name(s) for s in plan.sources], warnings=list(plan.warnings))
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="seedlora-provenance") as background:
        facts = background.submit(input_facts, plan.sources, plan.base)
        sink.write(plan, Merger(plan, progress), report, facts)
        facts.result()  # surface a hashing error here rather than lose it
    report.seconds = time.perf_counter() - started
    log.info("wrote %s in %.1f s", sink.output, report.seconds)
    return report


def preview_merge(sources: Sequence, sink, method="linear", weights: Optional[Sequence[float]] = None,
                  params: Optional[dict] = None, seed: int = 0, base=None, strict: bool = False) -> Preview:
    """A dry run: the plan and the sink's checks, then what the merge would write and cost. Writes nothing."""
    plan = plan_merge(sources, method, weights, params, seed, base=base, strict=strict)
    sink.prepare(plan)
    return preview(plan, sink)


__all__ = ["Preview", "preview_merge", "MergePlan", "MergeReport", "MergedModule", "Merger", "ModuleResult", "plan_merge", "run_merge"]
