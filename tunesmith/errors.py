"""Typed errors. Each message says what is wrong and what to do next."""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable


class TunesmithError(Exception):
    """Base class for every error tunesmith raises on purpose."""


class ConfigError(TunesmithError):
    """The run configuration is invalid (unknown key, wrong type, bad value)."""


class DataError(TunesmithError):
    """Input data is malformed, empty or inconsistent; the message names file and line."""


class ModelError(TunesmithError):
    """A model cannot be located or loaded (offline hub id, missing weights, unsafe format)."""


class RunError(TunesmithError):
    """A run directory is missing, incomplete or cannot be resumed."""


class GateError(TunesmithError):
    """A quality gate failed; the run must not be promoted."""


CommandHandler = Callable[[argparse.Namespace], int]


def guarded(func: CommandHandler) -> CommandHandler:
    """A subcommand that prints a TunesmithError as ``tunesmith: error: ...`` and returns 2 (also when called
    without ``tunesmith.cli.main``, as the tests do)."""

    @functools.wraps(func)
    def run(args: argparse.Namespace) -> int:
        try:
            return func(args)
        except TunesmithError as err:
            print(f"tunesmith: error: {err}", file=sys.stderr)
            return 2

    return run
