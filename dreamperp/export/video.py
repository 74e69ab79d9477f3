"""Turntable video."""

from __future__ import annotations

import argparse

from dreamperp.errors import UsageError


def video_command(args: argparse.Namespace) -> int:
    raise UsageError("'dreamperp video' is not implemented yet")
