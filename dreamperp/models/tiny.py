"""Tiny randomly initialised offline Stable Diffusion pipeline."""

from __future__ import annotations

import argparse

from dreamperp.errors import UsageError


def tiny_model_command(args: argparse.Namespace) -> int:
    raise UsageError("'dreamperp tiny-model' is not implemented yet")
