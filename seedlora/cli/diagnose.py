"""`seedlora diagnose`: plot first-epoch position against final per-sample loss (wraps diagnose)."""

from __future__ import annotations

import argparse
import os
import sys

HELP = "plot training imbalance: first-epoch position vs final loss per sample, with correlations"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", metavar="SEED_DIR", help="seed folders written by `seedlora train`")
    parser.add_argument("-o", "--output", default="imbalance.png", help="PNG to write (default imbalance.png)")
    parser.add_argument("--merged", help="merged adapter or fused model folder, scored on the first run's training rows")
    parser.add_argument("--bins", type=int, default=10, help="bins of the mean-loss line (default 10)")
    parser.add_argument("--batch-size", type=int, default=8, help="batch size when scoring --merged (default 8)")
    parser.add_argument("--json", help="also write the correlations to this JSON file")
    parser.add_argument("-q", "--quiet", action="store_true", help="print nothing")


def run(args) -> None:
    import json

    from ..analysis.diagnose import diagnose

    progress = not args.quiet and sys.stderr.isatty() and not os.environ.get("CI")
    result = diagnose(args.runs, args.output, merged=args.merged, bins=args.bins,
                      batch_size=args.batch_size, progress=progress)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=1)
    if args.quiet:
        return
    rows = list(result["runs"].items()) + ([("merged", result["merged"])] if "merged" in result else [])
    for name, stats in rows:
        print(f"{name}: n={stats['n']} pearson={stats['pearson']:+.3f} spearman={stats['spearman']:+.3f} "
              f"mean loss={stats['mean_loss']:.4f}")
    print(f"wrote {result['output']}")
