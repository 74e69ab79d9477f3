"""What happens at step N, in one place: the config turned into a per-step plan (docs/design.md §7).

Every schedule of a training run is a pure function of the config and the step index here, and
:func:`plan_step` collects them into one :class:`StepPlan` that the trainer reads at the top of
each step. The consumers take the plan's values (the cameras their azimuth range and front share,
the renderer its size and shading, the objectives their weights, the scene its occupancy refresh);
the guidance gets the step and reads its two schedules (t_max anneal, SEGA phases) from the same
functions, which 2D sampling uses with its denoising step.

Schedules, with ``step`` the 0-based index of the step being taken:

* **front-first cameras** (``data.front_first_steps = [hold, full]``): azimuths within
  ``±front_first_deg`` until ``hold``, the half width growing linearly to 180° at ``full``;
  afterwards ``data.front_share`` of the cameras are redrawn in the front sector;
* **render size**: ``data.width x data.height``, ``upscale_width x upscale_height`` from
  ``data.upscale_step``;
* **shading**: albedo only for ``render.albedo_warmup_steps``, then lit (textureless with
  probability ``textureless_prob``, else lambertian: one draw, made where the renderer needs it);
* **regulariser ramp**: the orientation, sparsity and opacity-entropy weights grow linearly from 0
  over ``loss.ramp_steps``;
* **t_max anneal**: the SDS timestep bound moves linearly from ``t_max`` to ``t_max_final`` over
  ``guidance.t_anneal_steps``;
* **SEGA phases**: a concept is warm from its ``warmup`` and cooled down from its ``cooldown``;
* **occupancy refresh** (occgrid sampler): every ``render.occ_update_every`` steps.

Nothing here draws random numbers, so reading the plan leaves the training RNG stream as it was.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence, Tuple

import torch

from dreamperp.config import Config, DataConfig, LossConfig, RenderConfig


# ------------------------------------------------------------------------------------- cameras
def front_window(data: DataConfig, half: float) -> Optional[Tuple[float, float]]:
    """``[−half, half]`` clipped to ``data.azimuth_range``, or None when that range misses it."""
    a, b = max(float(data.azimuth_range[0]), -half), min(float(data.azimuth_range[1]), half)
    return (a, b) if a <= b else None


def azimuth_range_at(data: DataConfig, step: Optional[int] = None) -> Tuple[float, float]:
    """Training azimuth range ``(lo, hi)`` in degrees at optimisation ``step`` (None: ``data.azimuth_range``).

    With ``data.front_first_steps = [hold, full]`` the range is ``±front_first_deg`` until ``hold``
    and its half width grows linearly to 180° at ``full``, always clipped to ``data.azimuth_range``.
    """
    lo, hi = float(data.azimuth_range[0]), float(data.azimuth_range[1])
    hold, full = (int(v) for v in data.front_first_steps)
    if step is None or full <= 0 or step >= full:
        return lo, hi
    start = float(data.front_first_deg)
    progress = 0.0 if step < hold else (step - hold) / float(full - hold)  # here hold <= step < full
    window = front_window(data, start + (180.0 - start) * progress)
    return window if window is not None else (lo, hi)  # a range that misses the front keeps its own


def front_share_at(data: DataConfig, step: Optional[int] = None) -> float:
    """Share of cameras redrawn in the front sector at ``step``: ``data.front_share`` once the
    front-first steps are over (or for ``step`` None), else 0."""
    if step is None or step >= int(data.front_first_steps[1]):
        return float(data.front_share)
    return 0.0


# ------------------------------------------------------------------------------------ renders
def render_size(data: DataConfig, step: int) -> Tuple[int, int]:
    """(height, width) of training renders at ``step``."""
    if data.upscale_step >= 0 and step >= data.upscale_step:
        return data.upscale_height, data.upscale_width
    return data.height, data.width


def albedo_only(render: RenderConfig, step: int) -> bool:
    """Whether ``step`` is in the albedo warm-up (no lighting)."""
    return step < render.albedo_warmup_steps


def choose_shading(step: int, render_cfg: RenderConfig) -> str:
    """Training shading for ``step``: albedo during warm-up, then textureless with probability
    ``textureless_prob``, else lambertian (one draw from torch's RNG after warm-up)."""
    if albedo_only(render_cfg, step):
        return "albedo"
    return "textureless" if float(torch.rand(())) < render_cfg.textureless_prob else "lambertian"


def occupancy_refresh(render: RenderConfig, step: int) -> bool:
    """Whether the occupancy grid (occgrid sampler) is refreshed after ``step``."""
    return step % render.occ_update_every == 0


# ----------------------------------------------------------------------------------- objectives
def regulariser_scale(loss: LossConfig, step: int) -> float:
    """Factor in [0, 1] on the regulariser weights: a linear ramp over ``loss.ramp_steps``."""
    ramp = loss.ramp_steps
    return 1.0 if ramp <= 0 else min(1.0, step / ramp)


def loss_weights(loss: LossConfig, step: int) -> dict:
    """``{x: lambda_x}`` at ``step`` for every objective term, the regularisers ramped."""
    reg = regulariser_scale(loss, step)
    return {
        "sds": loss.lambda_sds,
        "rgb": loss.lambda_rgb,
        "alpha": loss.lambda_alpha,
        "orient": loss.lambda_orient * reg,
        "sparsity": loss.lambda_sparsity * reg,
        "opacity_entropy": loss.lambda_opacity_entropy * reg,
        "distortion": loss.lambda_distortion * reg,
    }


# ------------------------------------------------------------------------------------- guidance
def annealed(start: float, end: Optional[float], steps: int, step: int) -> float:
    """``start`` moved linearly to ``end`` over ``steps`` steps (``steps`` 0 or ``end`` None: ``start``)."""
    if steps > 0 and end is not None:
        progress = min(max(step, 0) / float(steps), 1.0)
        return start + (end - start) * progress
    return float(start)


def sega_phases(concepts: Sequence[Any], step: int) -> Tuple[Tuple[bool, ...], Tuple[bool, ...]]:
    """``(warm, cooled)`` per SEGA concept at ``step`` (an optimisation step in SDS, a denoising
    step in 2D): warm from ``warmup`` on, cooled down from ``cooldown`` on (None: never)."""
    warm = tuple(step >= c.warmup for c in concepts)
    cooled = tuple(c.cooldown is not None and step >= c.cooldown for c in concepts)
    return warm, cooled


# ------------------------------------------------------------------------------------- the plan
@dataclass(frozen=True)
class StepPlan:
    """Everything the config decides about one training step (see the module docstring)."""

    step: int
    height: int
    width: int
    azimuth_range: Tuple[float, float]
    front_share: float
    albedo_only: bool
    weights: dict
    need_normals: bool
    t_max: float
    sega_warm: Tuple[bool, ...]
    sega_cooled: Tuple[bool, ...]
    refresh_occupancy: bool


def plan_step(cfg: Config, step: int) -> StepPlan:
    """The :class:`StepPlan` of ``step`` for a run with config ``cfg``."""
    height, width = render_size(cfg.data, step)
    weights = loss_weights(cfg.loss, step)
    g = cfg.guidance
    warm, cooled = sega_phases(g.sega.concepts, step)
    return StepPlan(
        step=step,
        height=height,
        width=width,
        azimuth_range=azimuth_range_at(cfg.data, step),
        front_share=front_share_at(cfg.data, step),
        albedo_only=albedo_only(cfg.render, step),
        weights=weights,
        need_normals=weights["orient"] > 0,  # lit shading adds them in the renderer
        t_max=annealed(g.t_max, g.t_max_final, g.t_anneal_steps, step),
        sega_warm=warm,
        sega_cooled=cooled,
        refresh_occupancy=occupancy_refresh(cfg.render, step),
    )
