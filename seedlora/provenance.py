"""Provenance records: which inputs (by content hash), which method, parameters and seed.

Deliberately free of timestamps and host names, so the same merge gives byte-identical files.
"""

from __future__ import annotations

from importlib import metadata


def package_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "unknown"


def provenance_record(inputs, report, base=None) -> dict:
    """Everything needed to reproduce (and audit) the output folder."""
    record = {
        "tool": "seedlora",
        "seedlora_version": package_version("seedlora"),
        "torch_version": package_version("torch"),
        "peft_version": package_version("peft"),
        "method": report.method,
        "params": report.params,
        "weights": report.weights,
        "seed": report.seed,
        "inputs": [{"path": str(getattr(i, "path", i)), "sha256": i.content_hashes()} for i in inputs],
    }
    if getattr(report, "rank", None) is not None:
        record["rank"] = report.rank
    if base is not None:
        record["base"] = str(base)
    return record
