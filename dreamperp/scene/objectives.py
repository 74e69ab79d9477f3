"""Objectives computed from renders (docs/design.md §7): each returns ``{"loss_x": scalar}``.

The trainer weights every ``loss_x`` by ``loss.lambda_x`` (:func:`weighted_sum`), as threestudio's
systems do; the renderer only renders. The SDS objective is the guidance's
(:meth:`dreamperp.guidance.score.GuidedScore.__call__`), also a ``{"loss_sds": ...}`` dict.

Regularisers over R rays of a render:

* ``loss_orient``: mean over rays of the renderer's ``orient_map`` Σ stopgrad(w_i)·max(0, n_i·d)²;
* ``loss_sparsity``: mean opacity;
* ``loss_opacity_entropy``: mean binary entropy of the opacity, clamped to [1e-5, 1 − 1e-5];
* ``loss_distortion``: mean over rays of the renderer's ``distortion_map``, mip-NeRF 360's
  distortion loss of the ray's weights (:func:`distortion`): small when a ray's weight sits in one
  short interval, so it pulls soft density ramps into a sharp surface.

Photometric (multiview): ``loss_rgb`` the MSE of rgb against targets already composited on the
same background, ``loss_alpha`` the MSE of opacity against the images' alpha.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional

import torch
from torch import Tensor


def distortion(weights: Tensor, t0: Tensor, t1: Tensor, ray_indices: Optional[Tensor] = None, n_rays: Optional[int] = None) -> Tensor:
    """Distortion loss of each ray (Barron et al., mip-NeRF 360, eq. 15) for weights on the intervals
    ``[t0, t1]`` sorted along the ray, with m = (t0 + t1)/2 and δ = t1 − t0:

        L = Σ_i Σ_j w_i·w_j·|m_i − m_j| + ⅓·Σ_i w_i²·δ_i
          = Σ_i 2·w_i·(m_i·Σ_{j<i} w_j − Σ_{j<i} w_j·m_j) + ⅓·Σ_i w_i²·δ_i   (linear in the samples).

    Batched ``[R, S]`` inputs give ``[R]``; flat ``[N]`` inputs, grouped by ray as nerfacc packs
    them, with their ``ray_indices [N]`` and ``n_rays``, give ``[n_rays]`` (0 for rays without
    samples). Distances in scene units."""
    m, delta = (t0 + t1) * 0.5, t1 - t0
    if ray_indices is None:
        def before(x: Tensor) -> Tensor:  # Σ_{j<i} along the last dimension
            return torch.nn.functional.pad(x, (1, 0))[..., :-1].cumsum(-1)
    else:
        if n_rays is None:
            raise ValueError("distortion: packed samples need n_rays")
        n = int(n_rays)
        counts = torch.bincount(ray_indices, minlength=n)
        first = (torch.cumsum(counts, 0) - counts)[ray_indices]  # index of each sample's ray's first sample

        def before(x: Tensor) -> Tensor:  # Σ_{j<i} within the ray: a running sum in float64, less its value at the ray's start
            total = torch.nn.functional.pad(x.double(), (1, 0))[:-1].cumsum(0)
            return (total - total[first]).to(x.dtype)

    per_sample = 2.0 * weights * (m * before(weights) - before(weights * m)) + weights.square() * delta / 3.0
    if ray_indices is None:
        return per_sample.sum(-1)
    return torch.zeros(n, dtype=per_sample.dtype, device=per_sample.device).index_add(0, ray_indices, per_sample)


def regularisers(out: Mapping[str, Tensor]) -> Dict[str, Tensor]:
    """``loss_orient``, ``loss_sparsity``, ``loss_opacity_entropy`` and, for a render made with
    ``need_distortion``, ``loss_distortion`` (scalars) of a render's ``opacity``, ``orient_map`` and
    ``distortion_map`` (each ``[..., 1]``); zero-sized renders give 0, not NaN."""
    opacity = out["opacity"].reshape(-1, 1)
    n_rays = opacity.shape[0]
    losses = {
        "loss_orient": out["orient_map"].reshape(-1).sum() / max(n_rays, 1),
        "loss_sparsity": opacity.mean() if n_rays else opacity.sum(),
    }
    if "distortion_map" in out:
        losses["loss_distortion"] = out["distortion_map"].reshape(-1).sum() / max(n_rays, 1)
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
