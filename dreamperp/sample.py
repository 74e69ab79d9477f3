"""2D text-to-image sampling with Perp-Neg and SEGA guidance."""

from __future__ import annotations

import argparse

from dreamperp.errors import UsageError


def sample_command(args: argparse.Namespace) -> int:
    raise UsageError("'dreamperp sample' is not implemented yet")
