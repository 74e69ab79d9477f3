"""Cameras: poses from spherical coordinates, random training views, orbits, and per-pixel rays.

Conventions (docs/design.md §2): world right-handed and z-up, object at the origin; the camera
centre for elevation e and azimuth a (degrees) is ``r·(cos e·cos a, cos e·sin a, sin e)``; azimuth 0
is the front view and azimuths are wrapped to (-180, 180]. Camera-to-world matrices use the
OpenGL/Blender camera: x right, y up, looking down −z (as in NeRF-synthetic transforms.json).
Image row 0 is the top of the image; rays go through pixel centres; ``fovy`` is the vertical field
of view.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor

from dreamperp.config import (
    BACK_MIN_AZIMUTH_DEG,
    FRONT_MAX_AZIMUTH_DEG,
    OVERHEAD_THRESHOLD_DEG,
    VIEW_NAMES,
    DataConfig,
)
from dreamperp.plan import azimuth_range_at, front_share_at, front_window

FIXED_VIEW_NAMES = VIEW_NAMES  # column order of validation grids
OVERHEAD_ELEVATION = 75.0  # above Perp-Neg's 60° overhead threshold


@dataclass
class CameraBatch:
    """B pinhole cameras sharing one image size.

    c2w [B, 4, 4] (OpenGL camera, z-up world), fovy_deg [B], azimuth_deg [B] in (-180, 180],
    elevation_deg [B], radius [B] (distance of the camera centre from the origin).
    """

    c2w: Tensor
    fovy_deg: Tensor
    azimuth_deg: Tensor
    elevation_deg: Tensor
    radius: Tensor
    height: int
    width: int

    def __len__(self) -> int:
        return self.c2w.shape[0]

    @property
    def device(self) -> torch.device:
        return self.c2w.device

    @property
    def position(self) -> Tensor:
        """Camera centres ``[B, 3]``."""
        return self.c2w[:, :3, 3]

    @property
    def focal(self) -> Tensor:
        """Focal length in pixels ``[B]`` (square pixels)."""
        return 0.5 * self.height / torch.tan(torch.deg2rad(self.fovy_deg) * 0.5)

    def to(self, device: torch.device | str) -> "CameraBatch":
        return replace(
            self,
            c2w=self.c2w.to(device),
            fovy_deg=self.fovy_deg.to(device),
            azimuth_deg=self.azimuth_deg.to(device),
            elevation_deg=self.elevation_deg.to(device),
            radius=self.radius.to(device),
        )

    def __getitem__(self, index: int | slice | Tensor) -> "CameraBatch":
        """A sub-batch (an int keeps the batch dimension)."""
        if isinstance(index, int):
            index = slice(index, index + 1 if index != -1 else None)
        return replace(
            self,
            c2w=self.c2w[index],
            fovy_deg=self.fovy_deg[index],
            azimuth_deg=self.azimuth_deg[index],
            elevation_deg=self.elevation_deg[index],
            radius=self.radius[index],
        )

    def resized(self, height: int, width: int) -> "CameraBatch":
        """Same poses and vertical fov at another image size."""
        return replace(self, height=int(height), width=int(width))


# ------------------------------------------------------------------------------------------- poses
def wrap_azimuth(azimuth_deg: Tensor) -> Tensor:
    """Wrap degrees to (-180, 180]."""
    return 180.0 - torch.remainder(180.0 - azimuth_deg, 360.0)


def view_index(
    azimuth_deg: Tensor, elevation_deg: Optional[Tensor] = None, overhead_threshold: float = OVERHEAD_THRESHOLD_DEG
) -> Tensor:
    """The view rule, index into ``VIEW_NAMES`` per camera, ``[B]`` long: overhead where elevation >
    ``overhead_threshold``, else by the wrapped |azimuth|: front below 45°, back above 135°, side
    between (both bounds included). Compares in the angles' own float dtype."""
    az = torch.as_tensor(azimuth_deg).reshape(-1)
    az = wrap_azimuth(az if az.is_floating_point() else az.float()).abs()
    idx = torch.where(az < FRONT_MAX_AZIMUTH_DEG, 0, torch.where(az > BACK_MIN_AZIMUTH_DEG, 2, 1)).long()
    if elevation_deg is not None:
        high = torch.as_tensor(elevation_deg, device=az.device).reshape(-1) > overhead_threshold
        idx = torch.where(high, 3, idx)
    return idx


