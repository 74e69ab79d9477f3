"""Render a trained run's turntable and score it with the toy classifier (docs/design.md §10).

The cameras are the turntable's (:func:`dreamperp.export.video.turntable_cameras`: azimuths
``360·i/n`` from the front, at ``data.eval_radius`` / ``eval_fov``), by default 36 frames at
``data.eval_elevation``. Frames are the albedo render composited on white by opacity (the toy
world's background, whatever the run's own background is, so the score reads the object alone),
rendered at the classifier's input size by default (a volume render is already smooth; twice the
size, area-resized by the classifier like its supersampled training images, costs 4x the rays). The metrics are :mod:`research.toy.janus`'s.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from torch import Tensor

from dreamperp.export.common import scene_device
from dreamperp.export.video import render_views, turntable_cameras
from research.toy.janus import TurntableScore, parse_toy_prompt, score_images

TURNTABLE_FRAMES = 36
CONTACT_AZIMUTHS = (0.0, 45.0, 90.0, 135.0, 180.0, 225.0, 270.0, 315.0)


@torch.no_grad()
def render_frames(scene: Any, cams: Any) -> Tensor:
    """Renders ``[N, 3, H, W]`` in [0, 1] of ``scene`` seen by ``cams`` (a CameraBatch), albedo composited on white."""
    white = torch.ones(3, device=scene_device(scene))
    return torch.stack([out["rgb"].permute(2, 0, 1) for out in render_views(scene, cams, white, need_normals=False)])


def azimuth_cameras(cfg: Any, azimuths_deg: Sequence[float], size: int, elevation: Optional[float] = None, device: Any = "cpu") -> Any:
    """Cameras at the given azimuths, ``elevation`` (default ``data.eval_elevation``), the evaluation radius and fov, ``size``² pixels."""
    from dreamperp.cameras import make_cameras

    n = len(azimuths_deg)
    elev = float(cfg.data.eval_elevation if elevation is None else elevation)
    return make_cameras(
        torch.full((n,), elev), torch.tensor([float(a) for a in azimuths_deg]), torch.full((n,), float(cfg.data.eval_radius)),
        torch.full((n,), float(cfg.data.eval_fov)), size, size,
    ).to(device)


@torch.no_grad()
def turntable_frames(scene: Any, cfg: Any, frames: int = TURNTABLE_FRAMES, size: int = 64, elevation: Optional[float] = None) -> tuple[Tensor, Tensor]:
    """``(images [N, 3, size, size], azimuths [N] wrapped degrees)`` from the run's turntable cameras (see the module docstring)."""
    cams = turntable_cameras(cfg, frames, float(cfg.data.eval_elevation if elevation is None else elevation), size, scene_device(scene))
    return render_frames(scene, cams), cams.azimuth_deg.cpu()


@dataclass
class RunScore:
    """A run's turntable score, its frames and the classifier's probabilities per head."""

    score: TurntableScore
    images: Tensor  # [N, 3, S, S]
    azimuths: Tensor  # [N] degrees
    probs: dict[str, Tensor]


def score_scene(
    scene: Any, cfg: Any, classifier: Any, prompt: Optional[str] = None, frames: int = TURNTABLE_FRAMES, size: Optional[int] = None
) -> RunScore:
    """Render ``frames`` turntable views of ``scene`` and score them against the prompt's family and colour
    (``prompt`` default: the run's ``cfg.prompt``; it must be a toy prompt such as "a red bird")."""
    family, colour = parse_toy_prompt(cfg.prompt if prompt is None else prompt)
    size = int(size or classifier.size)
    images, az = turntable_frames(scene, cfg, frames, size)
    score, probs = score_images(classifier, images, az, family, colour, float(cfg.data.eval_elevation))
    return RunScore(score, images, az, probs)


def score_run(run_dir: str | Path, classifier: Any, prompt: Optional[str] = None, frames: int = TURNTABLE_FRAMES, size: Optional[int] = None) -> RunScore:
    """Load a run folder (newest checkpoint, on the CPU) and score its turntable; see :func:`score_scene`."""
    from dreamperp.runs.checkpoint import load_run

    run = load_run(run_dir, device="cpu")
    return score_scene(run.scene, run.cfg, classifier, prompt, frames, size)
