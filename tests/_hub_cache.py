"""Lay out a local folder as the Hugging Face Hub cache does, so Hub ids resolve offline in tests.

HF_HOME/hub/models--org--name/{blobs/<sha256>, refs/<branch>, snapshots/<commit>/<file> -> blob}:
the layout huggingface_hub writes when it downloads (snapshot files are symlinks to blobs).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path


def cache_repo(hf_home, repo_id: str, folder, refs=("main",), commit: str | None = None) -> str:
    """Put the files of `folder` into the Hub cache under `hf_home` as `repo_id`; return the commit."""
    root = Path(hf_home) / "hub" / ("models--" + repo_id.replace("/", "--"))
    files = sorted(p for p in Path(folder).rglob("*") if p.is_file())
    if commit is None:
        digest = hashlib.sha1(repo_id.encode())
        for path in files:
            digest.update(path.read_bytes())
        commit = digest.hexdigest()
    for path in files:
        blob = root / "blobs" / hashlib.sha256(path.read_bytes()).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        if not blob.exists():
            shutil.copyfile(path, blob)
        link = root / "snapshots" / commit / path.relative_to(folder)
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(blob, link.parent), link)
    for ref in refs:
        (root / "refs" / ref).parent.mkdir(parents=True, exist_ok=True)
        (root / "refs" / ref).write_text(commit)
    return commit
