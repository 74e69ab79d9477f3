"""Helpers shared by mesh export, turntable video and pose rendering: atomic output files,
the evaluation background of a run, loading a run folder, and argument checks."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Iterator, Optional

import torch
from torch import Tensor

from dreamperp.config import Config
from dreamperp.errors import UsageError
from dreamperp.train.run import atomic_write_bytes, fsync_dir

# Colours of data.background for multiview runs; 'random' is a training-time augmentation, and
# evaluation composites on white like the NeRF-synthetic benchmarks.
_DATA_BACKGROUNDS = {"white": (1.0, 1.0, 1.0), "black": (0.0, 0.0, 0.0), "random": (1.0, 1.0, 1.0)}


def make_output_folder(folder: Path) -> None:
    """Create ``folder`` (and parents); UsageError naming it when that is impossible (a file in the way)."""
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"output folder '{folder}' is a file: move or delete it, then run again")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UsageError(f"cannot create the output folder '{folder}': {err.strerror or err} (check the path and its permissions)") from None


@contextlib.contextmanager
def atomic_output(path: Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success fsync it and rename it over ``path``.

    For writers that need a file name (ffmpeg); bytes in memory go through :func:`write_bytes_atomic`.

    A crash or an exception leaves ``path`` untouched (the old file, or none) and removes the
    temporary file, so a reader never sees a half-written mesh, video or image.
    """
    path = Path(path)
    make_output_folder(path.parent)
    # Keep the suffix: writers such as ffmpeg and PIL pick the format from it.
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
    try:
        yield tmp
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    fsync_dir(path.parent)  # make the rename itself durable


def write_bytes_atomic(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temp file + fsync + rename), creating the folder."""
    path = Path(path)
    make_output_folder(path.parent)
    return atomic_write_bytes(path, data)


def eval_background(cfg: Config, device: torch.device | str) -> Optional[Tensor]:
    """Background colour ``[3]`` for evaluation renders, or None for the scene's own background.

    Multiview runs were fitted to images composited on ``data.background``, so their renders use
    that colour ('random' → white); text runs show the learned/solid background of the scene.
    """
    if cfg.data.type == "multiview":
        return torch.tensor(_DATA_BACKGROUNDS[cfg.data.background], dtype=torch.float32, device=device)
    return None


def load_run_for_eval(run_dir: str | Path, checkpoint: Optional[str] = None) -> Any:
    """``train.checkpoint.load_run`` with the scene switched to evaluation mode. Returns a LoadedRun."""
    from dreamperp.train.checkpoint import load_run

    run = load_run(run_dir, checkpoint=checkpoint)
    run.scene.eval()
    return run


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