def spherical_to_cartesian(elevation_deg: Tensor, azimuth_deg: Tensor, radius: Tensor) -> Tensor:
    """Camera centres ``r·(cos e·cos a, cos e·sin a, sin e)`` → ``[B, 3]``."""
    e, a = torch.deg2rad(elevation_deg), torch.deg2rad(azimuth_deg)
    return torch.stack([torch.cos(e) * torch.cos(a), torch.cos(e) * torch.sin(a), torch.sin(e)], -1) * radius[..., None]


def pose_from_spherical(elevation_deg: Tensor, azimuth_deg: Tensor, radius: Tensor) -> Tensor:
    """Camera-to-world ``[B, 4, 4]`` of cameras on the sphere looking at the origin, z up.

    The right vector ``(−sin a, cos a, 0)`` comes from the azimuth, so the pose stays defined
    straight overhead (e = ±90°) where a look-at with world up would be degenerate.
    """
    back = spherical_to_cartesian(elevation_deg, azimuth_deg, torch.ones_like(radius))  # camera +z
    a = torch.deg2rad(azimuth_deg)
    right = torch.stack([-torch.sin(a), torch.cos(a), torch.zeros_like(a)], -1)
    return _c2w_from_axes(right, torch.cross(back, right, dim=-1), back, back * radius[..., None])


def _c2w_from_axes(right: Tensor, up: Tensor, back: Tensor, position: Tensor) -> Tensor:
    """Camera-to-world ``[..., 4, 4]`` with columns right, up, back (camera x, y, z) and ``position``, all ``[..., 3]``."""
    c2w = torch.zeros(*back.shape[:-1], 4, 4, dtype=back.dtype, device=back.device)
    c2w[..., :3, 0] = right
    c2w[..., :3, 1] = up
    c2w[..., :3, 2] = back
    c2w[..., :3, 3] = position
    c2w[..., 3, 3] = 1.0
    return c2w


def look_at(eye: Tensor, target: Optional[Tensor] = None, up: Sequence[float] = (0.0, 0.0, 1.0)) -> Tensor:
    """Camera-to-world ``[B, 4, 4]`` for cameras at ``eye [B, 3]`` looking at ``target`` (origin)."""
    target = torch.zeros_like(eye) if target is None else target.expand_as(eye)
    back = torch.nn.functional.normalize(eye - target, dim=-1)
    up_t = torch.tensor(list(up), dtype=eye.dtype, device=eye.device).expand_as(eye)
    right = torch.cross(up_t, back, dim=-1)
    # Looking along the up axis: any right vector perpendicular to it will do.
    fallback = torch.cross(
        torch.tensor([0.0, 1.0, 0.0], dtype=eye.dtype, device=eye.device).expand_as(eye), back, dim=-1
    )
    right = torch.where(right.norm(dim=-1, keepdim=True) < 1e-6, fallback, right)
    right = torch.nn.functional.normalize(right, dim=-1)
    return _c2w_from_axes(right, torch.cross(back, right, dim=-1), back, eye)


def make_cameras(
    elevation_deg: Tensor, azimuth_deg: Tensor, radius: Tensor, fovy_deg: Tensor, height: int, width: int
) -> CameraBatch:
    """Cameras on spheres around the origin looking at it; all angles in degrees, tensors ``[B]``."""
    azimuth_deg = wrap_azimuth(azimuth_deg)
    return CameraBatch(
        c2w=pose_from_spherical(elevation_deg, azimuth_deg, radius),
        fovy_deg=fovy_deg,
        azimuth_deg=azimuth_deg,
        elevation_deg=elevation_deg,
        radius=radius,
        height=int(height),
        width=int(width),
    )


def _full(n: int, value: float, device: torch.device | str | None) -> Tensor:
    return torch.full((n,), float(value), dtype=torch.float32, device=device)


def _uniform(n: int, lo_hi: Sequence[float], generator: Optional[torch.Generator]) -> Tensor:
    lo, hi = float(lo_hi[0]), float(lo_hi[1])
    return lo + (hi - lo) * torch.rand(n, generator=generator)


