"""Per-module random generators derived from one user seed.

Each module gets its own torch.Generator seeded from (seed, module name), so random
methods give the same result whatever order modules are processed in: the adapter path,
the fused-model path and a resumed run all draw identical masks for a module.
"""

from __future__ import annotations

import hashlib

import torch


def module_generator(seed: int, module: str) -> torch.Generator:
    """A CPU generator whose state depends only on `seed` and `module`."""
    digest = hashlib.sha256(f"{int(seed)}/{module}".encode()).digest()
    generator = torch.Generator(device="cpu")
    generator.manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))
    return generator
