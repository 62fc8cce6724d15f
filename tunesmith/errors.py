"""Typed errors. Each message says what is wrong and what to do next."""

from __future__ import annotations


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
