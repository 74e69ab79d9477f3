"""View conditioning by camera azimuth: view prompts, Perp-Neg weight schedules, nearest view.

Views are indexed in the fixed order (front, side, back, overhead). For a batch of azimuths,
:func:`perpneg_weights` returns ``pos_mix [B, 4]`` (the positive embedding is
``pos_mix @ view_embeddings``) and ``neg_weights [B, 4]`` (the negative of view j has weight
``neg_weights[:, j]``), both computed without a Python loop over the batch (docs/design.md §3).
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence

import torch

from dreamperp.cameras import (  # the azimuth convention and the view rule live with the cameras
    view_index,
    wrap_azimuth,
)
from dreamperp.config import OVERHEAD_THRESHOLD_DEG, PERPNEG_SCHEDULES, THREESTUDIO_DECAYS, VIEW_NAMES
from dreamperp.errors import UsageError

VIEWS = VIEW_NAMES  # row order of the view embeddings [front, side, back, overhead]
FRONT, SIDE, BACK, OVERHEAD = range(4)
SCHEDULES = PERPNEG_SCHEDULES
#: Views that either schedule can give a non-zero negative weight (back and overhead never are).
NEGATIVE_VIEWS = (FRONT, SIDE)
#: Azimuth (degrees) that stands for a named view in 2D sampling.
VIEW_AZIMUTH = {"front": 0.0, "side": 90.0, "back": 180.0}


def view_prompts(prompt: str) -> list[str]:
    """``["{prompt}, front view", ", side view", ", back view", ", overhead view"]`` in view order."""
    return [f"{prompt}, {view} view" for view in VIEWS]


def _decay(abc: Sequence[float], r: torch.Tensor) -> torch.Tensor:
    a, b, c = (float(v) for v in abc)
    return a * torch.exp(-b * r) + c


def perpneg_weights(
    azimuth_deg: torch.Tensor,
    elevation_deg: Optional[torch.Tensor] = None,
    schedule: str = "threestudio",
    *,
    negative_w: float = 2.0,
    front_decay: float = 2.0,
    side_decay: float = 10.0,
    f_sb: Sequence[float] = THREESTUDIO_DECAYS["f_sb"],
    f_fsb: Sequence[float] = THREESTUDIO_DECAYS["f_fsb"],
    f_fs: Sequence[float] = THREESTUDIO_DECAYS["f_fs"],
    f_sf: Sequence[float] = THREESTUDIO_DECAYS["f_sf"],
    overhead_threshold: float = OVERHEAD_THRESHOLD_DEG,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Perp-Neg positive mix and negative weights per sample.

    ``azimuth_deg``: ``[B]`` (any range; 0 is the front); ``elevation_deg``: ``[B]`` or None (only the
    threestudio schedule uses it: above ``overhead_threshold`` the positive is the overhead view and
    there are no negatives). Returns ``(pos_mix [B, 4], neg_weights [B, 4])`` in float32 on the
    azimuth's device; rows of ``pos_mix`` sum to 1 and ``neg_weights >= 0``.
    """
    if schedule not in SCHEDULES:
        raise UsageError(
            f"unknown Perp-Neg schedule {schedule!r}: use 'threestudio' or 'stable-dreamfusion' (guidance.perp_neg.schedule)"
        )
    az = wrap_azimuth(torch.as_tensor(azimuth_deg).float().reshape(-1)).abs()
    B = az.shape[0]
    zeros = torch.zeros_like(az)
    in_front = az < 90.0
    # r: 1 = front .. 0 = side in the front half; 1 = side .. 0 = back in the back half.
    r = torch.where(in_front, 1.0 - az / 90.0, 2.0 - az / 90.0)

    pos_mix = torch.stack(
        [
            torch.where(in_front, r, zeros),
            torch.where(in_front, 1.0 - r, r),
            torch.where(in_front, zeros, 1.0 - r),
            zeros,
        ],
        dim=1,
    )

    if schedule == "threestudio":
        front_w = torch.where(in_front, _decay(f_fs, r), _decay(f_fsb, r))
        side_w = torch.where(in_front, _decay(f_sf, 1.0 - r), _decay(f_sb, r))
    else:  # stable-dreamfusion
        nw = float(negative_w)
        front_front = torch.where(r > 0.8, zeros, torch.exp(-r * float(front_decay)) * nw)
        front_side = torch.where(r < 0.2, zeros, torch.exp(-(1.0 - r) * float(side_decay)) * nw)
        back_side = torch.where(r > 0.8, zeros, torch.exp(-r * float(side_decay)) * nw / 2.0)
        front_w = torch.where(in_front, front_front, torch.full_like(az, nw))
        side_w = torch.where(in_front, front_side, back_side)
    neg_weights = torch.stack([front_w, side_w, zeros, zeros], dim=1).clamp_min(0.0)

    if schedule == "threestudio" and elevation_deg is not None:
        overhead = (
            torch.as_tensor(elevation_deg, device=az.device).float().reshape(-1) > overhead_threshold
        ).unsqueeze(1)
        one_hot = torch.zeros(B, 4, device=az.device)
        one_hot[:, OVERHEAD] = 1.0
        pos_mix = torch.where(overhead, one_hot, pos_mix)
        neg_weights = torch.where(overhead, torch.zeros_like(neg_weights), neg_weights)
    return pos_mix, neg_weights


