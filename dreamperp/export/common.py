"""Small helpers shared by mesh export, turntable video and pose rendering."""

from __future__ import annotations

from typing import Any

import torch

from dreamperp.errors import UsageError


def scene_device(scene: Any) -> torch.device:
    """Device of a scene's parameters (CPU for a parameterless stand-in)."""
    device = getattr(scene, "device", None)
    if isinstance(device, torch.device):
        return device
    try:
        return next(scene.parameters()).device
    except (StopIteration, AttributeError):
        return torch.device("cpu")


def positive_int(value: Any, flag: str, minimum: int = 1) -> int:
    """``value`` as an int >= ``minimum``, else a UsageError naming ``flag``."""
    if value is None or int(value) < minimum:
        raise UsageError(f"{flag} must be an integer >= {minimum}, got {value}")
    return int(value)
