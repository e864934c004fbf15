"""Provenance records: which inputs (by content hash), which method, parameters and seed.

Deliberately free of timestamps and host names, so the same merge gives byte-identical files.
The inputs' identities come from sources.identity (hashed beside the merge).
"""

from __future__ import annotations

from typing import Optional


def provenance_record(report, facts: dict, extra: Optional[dict] = None) -> dict:
    """Everything needed to reproduce (and audit) the output folder."""
    record = {"tool": "seedlora", **facts, "method": report.method, "params": report.params,
              "weights": report.weights, "seed": report.seed, "output": report.sink}
    if report.rank is not None:
        record["rank"] = report.rank
    if report.warnings:
        record["warnings"] = report.warnings
    return {**record, **(extra or {})}
