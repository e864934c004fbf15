"""Provenance records: which inputs (by content hash), which method, parameters and seed.

Deliberately free of timestamps and host names, so the same merge gives byte-identical files.
The slow part (hashing every input file, looking up installed versions) is `input_facts`,
which `merge_adapters` runs on a background thread while it merges.
"""

from __future__ import annotations

from importlib import metadata
from typing import Optional


def package_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "unknown"


def input_facts(inputs) -> dict:
    """Installed versions and the inputs' content hashes: reads every input file once."""
    return {
        "seedlora_version": package_version("seedlora"),
        "torch_version": package_version("torch"),
        "peft_version": package_version("peft"),
        "inputs": [{"path": str(getattr(i, "path", i)), "sha256": i.content_hashes()} for i in inputs],
    }


def provenance_record(inputs, report, base=None, facts: Optional[dict] = None) -> dict:
    """Everything needed to reproduce (and audit) the output folder; `facts` from input_facts(inputs)."""
    facts = input_facts(inputs) if facts is None else facts
    record = {
        "tool": "seedlora",
        "seedlora_version": facts["seedlora_version"],
        "torch_version": facts["torch_version"],
        "peft_version": facts["peft_version"],
        "method": report.method,
        "params": report.params,
        "weights": report.weights,
        "seed": report.seed,
        "inputs": facts["inputs"],
    }
    if getattr(report, "rank", None) is not None:
        record["rank"] = report.rank
    if base is not None:
        record["base"] = str(base)
    return record
