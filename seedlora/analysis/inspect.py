"""Describe adapters and compare their updates, from factors only (no out x in matrices)."""

from __future__ import annotations

from collections import Counter

from .. import lowrank
from ..sources import LoraAdapter


def describe_adapter(adapter: LoraAdapter) -> str:
    """One block of text: rank(s), alpha, scale, targets, dtype, parameter count and file size."""
    ranks = Counter(m.rank for m in adapter.modules.values())
    targets = sorted({name.rsplit(".", 1)[-1] for name in adapter.modules})
    params = sum(m.rank * (m.in_features + m.out_features) for m in adapter.modules.values())
    size = adapter.weights_file.stat().st_size
    config = adapter.config
    rank_text = ", ".join(f"r={r} ×{n}" for r, n in sorted(ranks.items()))
    return "\n".join(
        [
            f"{adapter.path}",
            f"  base: {adapter.base_model or 'unknown'}",
            f"  modules: {len(adapter.modules)} ({rank_text}); targets: {', '.join(targets)}",
            f"  lora_alpha: {config.get('lora_alpha')}, rslora: {bool(config.get('use_rslora'))}, "
            f"patterns: {'yes' if config.get('rank_pattern') or config.get('alpha_pattern') else 'no'}",
            f"  dtype: {', '.join(sorted(adapter.dtypes))}; {params:,} parameters; {size / 1e6:.2f} MB ({adapter.weights_file.name})",
        ]
    )


def shared_modules(adapters) -> list:
    """Modules every adapter adapts with the same update shape (the ones whose updates compare)."""
    from ..errors import IncompatibleInputsError

    names = sorted(set.intersection(*(set(a.modules) for a in adapters)))
    names = [n for n in names if len({a.modules[n].shape for a in adapters}) == 1]
    if not names:
        raise IncompatibleInputsError("the adapters share no module of one shape; nothing to compare")
    return names


def pairwise_cosine(adapters, names) -> dict:
    """For each module, the K x K matrix of cosine similarities of the adapters' updates."""
    table = {}
    for name in names:
        updates = [a.factors(name) for a in adapters]
        norms = [lowrank.frobenius_sq(u) ** 0.5 for u in updates]
        k = len(updates)
        matrix = [[1.0] * k for _ in range(k)]
        for i in range(k):
            for j in range(i + 1, k):
                denom = norms[i] * norms[j]
                cos = lowrank.inner(updates[i], updates[j]) / denom if denom > 0 else 0.0
                matrix[i][j] = matrix[j][i] = cos
        table[name] = matrix
    return table
