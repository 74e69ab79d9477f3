"""Render a trained run at given poses."""

from __future__ import annotations

import argparse

from dreamperp.errors import UsageError


def render_command(args: argparse.Namespace) -> int:
    raise UsageError("'dreamperp render' is not implemented yet")