def _front_share(azimuth: Tensor, data: DataConfig, share: float, generator: Optional[torch.Generator]) -> Tensor:
    """``azimuth [B]`` with each camera, with probability ``share``, redrawn uniformly within
    ``±front_share_deg`` of the front (clipped to ``data.azimuth_range``; unchanged if that misses the front)."""
    n = azimuth.shape[0]
    pick = torch.rand(n, generator=generator) < float(share)
    front = torch.rand(n, generator=generator)
    window = front_window(data, float(data.front_share_deg))
    if window is None:
        return azimuth
    a, b = window
    return torch.where(pick, a + (b - a) * front, azimuth)


def sample_cameras(
    data: DataConfig,
    batch_size: int,
    height: int,
    width: int,
    device: torch.device | str | None = None,
    generator: Optional[torch.Generator] = None,
    step: Optional[int] = None,
    *,
    azimuth_range: Optional[Tuple[float, float]] = None,
    front_share: Optional[float] = None,
) -> CameraBatch:
    """Random training cameras looking at the origin.

    Azimuth is stratified over the batch: camera i draws uniformly from the i-th of ``batch_size``
    equal slices of the azimuth range (``azimuth_range``; default ``data.azimuth_range`` narrowed at
    ``step`` by the front-first schedule, :func:`dreamperp.plan.azimuth_range_at`), so a batch always
    spreads around the object; a ``front_share`` of them (default: the plan's share at ``step``) is
    redrawn in the front sector;
    elevation, radius and vertical fov are uniform in ``data.elevation_range``, ``radius_range``,
    ``fov_range``. Draws happen on the CPU from torch's global RNG (or ``generator``), so runs are
    reproducible across devices.
    """
    lo, hi = azimuth_range if azimuth_range is not None else azimuth_range_at(data, step)
    share = front_share if front_share is not None else front_share_at(data, step)
    strata = (torch.arange(batch_size, dtype=torch.float32) + torch.rand(batch_size, generator=generator)) / batch_size
    azimuth = lo + (hi - lo) * strata
    if share > 0:
        azimuth = _front_share(azimuth, data, share, generator)
    elevation = _uniform(batch_size, data.elevation_range, generator)
    radius = _uniform(batch_size, data.radius_range, generator)
    fovy = _uniform(batch_size, data.fov_range, generator)
    return make_cameras(elevation, azimuth, radius, fovy, height, width).to(device or "cpu")


def orbit_cameras(
    n: int,
    elevation_deg: float,
    radius: float,
    fovy_deg: float,
    height: int,
    width: int,
    device: torch.device | str | None = None,
) -> CameraBatch:
    """``n`` cameras on a turntable: azimuths ``360·i/n`` for i = 0..n-1 (starts at the front, no repeated 0/360)."""
    azimuth = torch.arange(n, dtype=torch.float32) * (360.0 / n)
    return make_cameras(
        _full(n, elevation_deg, None), azimuth, _full(n, radius, None), _full(n, fovy_deg, None), height, width
    ).to(device or "cpu")


def fixed_views(data: DataConfig, height: int, width: int, device: torch.device | str | None = None) -> CameraBatch:
    """The four validation views (``FIXED_VIEW_NAMES``): front (0°), side (90°), back (180°) at
    ``data.eval_elevation``, and overhead (azimuth 0°, elevation 75°), at ``eval_radius`` / ``eval_fov``."""
    azimuth = torch.tensor([0.0, 90.0, 180.0, 0.0])
    e = float(data.eval_elevation)
    elevation = torch.tensor([e, e, e, OVERHEAD_ELEVATION])
    return make_cameras(
        elevation, azimuth, _full(4, data.eval_radius, None), _full(4, data.eval_fov, None), height, width
    ).to(device or "cpu")


