"""Volume rendering of a :class:`~dreamperp.scene.scene.Scene` (docs/design.md §6): sampling, compositing, shading.

Two samplers feed one compositing/shading routine:

* **dense** (CPU, or ``render.estimator: dense``): ``render.num_samples`` stratified samples per
  ray between the ray's entry and exit of the sphere of radius ``scene.bound`` (one uniform jitter
  per interval when training, interval midpoints otherwise), weights from nerfacc's batched
  ``render_weight_from_density``.
* **occgrid** (CUDA): ``nerfacc.OccGridEstimator`` marching with empty-space skipping inside the
  same sphere, step ``render.render_step_size``, weights from nerfacc's packed
  ``render_weight_from_density``; the grid is refreshed by :meth:`Scene.update_occupancy`.

Weights are ``w_i = T_i·(1 − exp(−σ_i·δ_i))``. On the dense path albedo and normals are only
evaluated at the samples that matter: per ray, the lowest-weight samples whose weights sum to at
most ``render.skip_weight`` are left out of the colour/normal sums (they still count in opacity and
depth), which bounds the colour error per pixel by ``skip_weight`` and cuts the CPU cost severalfold
(finite-difference normals cost six density evaluations per sample). The occgrid path evaluates
every sample nerfacc keeps; nerfacc drops the marched samples whose opacity ``1 − exp(−σ·δ)`` is
below ``render.alpha_thre`` (default 0.01, i.e. σ < ≈2 at the default step 0.005, the same cut
``render.occ_threshold`` makes per grid cell), which removes the near-transparent samples that
would each cost an albedo and six density evaluations, at the price of a small downward bias in
opacity where a ray crosses only thin haze (each dropped sample has opacity < alpha_thre); nerfacc
caps the threshold at the grid's mean occupancy value (nothing is dropped before the first update). Per ray:
``rgb = Σ w_i·c_i + (1 − opacity)·background``, ``opacity = Σ w_i``,
``depth = Σ w_i·t_i / max(opacity, 1e-6)``, ``normal = normalize(Σ w_i·n_i)`` (zero where empty).
Shading of a sample with albedo a, unit normal n and direction l to the point light:
``albedo``: a; ``lambertian``: a·(k + (1−k)·max(n·l, 0)); ``textureless``: the same with a = 1,
where k = ``render.ambient_ratio``.
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from dreamperp.scene.objectives import distortion, regularisers
from dreamperp.scene.scene import Scene

SHADING_MODES = ("albedo", "lambertian", "textureless")


# -------------------------------------------------------------------------------------- rendering
def _per_ray(value: Optional[Tensor], lead: torch.Size, device: torch.device) -> Optional[Tensor]:
    """A colour/position given as [3], [B, 3] (one per view, B = lead[0]) or [*lead, 3] → [*lead, 3]."""
    if value is None:
        return None
    value = torch.as_tensor(value, dtype=torch.float32, device=device)
    if value.dim() == 2 and len(lead) > 1 and value.shape[0] == lead[0]:
        value = value.view(value.shape[0], *([1] * (len(lead) - 1)), 3)
    return value.expand(*lead, 3)


def ray_sphere(rays_o: Tensor, rays_d: Tensor, radius: float) -> tuple[Tensor, Tensor, Tensor]:
    """Entry/exit distances ``near, far [R]`` (near ≥ 0) of unit rays with the sphere, and ``hit [R]``."""
    b = (rays_o * rays_d).sum(-1)
    c = (rays_o * rays_o).sum(-1) - radius * radius
    disc = b * b - c
    sq = disc.clamp_min(0).sqrt()
    near = (-b - sq).clamp_min(0)
    far = -b + sq
    hit = (disc > 0) & (far > near)
    return torch.where(hit, near, 0.0), torch.where(hit, far, 0.0), hit


def render_rays(
    scene: Scene,
    rays_o: Tensor,
    rays_d: Tensor,
    *,
    shading: str = "albedo",
    light_pos: Optional[Tensor] = None,
    bg_color: Optional[Tensor] = None,
    train: bool = True,
    need_normals: bool = True,
    need_distortion: bool = False,
) -> Dict[str, Tensor]:
    """Render rays ``rays_o, rays_d [..., 3]`` (unit directions).

    ``light_pos``: point light ``[3]``, ``[B, 3]`` (one per view of ``[B, H, W, 3]`` rays) or per ray;
    default: at the ray origin (a head light). ``bg_color``: same shapes; default: the scene's
    background. ``train``: jittered samples and random backgrounds. ``need_normals=False`` skips
    the normal evaluation (``normal`` and ``orient_map`` are then zero); shading other than
    ``albedo`` needs normals. ``need_distortion`` adds ``distortion_map`` (only training with
    ``loss.lambda_distortion > 0`` uses it).

    Returns renders only: ``rgb [..., 3]``, ``opacity [..., 1]``, ``depth [..., 1]``,
    ``normal [..., 3]`` and ``orient_map [..., 1]`` (per ray Σ stopgrad(w_i)·max(0, n_i·d)², how
    much the visible normals face away from the camera) and, when asked, ``distortion_map [..., 1]``
    (the ray's distortion loss, :func:`dreamperp.scene.objectives.distortion`); the objectives built on them live in
    :mod:`dreamperp.scene.objectives`.
    """
    if shading not in SHADING_MODES:
        raise ValueError(f"shading must be one of {SHADING_MODES}, got {shading!r}")
    cfg = scene.render_cfg
    lead = rays_o.shape[:-1]
    device = rays_o.device
    if shading != "albedo":
        need_normals = True
    light = _per_ray(light_pos, lead, device)
    if light is None and shading != "albedo":
        light = rays_o
    bg = _per_ray(bg_color, lead, device)
    if bg is None:
        bg = scene.background(rays_d, train=train)

    o = rays_o.reshape(-1, 3).float().contiguous()
    d = rays_d.reshape(-1, 3).float().contiguous()
    n_rays = o.shape[0]
    near, far, hit = ray_sphere(o, d, scene.bound)

    if scene.estimator is not None:
        samples = _occgrid_samples(scene, o, d, near, far, train, need_distortion)
    else:
        samples = _dense_samples(scene, o, d, near, far, hit, train, need_distortion)
    out = _shade_and_composite(
        scene,
        samples,
        d,
        n_rays,
        shading=shading,
        light=None if light is None else light.reshape(-1, 3).float(),
        need_normals=need_normals,
        ambient=cfg.ambient_ratio,
    )
    opacity = out["opacity"]
    rgb = out["rgb"] + (1.0 - opacity) * bg.reshape(-1, 3).to(opacity.dtype)
    renders = {
        "rgb": rgb.view(*lead, 3),
        "opacity": opacity.view(*lead, 1),
        "depth": out["depth"].view(*lead, 1),
        "normal": out["normal"].view(*lead, 3),
        "orient_map": out["orient"].view(*lead, 1),
    }
    if samples["distortion"] is not None:
        renders["distortion_map"] = samples["distortion"].view(*lead, 1)
    return renders


def render(scene: Scene, rays_o: Tensor, rays_d: Tensor, **kwargs) -> Dict[str, Tensor]:
    """:func:`render_rays` plus the scalar regularisers of :func:`dreamperp.scene.objectives.regularisers`
    under their short names (``orient``, ``sparsity``, ``opacity_entropy``, ``distortion``): one call for callers
    that want a render and its regulariser values together (tests, tools). Training weights the
    ``loss_*`` dict of the objectives by name instead."""
    out = render_rays(scene, rays_o, rays_d, **kwargs)
    out.update({name[len("loss_") :]: value for name, value in regularisers(out).items()})
    return out


def _dense_samples(scene: Scene, o: Tensor, d: Tensor, near: Tensor, far: Tensor, hit: Tensor, train: bool, need_distortion: bool) -> dict:
    """Stratified samples on the rays that hit the sphere; weights from nerfacc's batched compositing;
    (``need_distortion``) the per-ray distortion ``[R]``, else None."""
    from nerfacc import render_weight_from_density

    s = scene.render_cfg.num_samples
    rays = hit.nonzero().squeeze(1)  # only rays that enter the sphere are marched
    o, d, near, far = o[rays], d[rays], near[rays], far[rays]
    r = rays.shape[0]
    steps = torch.linspace(0.0, 1.0, s + 1, device=o.device)
    edges = near[:, None] + (far - near)[:, None] * steps  # [r, s+1]
    t0, t1 = edges[:, :-1], edges[:, 1:]
    jitter = torch.rand(r, s, device=o.device) if train else torch.full((r, s), 0.5, device=o.device)
    t = t0 + (t1 - t0) * jitter
    x = (o[:, None, :] + d[:, None, :] * t[..., None]).reshape(-1, 3)
    sigma, h = scene.field.get_density(x)
    sigma = sigma.view(r, s)
    weights, _, _ = render_weight_from_density(t0, t1, sigma)
    dist = None
    if need_distortion:
        dist = torch.zeros(hit.shape[0], dtype=weights.dtype, device=o.device).index_copy(0, rays, distortion(weights, t0, t1))
    # Keep a sample unless it is among the lowest-weight ones of its ray summing to <= skip_weight.
    low_first, order = weights.detach().sort(-1)
    keep = torch.zeros_like(weights, dtype=torch.bool).scatter_(
        -1, order, low_first.cumsum(-1) > scene.render_cfg.skip_weight
    )
    return {
        "x": x,
        "h": h,
        "t": t.reshape(-1),
        "weights": weights.reshape(-1),
        "ray": rays.repeat_interleave(s),
        "keep": keep.reshape(-1),
        "distortion": dist,
    }


def _occgrid_samples(scene: Scene, o: Tensor, d: Tensor, near: Tensor, far: Tensor, train: bool, need_distortion: bool) -> dict:
    """nerfacc OccGridEstimator marching inside the sphere; weights from packed compositing (CUDA);
    (``need_distortion``) the per-ray distortion ``[R]``, else None."""
    from nerfacc import render_weight_from_density

    cfg = scene.render_cfg
    field = scene.field

    def sigma_fn(t_starts: Tensor, t_ends: Tensor, ray_indices: Tensor) -> Tensor:
        x = o[ray_indices] + d[ray_indices] * ((t_starts + t_ends) * 0.5)[:, None]
        return field.density(x)

    assert scene.estimator is not None
    ray_idx, t0, t1 = scene.estimator.sampling(
        o,
        d,
        sigma_fn=sigma_fn,
        t_min=near,
        t_max=far,
        render_step_size=cfg.render_step_size,
        stratified=train,
        alpha_thre=cfg.alpha_thre,  # nerfacc evaluates sigma_fn anyway (early stopping): the cut is free
        early_stop_eps=1e-4,
    )
    ray_idx = ray_idx.long()
    t = (t0 + t1) * 0.5
    x = o[ray_idx] + d[ray_idx] * t[:, None]
    sigma, h = field.get_density(x)
    weights, _, _ = render_weight_from_density(t0, t1, sigma, ray_indices=ray_idx, n_rays=o.shape[0])
    dist = distortion(weights, t0, t1, ray_idx, o.shape[0]) if need_distortion else None
    return {"x": x, "h": h, "t": t, "weights": weights, "ray": ray_idx, "keep": None, "distortion": dist}


def _shade_and_composite(
    scene: Scene,
    s: dict,
    d: Tensor,
    n_rays: int,
    *,
    shading: str,
    light: Optional[Tensor],
    need_normals: bool,
    ambient: float,
) -> Dict[str, Tensor]:
    """Per-ray sums over flat samples (x, h, t, weights, ray) → rgb (no background), opacity, depth, normal, orient [R]."""
    field = scene.field
    w, ray = s["weights"], s["ray"]
    dev, dtype = d.device, w.dtype
    zeros1 = torch.zeros(n_rays, dtype=dtype, device=dev)
    opacity = zeros1.index_add(0, ray, w)
    depth = zeros1.index_add(0, ray, w * s["t"]) / opacity.clamp_min(1e-6)

    # Albedo and normals only where the sample is visible enough to matter.
    keep = s["keep"]
    active = keep.nonzero().squeeze(1) if keep is not None else torch.arange(w.shape[0], device=dev)
    wa, ra, xa = w[active], ray[active], s["x"][active]
    albedo = field.get_outputs(xa, s["h"][active])["albedo"]
    normal_sum = torch.zeros(n_rays, 3, dtype=dtype, device=dev)
    orient = zeros1
    if need_normals and active.numel() > 0:
        n = field.get_normals(xa)
        normal_sum = normal_sum.index_add(0, ra, wa[:, None] * n)
        facing_away = (n * d[ra]).sum(-1).clamp_min(0)
        orient = zeros1.index_add(0, ra, wa.detach() * facing_away**2)
        if shading != "albedo":
            assert light is not None
            to_light = F.normalize(light[ra] - xa, dim=-1)
            diffuse = (n * to_light).sum(-1, keepdim=True).clamp_min(0)
            shade = ambient + (1.0 - ambient) * diffuse
            albedo = shade.expand(-1, 3) if shading == "textureless" else albedo * shade
    rgb = torch.zeros(n_rays, 3, dtype=dtype, device=dev).index_add(0, ra, wa[:, None] * albedo)
    return {
        "rgb": rgb,
        "opacity": opacity[:, None],
        "depth": depth[:, None],
        "normal": F.normalize(normal_sum, dim=-1, eps=1e-12),
        "orient": orient,
    }


def render_chunked(
    scene: Scene,
    rays_o: Tensor,
    rays_d: Tensor,
    *,
    chunk: Optional[int] = None,
    light_pos: Optional[Tensor] = None,
    bg_color: Optional[Tensor] = None,
    **kwargs,
) -> Dict[str, Tensor]:
    """:func:`render` for evaluation: no grad, ``train=False``, ``chunk`` rays at a time
    (default ``render.chunk``). Same arguments and outputs; scalars are averaged over all rays."""
    chunk = int(chunk or scene.render_cfg.chunk)
    kwargs.pop("train", None)
    lead = rays_o.shape[:-1]
    n = int(math.prod(lead))
    o = rays_o.reshape(-1, 3)
    d = rays_d.reshape(-1, 3)
    light = _per_ray(light_pos, lead, rays_o.device)
    bg = _per_ray(bg_color, lead, rays_o.device)
    light = None if light is None else light.reshape(-1, 3)
    bg = None if bg is None else bg.reshape(-1, 3)
    pieces: Dict[str, List[Tensor]] = {}
    scalars: Dict[str, Tensor] = {}
    with torch.no_grad():
        for start in range(0, n, chunk):
            end = min(start + chunk, n)
            out = render(
                scene,
                o[start:end],
                d[start:end],
                light_pos=None if light is None else light[start:end],
                bg_color=None if bg is None else bg[start:end],
                train=False,
                **kwargs,
            )
            for key, value in out.items():
                if value.dim() == 0:
                    scalars[key] = scalars.get(key, 0.0) + value * (end - start)
                else:
                    pieces.setdefault(key, []).append(value)
    result = {k: torch.cat(v, 0).view(*lead, v[0].shape[-1]) for k, v in pieces.items()}
    result.update({k: v / max(n, 1) for k, v in scalars.items()})
    return result
