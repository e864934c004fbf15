"""The command's thread policy, set before torch is imported (OpenMP reads it once, at start-up).

On a busy machine torch's OpenMP threads spin-wait for work: a TIES merge that took 3.1 s with
one thread took 17.8–48.5 s with the default policy on 2 shared cores, 6.5 s with
OMP_WAIT_POLICY=PASSIVE (issue 11). So the command sets OMP_WAIT_POLICY=PASSIVE unless the user
set a policy, and `--threads N` sets OMP_NUM_THREADS / MKL_NUM_THREADS (and torch's count, for
an in-process call after torch was imported). Without --threads, a count the user exported is kept.
"""

from __future__ import annotations

import os
from typing import MutableMapping, Optional, Sequence


def threads_flag(argv: Sequence[str]) -> Optional[int]:
    """N from `--threads N` / `--threads=N` anywhere in argv (None if absent or not a positive int)."""
    for i, token in enumerate(argv):
        value = token.split("=", 1)[1] if token.startswith("--threads=") else (
            argv[i + 1] if token == "--threads" and i + 1 < len(argv) else None)
        if value is not None:
            return int(value) if value.isdigit() and int(value) > 0 else None
    return None


def apply_thread_policy(argv: Sequence[str], environ: MutableMapping = os.environ) -> Optional[int]:
    """Set the OpenMP environment for this process from argv; returns the --threads count if given."""
    environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    threads = threads_flag(argv)
    if threads is not None:
        environ["OMP_NUM_THREADS"] = environ["MKL_NUM_THREADS"] = str(threads)
    return threads


def use_threads(threads: Optional[int]) -> None:
    """torch.set_num_threads(threads) when given: covers a main() called after torch was imported."""
    if threads:
        import torch

        torch.set_num_threads(threads)


def positive_int(text: str) -> int:
    """argparse type for --threads."""
    import argparse

    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)
