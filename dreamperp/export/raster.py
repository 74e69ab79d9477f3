"""A triangle rasterizer in PyTorch: which face each pixel centre sees, and where (docs/design.md §14).

Used by the export's visibility pass (orthographic views from many directions), its fidelity
check (the run's pinhole cameras) and the texture bake (texel centres in UV space,
:func:`dreamperp.export.texture.rasterize_uv`). No CUDA build and no extra wheel: every face's pixel
bounding box is enumerated at once with ``repeat_interleave``, a pixel belongs to a face when its
centre has barycentric coordinates >= 0, and the nearest candidate of each pixel wins through a ``scatter_reduce(amin)`` depth buffer. Depth is interpolated
linearly in screen space for orthographic views and as ``1/z`` for pinhole views, so the
barycentric coordinates returned are the 3D (perspective-correct) ones.

Screen coordinates: ``x`` = column, ``y`` = row, integers at pixel centres (the convention of
:func:`dreamperp.cameras.camera_rays`: a pixel centre is at ``col + 0.5`` from the image's left edge).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor


@dataclass
class Raster:
    """The result of :func:`rasterize` for an ``H × W`` image.

    ``face [H, W]`` long (−1: no face), ``bary [H, W, 3]`` 3D barycentric coordinates in that face,
    ``depth [H, W]`` the view depth (orthographic: along the view direction; pinhole: camera z), +inf where empty.
    """

    face: Tensor
    bary: Tensor
    depth: Tensor


@torch.no_grad()
def rasterize(
    xy: Tensor,
    z: Tensor,
    faces: Tensor,
    height: int,
    width: int,
    *,
    perspective: bool,
    only: Optional[Tensor] = None,
    max_candidates: int = 1 << 22,
) -> Raster:
    """Rasterize triangles given their vertices' screen positions ``xy [V, 2]`` and depths ``z [V]`` (> 0 for pinhole).

    ``faces [F, 3]`` long; ``only [F]`` bool: rasterize just these (e.g. the front faces of a closed
    mesh, which alone can be nearest). Faces with a vertex behind a pinhole camera (z <= 1e-6) are
    skipped (the export's cameras see the whole scene bound in front of them). Computed in the
    dtype of ``xy``. Returns a :class:`Raster` (face ids index ``faces``).
    """
    device = xy.device
    p = xy[faces]  # [F, 3, 2]
    zf = z.to(xy.dtype)[faces]  # [F, 3]
    lo = p.amin(1).ceil().clamp(0, max(height, width)).long()
    hi = p.amax(1).floor().long()
    hi = torch.stack([hi[:, 0].clamp(max=width - 1), hi[:, 1].clamp(max=height - 1)], -1)
    w, h = (hi - lo + 1).clamp(min=0).unbind(-1)
    e1, e2 = p[:, 1] - p[:, 0], p[:, 2] - p[:, 0]
    area = e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]  # twice the signed screen area
    ok = area.abs() > 1e-12
    if perspective:
        ok &= (zf > 1e-6).all(-1)
    if only is not None:
        ok &= only
    count = torch.where(ok, w * h, torch.zeros_like(w))

    n_pix = height * width
    best = torch.full((n_pix,), float("inf"), dtype=xy.dtype, device=device)
    chunks = []
    ends = count.cumsum(0)
    start, n_faces = 0, len(faces)
    while start < n_faces:  # groups of faces whose boxes hold at most max_candidates pixels together
        base = int(ends[start - 1]) if start else 0
        stop = max(int(torch.searchsorted(ends, torch.tensor(base + max_candidates, device=device), right=True)), start + 1)
        ids = torch.arange(start, stop, device=device)
        start = stop
        cnt = count[ids]
        total = int(cnt.sum())
        if total == 0:
            continue
        f = torch.repeat_interleave(ids, cnt)
        k = torch.arange(total, device=device) - torch.repeat_interleave(cnt.cumsum(0) - cnt, cnt)
        x = lo[f, 0] + k % w[f]
        y = lo[f, 1] + torch.div(k, w[f], rounding_mode="floor")
        q = torch.stack([x, y], -1).to(p.dtype) - p[f, 0]
        l1 = (q[:, 0] * e2[f, 1] - q[:, 1] * e2[f, 0]) / area[f]
        l2 = (e1[f, 0] * q[:, 1] - e1[f, 1] * q[:, 0]) / area[f]
        lam = torch.stack([1.0 - l1 - l2, l1, l2], -1)
        keep = (lam >= -1e-6 if p.dtype == torch.float32 else lam >= -1e-9).all(-1)
        f, lam, pix = f[keep], lam[keep], (y * width + x)[keep]
        if perspective:  # 1/z is linear in screen space
            inv = (lam / zf[f]).sum(-1)
            depth = 1.0 / inv
            lam = lam / zf[f] * depth[:, None]
        else:
            depth = (lam * zf[f]).sum(-1)
        best.scatter_reduce_(0, pix, depth, reduce="amin")
        chunks.append((f, lam, pix, depth))
    face = torch.full((n_pix,), -1, dtype=torch.long, device=device)
    bary = torch.zeros(n_pix, 3, dtype=torch.float32, device=device)
    for f, lam, pix, depth in chunks:
        win = depth <= best[pix]  # ties (a shared edge): either face is right
        face[pix[win]] = f[win]
        bary[pix[win]] = lam[win].float()
    return Raster(face.view(height, width), bary.view(height, width, 3), best.float().view(height, width))


def pinhole_project(vertices: Tensor, c2w: Tensor, focal: float, height: int, width: int) -> tuple[Tensor, Tensor]:
    """World ``vertices [V, 3]`` → screen ``xy [V, 2]`` and camera depth ``z [V]`` (> 0 in front) for
    an OpenGL camera ``c2w [4, 4]`` (looking down −z) with ``focal`` in pixels."""
    c2w = c2w.to(vertices.dtype)
    cam = (vertices - c2w[:3, 3]) @ c2w[:3, :3]  # world → camera: R^T (x − t)
    z = -cam[:, 2]
    zs = z.clamp_min(1e-9)
    x = cam[:, 0] / zs * focal + 0.5 * width - 0.5
    y = -cam[:, 1] / zs * focal + 0.5 * height - 0.5
    return torch.stack([x, y], -1), z


def ortho_basis(direction: Tensor) -> tuple[Tensor, Tensor]:
    """Two unit vectors ``[3]`` completing the unit view ``direction [3]`` to an orthonormal frame."""
    helper = torch.tensor([0.0, 0.0, 1.0], dtype=direction.dtype, device=direction.device)
    if float(direction[2].abs()) > 0.9:
        helper = torch.tensor([1.0, 0.0, 0.0], dtype=direction.dtype, device=direction.device)
    right = torch.linalg.cross(direction, helper)
    right = right / right.norm()
    return right, torch.linalg.cross(right, direction)


def ortho_project(vertices: Tensor, direction: Tensor, half_width: float, size: int) -> tuple[Tensor, Tensor]:
    """Orthographic view along unit ``direction [3]`` (looking from −∞·direction) of the square
    ``[−half_width, half_width]²`` around the origin on ``size²`` pixels → ``xy [V, 2]``, depth ``[V]``."""
    right, up = ortho_basis(direction.to(vertices.dtype))
    scale = size / (2.0 * half_width)
    x = (vertices @ right + half_width) * scale - 0.5
    y = (half_width - vertices @ up) * scale - 0.5
    return torch.stack([x, y], -1), vertices @ direction.to(vertices.dtype)


def fibonacci_directions(n: int, lowest_deg: float = -90.0, offset: float = 0.5) -> Tensor:
    """``n`` unit view directions ``[n, 3]`` (float64) spread evenly (golden-angle spiral) over the
    cameras at elevation >= ``lowest_deg`` (a camera looks along −its position: direction z = −sin e).
    ``offset`` in (0, 1) shifts the spiral (another, interleaved set of views)."""
    i = torch.arange(n, dtype=torch.float64) + offset
    top, bottom = 1.0, math.sin(math.radians(lowest_deg))
    z = top - (top - bottom) * i / n  # sine of the camera elevation
    r = (1.0 - z * z).clamp_min(0).sqrt()
    phi = i * torch.pi * (3.0 - 5.0**0.5)
    return -torch.stack([r * torch.cos(phi), r * torch.sin(phi), z], -1)


@torch.no_grad()
def visible_faces(
    vertices: Tensor, faces: Tensor, bound: float, *, views: int = 32, size: int = 256, lowest_deg: float = -30.0, offset: float = 0.5, tolerance: float = 1.5
) -> Tensor:
    """Which faces a dense orbit sees → ``[F]`` bool.

    ``views`` orthographic views along :func:`fibonacci_directions` (cameras from ``lowest_deg``
    elevation up to straight above), each ``size²`` pixels over the scene box ``[−bound, bound]²``.
    A face is seen by a view when it is turned to it and its centroid lies no more than
    ``tolerance`` pixels (in scene units) behind the depth buffer at the centroid's pixel: faces
    smaller than a pixel own no pixel centre yet are seen, and a face seen at a grazing angle is
    judged by the views that see it less obliquely. Faces must wind outwards.
    """
    v = vertices.float()
    f = faces.long()
    tri = v[f]
    centroid = tri.mean(1)
    normal = torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])  # outward for outward winding
    seen = torch.zeros(len(f), dtype=torch.bool, device=v.device)
    slack = tolerance * 2.0 * bound / size
    for d in fibonacci_directions(views, lowest_deg, offset).to(v):
        front = (normal @ d <= 0).nonzero()[:, 0]  # only faces turned to the view can be nearest on a closed surface
        xy, z = ortho_project(v, d, bound, size)
        buffer = rasterize(xy, z, f[front], size, size, perspective=False).depth
        cxy, cz = ortho_project(centroid[front], d, bound, size)
        col = cxy[:, 0].round().long().clamp(0, size - 1)
        row = cxy[:, 1].round().long().clamp(0, size - 1)
        seen[front[cz <= buffer[row, col] + slack]] = True
    return seen


def face_areas(vertices: Tensor, faces: Tensor) -> Tensor:
    """Area of every face ``[F]`` of ``vertices [V, 3]``, ``faces [F, 3]``."""
    t = vertices.double()[faces.long()]
    return 0.5 * torch.linalg.cross(t[:, 1] - t[:, 0], t[:, 2] - t[:, 0]).norm(dim=-1)
