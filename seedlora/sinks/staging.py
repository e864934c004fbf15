"""Output folders that appear whole or not at all, and never where an input lives.

Everything is written into a hidden staging folder beside the target; at the end the staging
folder and the target are exchanged in one atomic rename (Linux renameat2 RENAME_EXCHANGE; a
plain rename when the target does not exist), so a process killed at any moment leaves either the
previous output or the complete new one. Leftover staging folders of killed runs are removed by
the next run. Before any work, `check_output_path` refuses an output that is, contains or lies
inside an input or the base model (by resolved path), even with overwrite.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

from ..errors import OutputExistsError, UnsafeOutputError

STAGING_MARK = ".seedlora-staging-"
RENAME_EXCHANGE = 2  # linux/fs.h


def check_output_free(output, overwrite: bool) -> Path:
    """Fail early (before any compute) if `output` exists, is not empty and overwrite is off."""
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise OutputExistsError(f"{output}: exists and is not a folder; choose another -o path")
    if output.is_dir() and any(output.iterdir()) and not overwrite:
        raise OutputExistsError(f"{output}: output folder exists and is not empty; pass --overwrite (overwrite=True) or choose another output")
    return output


def check_output_path(output, protected: Iterable) -> None:
    """Refuse an output equal to, inside, or containing an input or the base (resolved paths)."""
    target = Path(output).resolve()
    for path in protected:
        path = Path(path).resolve()
        if target == path or path in target.parents or target in path.parents:
            relation = "is" if target == path else "lies inside" if path in target.parents else "contains"
            raise UnsafeOutputError(
                f"{output}: the output {relation} {path}, an input or the base model; choose an output folder elsewhere"
            )


@contextmanager
def staged_output(output, overwrite: bool) -> Iterator[Path]:
    """Yield a staging folder; on success it atomically replaces `output`, on error it is deleted."""
    output = check_output_free(output, overwrite).resolve()
    output.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_staging(output)
    staging = output.parent / f".{output.name}{STAGING_MARK}{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        yield staging
        for path in staging.iterdir():
            path.chmod(0o644)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    check_output_free(output, overwrite)  # someone may have filled it meanwhile
    if output.exists():
        _exchange(staging, output)  # staging now holds the previous output
        shutil.rmtree(staging, ignore_errors=True)
    else:
        staging.rename(output)


def _exchange(first: Path, second: Path) -> None:
    """Swap two paths atomically; fall back to two renames where the kernel cannot."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is not None:
        at_fdcwd = -100
        if renameat2(at_fdcwd, os.fsencode(first), at_fdcwd, os.fsencode(second), RENAME_EXCHANGE) == 0:
            return
    old = second.parent / f".{second.name}{STAGING_MARK}old-{os.getpid()}"
    second.rename(old)
    first.rename(second)
    old.rename(first)


def _remove_stale_staging(output: Path) -> None:
    """Delete staging folders left beside `output` by runs that were killed."""
    for path in output.parent.glob(f".{output.name}{STAGING_MARK}*"):
        pid = path.name.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
