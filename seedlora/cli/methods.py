"""`seedlora methods`: the registry as the README's methods table: what each method computes,
exact on factors or dense, default weights, parameters with defaults, mergekit parity, paper."""

from __future__ import annotations

HELP = "list merge methods: what they compute, exactness, default weights, parameters, mergekit parity, paper"

COLUMNS = ("method", "computes (per module)", "exact on factors / dense", "default weights",
           "parameters (defaults)", "same as mergekit? (test)", "paper")


def add_arguments(parser) -> None:
    parser.add_argument("-q", "--quiet", action="store_true", help="names only")
    parser.add_argument("--markdown", action="store_true", help="print the README's methods table")


def row(method) -> tuple:
    """The method's cells, in COLUMNS order."""
    from ..methods.cli_params import param_text

    if not method.uses_weights:
        weights = "none (--t)"
    else:
        weights = {0.25: "1/K", 1.0: "1"}.get(method.default_weight(4), f"{method.default_weight(4)} for K = 4")
    params = ", ".join(param_text(p) for p in method.params) or "none"
    return (method.name, method.summary, method.form, weights, params, method.mergekit, method.paper)


def describe(method) -> str:
    cells = row(method)
    lines = [f"{cells[0]}: {cells[1]}"]
    lines += [f"    {label}: {value}" for label, value in zip(COLUMNS[2:], cells[2:])]
    lines += [f"    --{p.name.replace('_', '-')}: {p.help}" for p in method.params]
    return "\n".join(lines)


def markdown(methods) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for method in methods:
        cells = list(row(method))
        cells[0], cells[-1] = f"`{cells[0]}`", f"<{cells[-1]}>"
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


def run(args) -> None:
    from ..methods import METHODS

    if args.markdown:
        print(markdown(METHODS))
        return
    for method in METHODS:
        print(method.name if args.quiet else describe(method) + "\n")
