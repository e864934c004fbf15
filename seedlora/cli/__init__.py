"""The `seedlora` command: argparse subcommands that wrap plain library functions.

The only place that configures logging, prints errors and exits. Each subcommand is a module
in seedlora/cli/ with HELP, add_arguments(parser) and run(args); they are imported
lazily, so `seedlora methods` does not pay for importing training code.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
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
        command.add_argument("-v", "--verbose", action="count", default=0, help="say more (-vv: debug messages)")
        module.add_arguments(command)
        command.set_defaults(_run=module.run)
    return parser


def _version() -> str:
    from ..sources.identity import package_version

    return package_version("seedlora")


class _Format(logging.Formatter):
    """`warning: ...` / `debug: ...` like the CLI's `error: ...`; plain text for info."""

    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage()
        return text if record.levelno == logging.INFO else f"{record.levelname.lower()}: {text}"


def configure_logging(verbose: int = 0, quiet: bool = False) -> None:
    """seedlora's messages to stderr: warnings by default, -v info, -vv debug, -q errors only.

    Only the `seedlora` logger is configured (other libraries keep their own settings); the
    handler is replaced on each call, so calling main() twice does not print twice.
    """
    logger = logging.getLogger("seedlora")
    for handler in [h for h in logger.handlers if getattr(h, "seedlora_cli", False)]:
        logger.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.seedlora_cli = True
    handler.setFormatter(_Format())
    logger.addHandler(handler)
    logger.propagate = False
    level = logging.ERROR if quiet else logging.DEBUG if verbose >= 2 else logging.INFO if verbose == 1 else logging.WARNING
    logger.setLevel(level)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(getattr(args, "verbose", 0), bool(getattr(args, "quiet", False)))
    try:
        args._run(args)
        sys.stdout.flush()
    except SeedLoraError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted; no output was written", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `seedlora ... | head`: the reader left; stop quietly, as coreutils do
        _silence_stdout()
        return 141
    return 0


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush does not raise again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # no real file descriptor (e.g. captured in tests)
        pass


if __name__ == "__main__":
    sys.exit(main())