def perpneg_params(perp_neg: Any) -> Dict[str, Any]:
    """Keyword arguments of :func:`perpneg_weights` from a ``PerpNegConfig`` (schedule included)."""
    return {
        "schedule": perp_neg.schedule,
        "negative_w": perp_neg.negative_w,
        "front_decay": perp_neg.front_decay,
        "side_decay": perp_neg.side_decay,
        "f_sb": tuple(perp_neg.f_sb),
        "f_fsb": tuple(perp_neg.f_fsb),
        "f_fs": tuple(perp_neg.f_fs),
        "f_sf": tuple(perp_neg.f_sf),
        "overhead_threshold": perp_neg.overhead_threshold,
    }


def nearest_view(
    azimuth_deg: torch.Tensor,
    elevation_deg: Optional[torch.Tensor] = None,
    overhead_threshold: float = OVERHEAD_THRESHOLD_DEG,
) -> torch.Tensor:
    """Index of the nearest view per sample, ``[B]`` long, by the cameras' view rule
    (:func:`dreamperp.cameras.view_index`: front for |a| < 45, back for |a| > 135, else side;
    overhead where elevation > ``overhead_threshold``)."""
    az = torch.as_tensor(azimuth_deg).float()
    el = None if elevation_deg is None else torch.as_tensor(elevation_deg, device=az.device).float()
    return view_index(az, el, overhead_threshold)


def nearest_view_mix(
    azimuth_deg: torch.Tensor,
    elevation_deg: Optional[torch.Tensor] = None,
    overhead_threshold: float = OVERHEAD_THRESHOLD_DEG,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain view-dependent prompting as ``(pos_mix [B, 4] one-hot, neg_weights [B, 4] zeros)``."""
    idx = nearest_view(azimuth_deg, elevation_deg, overhead_threshold)
    pos_mix = torch.nn.functional.one_hot(idx, 4).float()
    return pos_mix, torch.zeros_like(pos_mix)


def view_mix(
    perp_neg: Any,
    azimuth_deg: Optional[torch.Tensor],
    elevation_deg: Optional[torch.Tensor] = None,
    *,
    view_dependent: bool = True,
) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """``(pos_mix [B, 4], neg_weights [B, 4])`` for cameras at these angles, on the azimuth's device.

    ``perp_neg``: a ``PerpNegConfig``. Perp-Neg on: its schedule. Off: the nearest view prompt and
    no negatives when ``view_dependent``, else ``(None, None)`` (the plain prompt), as also for no
    azimuth.
    """
    if azimuth_deg is None:
        return None, None
    if perp_neg.enabled:
        return perpneg_weights(azimuth_deg, elevation_deg, **perpneg_params(perp_neg))
    if view_dependent:
        return nearest_view_mix(azimuth_deg, elevation_deg, perp_neg.overhead_threshold)
    return None, None


def named_view_mix(
    view: str, batch: int, perp_neg: Any, elevation_deg: float = 0.0, use_perp_neg: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(pos_mix, neg_weights)`` for a named view (front/side/back/overhead), ``[batch, 4]`` each.

    'overhead' is always the overhead prompt with no negatives (the stable-dreamfusion schedule has
    no overhead rule); the others go through the Perp-Neg schedule at their azimuth, or the plain
    view prompt when ``use_perp_neg`` is False.
    """
    if view not in VIEWS:
        raise UsageError(f"unknown view {view!r}: use front, side, back or overhead")
    if view == "overhead":
        pos_mix = torch.zeros(batch, 4)
        pos_mix[:, OVERHEAD] = 1.0
        return pos_mix, torch.zeros(batch, 4)
    az = torch.full((batch,), VIEW_AZIMUTH[view])
    el = torch.full((batch,), float(elevation_deg))
    if not use_perp_neg:
        return nearest_view_mix(az, el, perp_neg.overhead_threshold)
    return perpneg_weights(az, el, **perpneg_params(perp_neg))