def cameras_from_c2w(
    c2w: Tensor,
    height: int,
    width: int,
    *,
    fovx_deg: Optional[float | Tensor] = None,
    fovy_deg: Optional[float | Tensor] = None,
) -> CameraBatch:
    """Cameras from given OpenGL camera-to-world matrices ``[N, 4, 4]`` (e.g. a transforms.json).

    Give exactly one of ``fovx_deg`` (as ``camera_angle_x``, converted with the aspect ratio) or
    ``fovy_deg``. Azimuth, elevation and radius are read off the camera centres.
    """
    if (fovx_deg is None) == (fovy_deg is None):
        raise ValueError("give exactly one of fovx_deg and fovy_deg")
    c2w = c2w.float()
    n = c2w.shape[0]
    if fovy_deg is None:
        fovy = fov_x_to_y(torch.as_tensor(fovx_deg, dtype=torch.float32, device=c2w.device), height, width)
    else:
        fovy = torch.as_tensor(fovy_deg, dtype=torch.float32, device=c2w.device)
    fovy = fovy.expand(n).clone() if fovy.dim() == 0 else fovy
    pos = c2w[:, :3, 3]
    radius = pos.norm(dim=-1)
    elevation = torch.rad2deg(torch.asin((pos[:, 2] / radius.clamp_min(1e-12)).clamp(-1, 1)))
    azimuth = wrap_azimuth(torch.rad2deg(torch.atan2(pos[:, 1], pos[:, 0])))
    return CameraBatch(c2w, fovy, azimuth, elevation, radius, int(height), int(width))


# -------------------------------------------------------------------------------------------- rays
def pixel_directions(cams: CameraBatch, view: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    """Unit world directions ``[..., 3]`` through pixel centres (rows, cols) of views ``view`` (same shapes)."""
    d_cam = _camera_directions(cams, cams.focal[view], rows.float(), cols.float())
    d = (cams.c2w[view, :3, :3] @ d_cam.unsqueeze(-1)).squeeze(-1)
    return torch.nn.functional.normalize(d, dim=-1)


def _camera_directions(cams: CameraBatch, focal: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    """Camera-space directions ``[..., 3]`` (z = −1) through the centres of pixels (rows, cols);
    ``focal``, ``rows`` and ``cols`` broadcast together."""
    x = (cols + 0.5 - cams.width * 0.5) / focal
    y = -(rows + 0.5 - cams.height * 0.5) / focal  # image rows go down, camera y goes up
    x, y = torch.broadcast_tensors(x, y)
    return torch.stack([x, y, -torch.ones_like(x)], -1)


def camera_rays(cams: CameraBatch) -> Tuple[Tensor, Tensor]:
    """Rays through every pixel centre: origins and unit directions, both ``[B, H, W, 3]``."""
    b, h, w = len(cams), cams.height, cams.width
    dev = cams.device
    rows = torch.arange(h, device=dev, dtype=torch.float32).view(1, h, 1)
    cols = torch.arange(w, device=dev, dtype=torch.float32).view(1, 1, w)
    d_cam = _camera_directions(cams, cams.focal.view(b, 1, 1), rows, cols)  # [B, H, W, 3]
    d = torch.einsum("bij,bhwj->bhwi", cams.c2w[:, :3, :3].float(), d_cam)
    rays_d = torch.nn.functional.normalize(d, dim=-1)
    rays_o = cams.c2w[:, None, None, :3, 3].float().expand(b, h, w, 3)
    return rays_o, rays_d


def sample_light_positions(
    cams: CameraBatch, distance_range: Sequence[float], generator: Optional[torch.Generator] = None
) -> Tensor:
    """Random point lights near the cameras ``[B, 3]``.

    Direction: the camera direction plus Gaussian noise of std 0.5 (as threestudio), normalised;
    distance from the origin: camera distance × uniform(``distance_range``).
    """
    b = len(cams)
    noise = torch.randn(b, 3, generator=generator).to(cams.device)
    scale = _uniform(b, distance_range, generator).to(cams.device)
    direction = torch.nn.functional.normalize(
        cams.position / cams.radius[:, None].clamp_min(1e-12) + 0.5 * noise, dim=-1
    )
    return direction * (cams.radius * scale)[:, None]


def fov_x_to_y(fovx_deg: float | Tensor, height: int, width: int) -> float | Tensor:
    """Vertical fov in degrees for a horizontal one (degrees, float or tensor) at this aspect ratio."""
    fovx = torch.as_tensor(fovx_deg, dtype=torch.float64 if not isinstance(fovx_deg, Tensor) else fovx_deg.dtype)
    fovy = torch.rad2deg(2 * torch.atan(torch.tan(torch.deg2rad(fovx) / 2) * height / width))
    return fovy if isinstance(fovx_deg, Tensor) else float(fovy)
