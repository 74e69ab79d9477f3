"""Text-to-3D and multi-view training loop."""

from __future__ import annotations

import argparse

from dreamperp.errors import UsageError


def train_command(args: argparse.Namespace) -> int:
    raise UsageError("'dreamperp train' is not implemented yet")
