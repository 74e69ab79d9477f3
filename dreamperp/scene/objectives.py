"""Objectives computed from renders (docs/design.md §7): each returns ``{"loss_x": scalar}``.

The trainer weights every ``loss_x`` by ``loss.lambda_x`` (:func:`weighted_sum`), as threestudio's
systems do; the renderer only renders. The SDS objective is the guidance's
(:meth:`dreamperp.guidance.score.GuidedScore.__call__`), also a ``{"loss_sds": ...}`` dict.

Regularisers over R rays of a render:

* ``loss_orient``: mean over rays of the renderer's ``orient_map`` Σ stopgrad(w_i)·max(0, n_i·d)²;
* ``loss_sparsity``: mean opacity;
* ``loss_opacity_entropy``: mean binary entropy of the opacity, clamped to [1e-5, 1 − 1e-5].

Photometric (multiview): ``loss_rgb`` the MSE of rgb against targets already composited on the
same background, ``loss_alpha`` the MSE of opacity against the images' alpha.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping

import torch
from torch import Tensor


def regularisers(out: Mapping[str, Tensor]) -> Dict[str, Tensor]:
    """``loss_orient``, ``loss_sparsity``, ``loss_opacity_entropy`` (scalars) of a render's
    ``opacity [..., 1]`` and ``orient_map [..., 1]``; zero-sized renders give 0, not NaN."""
    opacity = out["opacity"].reshape(-1, 1)
    n_rays = opacity.shape[0]
    losses = {
        "loss_orient": out["orient_map"].reshape(-1).sum() / max(n_rays, 1),
        "loss_sparsity": opacity.mean() if n_rays else opacity.sum(),
    }
    o_c = opacity.clamp(1e-5, 1 - 1e-5)
    entropy = -(o_c * torch.log(o_c) + (1 - o_c) * torch.log(1 - o_c))
    losses["loss_opacity_entropy"] = entropy.mean() if n_rays else entropy.sum()
    return losses


def photometric(out: Mapping[str, Tensor], rgb: Tensor, alpha: Tensor) -> Dict[str, Tensor]:
    """``loss_rgb`` (MSE of ``out["rgb"]`` against ``rgb``) and ``loss_alpha`` (MSE of the opacity
    against ``alpha``), shapes as the render's."""
    return {"loss_rgb": torch.mean((out["rgb"] - rgb) ** 2), "loss_alpha": torch.mean((out["opacity"] - alpha) ** 2)}


def weighted_sum(losses: Mapping[str, Tensor], weights: Mapping[str, float], *, skip_zero: bool = False) -> Any:
    """``Σ weights[x] · losses["loss_x"]`` in the order of ``losses`` (a Python 0.0 for no term).

    ``weights`` maps the short name ``x`` to its weight (``loss.lambda_x``, times any schedule
    factor); a loss without a weight is logged but not optimised. ``skip_zero`` leaves out terms
    whose weight is 0 (regularisers that are off cost nothing and cannot spread a NaN)."""
    total: Any = 0.0
    for name, value in losses.items():
        weight = weights.get(name[len("loss_") :] if name.startswith("loss_") else name)
        if weight is None or (skip_zero and weight == 0):
            continue
        total = total + weight * value
    return total
