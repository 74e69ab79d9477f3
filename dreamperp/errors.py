"""Errors that the CLI turns into one-line messages instead of tracebacks."""

from __future__ import annotations


class DreamperpError(Exception):
    """An expected failure with a message for the user. The CLI prints it on one line."""

    exit_code = 1


class UsageError(DreamperpError):
    """Bad input from the user: config key, value, file, or argument. Exit code 2."""

    exit_code = 2


class ConfigError(UsageError):
    """A config value is unknown, has the wrong type, is missing, or is out of range."""

    def __init__(self, key: str, message: str):
        self.key = key
        super().__init__(f"config key '{key}': {message}")
