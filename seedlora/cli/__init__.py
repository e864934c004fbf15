"""The `seedlora` command: argparse subcommands that wrap plain library functions.

The only place that configures logging, prints errors and exits. Each subcommand is a module
in seedlora/cli/ with HELP, add_arguments(parser) and run(args); they are imported
lazily, so `seedlora methods` does not pay for importing training code.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import Optional, Sequence

from ..errors import SeedLoraError

# (subcommand, module under seedlora.cli): an explicit list, in help order
COMMANDS = (
    ("merge", "merge"),
    ("methods", "methods"),
    ("inspect", "inspect"),
    ("check", "check"),
    ("train", "train"),
    ("diagnose", "diagnose"),
)


def _command_module(module: str):
    return importlib.import_module(f"seedlora.cli.{module}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="seedlora",
        description="Merge LoRA adapters exactly: SeedLoRA, parameter selection, TIES, DARE, linear.",
    )
    parser.add_argument("--version", action="version", version=f"seedlora {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module_name in COMMANDS:
        try:
            module = _command_module(module_name)
        except ModuleNotFoundError as exc:  # a subcommand whose optional deps are missing
            if not exc.name or not exc.name.startswith("seedlora"):
                raise
            continue
        command = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(command)
        command.set_defaults(_run=module.run)
    return parser


def _version() -> str:
    from ..sources.identity import package_version

    return package_version("seedlora")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if getattr(args, "quiet", False) else logging.INFO, format="%(message)s")
    try:
        args._run(args)
    except SeedLoraError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted; no output was written", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
