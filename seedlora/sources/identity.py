"""Who the inputs are: every input file hashed whole, versions of the tools, the base by its headers.

An adapter folder or full checkpoint is identified by the sha256 of each of its files; an adapter
held in a PeftModel by the sha256 of its factor tensors; the base model, which can be large, by
its config and its safetensors headers (the record says so). An input or base fetched from the
Hub is named by its repo id and resolved commit instead of the machine's cache path. `input_facts` is the slow part (it
reads every input file once); the pipeline runs it on a background thread beside the merge.
"""

from __future__ import annotations

import hashlib
import os
from importlib import metadata
from pathlib import Path


def package_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "unknown"


def sha256_file(path: Path) -> str:
    """sha256 of a file, read in 1 MB blocks (hashlib releases the GIL: it runs beside a merge)."""
    digest, buffer = hashlib.sha256(), bytearray(1 << 20)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as handle:
        while count := handle.readinto(buffer):
            digest.update(view[:count])
    return digest.hexdigest()


def display_name(source) -> str:
    """How reports, cards and saved configs name an input or base: `org/name@commit` from the Hub,
    else its absolute path (so a saved config re-runs from any working directory)."""
    origin = getattr(source, "origin", None)
    if origin is not None:
        return origin.pinned
    return os.path.abspath(source.path) if isinstance(source.path, Path) else str(source.path)


def location(source) -> dict:
    """{"hub": {repo_id, commit}} for a Hub snapshot, else {"path": absolute path}."""
    origin = getattr(source, "origin", None)
    if origin is None:
        return {"path": display_name(source)}
    return {"hub": {"repo_id": origin.repo_id, "commit": origin.commit}}


def describe_input(source) -> dict:
    """An input's identity: where it is and the sha256 of each of its files (or of its tensors)."""
    files = source.files()
    if files:
        return {**location(source), "sha256": {Path(f).name: sha256_file(Path(f)) for f in files}}
    return {"peft_model_adapter": str(source.path), "sha256_of_factors": source.content_digest()}


def describe_base(base) -> dict:
    """The base model by its config and tensor headers (names, dtypes, shapes, shards): no weights read."""
    digest = hashlib.sha256()
    for info in base.tensors.values():
        digest.update(f"{info.name}|{info.dtype}|{list(info.shape)}|{info.file.name}\n".encode())
    config = base.path / "config.json"
    return {
        **location(base),
        "hashed": "config.json and the safetensors headers (not the weights)",
        "config_sha256": sha256_file(config) if config.is_file() else None,
        "headers_sha256": digest.hexdigest(),
        "bytes": base.total_bytes,
    }


def input_facts(sources, base=None) -> dict:
    """Installed versions and the inputs' identities: reads every input file once."""
    facts = {
        "seedlora_version": package_version("seedlora"),
        "torch_version": package_version("torch"),
        "peft_version": package_version("peft"),
        "inputs": [describe_input(source) for source in sources],
    }
    if base is not None:
        facts["base"] = describe_base(base)
    return facts
