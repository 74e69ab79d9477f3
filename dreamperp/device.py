"""Devices and RNG isolation, shared by every layer."""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch

from dreamperp.errors import UsageError


def resolve_device(name: str | torch.device | None) -> torch.device:
    """``"auto"`` → CUDA when available else CPU; ``"cuda"`` without a GPU → UsageError."""
    if isinstance(name, torch.device):
        return name
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if str(name).startswith("cuda") and not torch.cuda.is_available():
        raise UsageError("device=cuda but no CUDA device is available; use device=auto or device=cpu")
    return torch.device(name)


@contextlib.contextmanager
def no_rng_side_effects(device: torch.device) -> Iterator[None]:
    """Run a block (validation, export) without drawing from the training RNG streams of ``device``."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        yield
