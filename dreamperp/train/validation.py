"""Renders of a run's fixed views (front, side, back, overhead): the validation grid's and the batch
contact sheet's (docs/design.md §7, §8).

Both come from :func:`render_fixed_views`, the evaluation render of ``cameras.fixed_views`` at
``data.eval_*`` on the run's evaluation background, so a contact sheet shows exactly the rgb row
of the run's validation grid at its newest checkpoint, without reading the grid's PNG layout.
"""

from __future__ import annotations

import os
from typing import Any, Dict, Optional

import numpy as np
import torch

from dreamperp.config import Config
from dreamperp.device import no_rng_side_effects
from dreamperp.errors import UsageError
from dreamperp.images import to_uint8


def render_fixed_views(
    scene: Any, cfg: Config, size: int, device: Any, *, need_normals: bool = True
) -> Dict[str, torch.Tensor]:
    """Evaluation renders ``[4, size, size, C]`` of the four fixed views (``render_chunked``'s
    outputs), with the scene in eval mode and no draw from the training RNG stream."""
    from dreamperp.cameras import camera_rays, fixed_views
    from dreamperp.multiview import eval_background
    from dreamperp.scene import render_chunked

    cams = fixed_views(cfg.data, size, size, device)
    rays_o, rays_d = camera_rays(cams)
    was_training = scene.training
    scene.eval()
    try:
        with no_rng_side_effects(device):
            bg = eval_background(cfg, device)
            return render_chunked(scene, rays_o, rays_d, shading="albedo", bg_color=bg, need_normals=need_normals)
    finally:
        scene.train(was_training)


def run_views(run_dir: str | os.PathLike, size: Optional[int] = None) -> Optional[np.ndarray]:
    """The rgb of a run's four fixed views at its newest checkpoint, uint8 ``[4, S, S, 3]`` with
    ``S = size`` (default ``trainer.val_size``), rendered on the CPU; None for a run without a
    readable checkpoint (not started, failed before its first save)."""
    from dreamperp.runs.checkpoint import load_run

    try:
        loaded = load_run(run_dir, device="cpu")
    except UsageError:
        return None
    s = int(size or loaded.cfg.trainer.val_size)
    out = render_fixed_views(loaded.scene, loaded.cfg, s, torch.device("cpu"), need_normals=False)
    return to_uint8(out["rgb"].clamp(0, 1))
