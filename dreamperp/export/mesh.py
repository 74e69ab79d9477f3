"""Mesh export: marching cubes over the density, albedo vertex colours."""

from __future__ import annotations

import argparse

from dreamperp.errors import UsageError


def export_command(args: argparse.Namespace) -> int:
    raise UsageError("'dreamperp export' is not implemented yet")
