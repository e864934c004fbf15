"""Output folders that appear whole or not at all.

Everything is written into a hidden temporary folder beside the target and renamed into
place at the end, so a failure (bad tensor found mid-merge, Ctrl-C, disk full) leaves no
half-written output. An existing non-empty target is refused unless overwrite is asked for.
"""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import OutputExistsError


def check_output_free(output, overwrite: bool) -> Path:
    """Fail early (before any compute) if `output` exists, is not empty and overwrite is off."""
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise OutputExistsError(f"{output}: exists and is not a folder; choose another -o path")
    if output.is_dir() and any(output.iterdir()) and not overwrite:
        raise OutputExistsError(f"{output}: output folder exists and is not empty; pass --overwrite or choose another -o")
    return output


@contextmanager
def staged_output(output, overwrite: bool) -> Iterator[Path]:
    """Yield a temporary folder; on success it replaces `output`, on error it is deleted."""
    output = check_output_free(output, overwrite).resolve()
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = output.parent / f".{output.name}.seedlora-tmp-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    old = output.parent / f".{output.name}.seedlora-old-{os.getpid()}"
    if output.exists():
        output.rename(old)
    staging.rename(output)
    shutil.rmtree(old, ignore_errors=True)
