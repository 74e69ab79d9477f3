"""Errors that the CLI turns into one-line messages instead of tracebacks."""

from __future__ import annotations

import sys


class DreamperpError(Exception):
    """An expected failure with a message for the user. The CLI prints it on one line."""

    exit_code = 1


def first_line(err: BaseException) -> str:
    """The first line of an exception's message (libraries spread theirs over many), or its type name."""
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def is_out_of_memory(err: BaseException) -> bool:
    """Host or device allocation failure (numpy, torch CPU or CUDA)."""
    if isinstance(err, MemoryError):
        return True
    torch = sys.modules.get("torch")  # not imported here: the CLI must start without torch
    if torch is not None and isinstance(err, getattr(torch, "OutOfMemoryError", ())):
        return True
    return isinstance(err, RuntimeError) and ("out of memory" in str(err) or "can't allocate memory" in str(err))


class UsageError(DreamperpError):
    """Bad input from the user: config key, value, file, or argument. Exit code 2."""

    exit_code = 2


class ConfigError(UsageError):
    """A config value is unknown, has the wrong type, is missing, or is out of range."""

    def __init__(self, key: str, message: str):
        self.key = key
        super().__init__(f"config key '{key}': {message}")
