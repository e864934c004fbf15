"""`seedlora inspect`: what adapters hold, and how similar their updates are per module."""

from __future__ import annotations

import itertools

HELP = "show rank, alpha, targets, dtype and size of adapters; with several, their per-module cosine similarity"


def add_arguments(parser) -> None:
    parser.add_argument("adapters", nargs="+", metavar="ADAPTER", help="adapter folders or Hub ids org/name[@revision]")
    parser.add_argument("--per-module", action="store_true", help="print every module's similarity, not just the summary")
    parser.add_argument("-q", "--quiet", action="store_true")


def run(args) -> None:
    from ..analysis.inspect import describe_adapter, pairwise_cosine, shared_modules
    from ..sources import LoraAdapter
    from ..sources.hub import resolve

    adapters = [LoraAdapter.open(resolve(path, "adapter").path) for path in args.adapters]
    for adapter in adapters:
        print(describe_adapter(adapter))
    if len(adapters) < 2:
        return
    names = shared_modules(adapters)
    table = pairwise_cosine(adapters, names)
    print("\ncosine similarity of updates (mean over modules, min..max):")
    for (i, j) in itertools.combinations(range(len(adapters)), 2):
        values = [table[name][i][j] for name in names]
        print(
            f"  {adapters[i].path} ~ {adapters[j].path}: {sum(values) / len(values):+.4f} "
            f"({min(values):+.4f}..{max(values):+.4f})"
        )
    if args.per_module:
        for name in names:
            pairs = " ".join(f"{i}~{j}:{table[name][i][j]:+.3f}" for i, j in itertools.combinations(range(len(adapters)), 2))
            print(f"  {name}: {pairs}")
