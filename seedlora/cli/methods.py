"""`seedlora methods`: the registry as a table: name, parameters with defaults, paper."""

from __future__ import annotations

HELP = "list merge methods, their parameters and defaults, and their papers"


def add_arguments(parser) -> None:
    parser.add_argument("-q", "--quiet", action="store_true", help="names only")


def describe(method) -> str:
    params = ", ".join(f"{p.name}={p.default}" for p in method.params) or "-"
    path = "exact low-rank (factors)" if method.low_rank else "dense deltas (SVD for adapter output)"
    lines = [f"{method.name}: {method.summary}", f"    parameters: {params}", f"    computed on: {path}"]
    lines += [f"    --{p.name.replace('_', '-')}: {p.help}" for p in method.params]
    lines.append(f"    paper: {method.paper}")
    return "\n".join(lines)


def run(args) -> None:
    from ..methods import METHODS

    for method in METHODS:
        print(method.name if args.quiet else describe(method) + "\n")
