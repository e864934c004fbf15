"""Method parameters as command-line flags, generated from the registry's Param definitions.

Every parameter of every registered method becomes one flag, named as the parameter with
dashes (`--density`, `--t`, `--epsilon`, `--lambda`, `--majority-sign`, …, mergekit's names
where mergekit has the method); on/off parameters become `--name` / `--no-name`. A generic
`--param NAME=VALUE` (repeatable) reaches any parameter too. Values stay strings here: the
method's Param.validate converts and range-checks them, so a bad value is the same one-line
MethodError whichever way it was given, and a flag the chosen method lacks is refused there.
Pure functions: the CLI calls add_param_arguments(parser) and given_params(args).
"""

from __future__ import annotations

import argparse
from typing import Iterable

from ..errors import MethodError
from .base import MergeMethod, Param

DEST_PREFIX = "method_param_"


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def collect_params(methods: Iterable[MergeMethod]) -> dict:
    """name -> (Param of the first method that has it, [method names]), in registry order."""
    found: dict = {}
    for method in methods:
        for param in method.params:
            found.setdefault(param.name, (param, []))[1].append(method.name)
    return found


def add_param_arguments(parser: argparse.ArgumentParser, methods: Iterable[MergeMethod]) -> None:
    """One flag per parameter name (skipping names the parser already uses), plus --param."""
    group = parser.add_argument_group("method parameters (see `seedlora methods`; a flag the method lacks is an error)")
    for name, (param, owners) in collect_params(methods).items():
        options = dict(dest=DEST_PREFIX + name, help=f"{', '.join(owners)}: {param.help}")
        if param.is_flag:
            options.update(action=argparse.BooleanOptionalAction, default=None)
        else:
            options.update(metavar=_metavar(param))
        try:
            group.add_argument(flag_name(name), **options)
        except argparse.ArgumentError:
            continue  # the command already uses this flag: the parameter stays reachable by --param
    group.add_argument("--param", dest=DEST_PREFIX + "_generic", action="append", default=[], metavar="NAME=VALUE",
                       help="any method parameter by name, e.g. --param epsilon=0.1 (repeatable)")


def _metavar(param: Param) -> str:
    if param.choices:
        return "{" + ",".join(map(str, param.choices)) + "}"
    return param.kind.__name__.upper()


def given_params(args: argparse.Namespace) -> dict:
    """Only the parameters the user actually gave, flags and --param merged; conflicts refused."""
    given = {}
    for key, value in vars(args).items():
        if key.startswith(DEST_PREFIX) and key != DEST_PREFIX + "_generic" and value is not None:
            given[key[len(DEST_PREFIX):]] = int(value) if isinstance(value, bool) else value
    for item in getattr(args, DEST_PREFIX + "_generic", None) or []:
        name, sep, value = item.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or not name:
            raise MethodError(f"--param needs NAME=VALUE, got {item!r}; e.g. --param density=0.3")
        if name in given and str(given[name]) != value.strip():
            raise MethodError(f"parameter '{name}' given twice with different values ({given[name]!r} and {value.strip()!r})")
        given[name] = value.strip()
    return given


def param_text(param: Param) -> str:
    """How `seedlora methods` shows a parameter: flags as flags, others as --name VALUE."""
    if param.is_flag:
        return f"{flag_name(param.name)} ({param.default_text()})"
    return f"{flag_name(param.name)} {param.default_text()}"
