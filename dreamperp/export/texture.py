"""UV atlas (xatlas) and albedo texture bake without a GPU rasterizer.

Atlas: ``xatlas`` on the decimated mesh, packed for the texture size with a few texels of padding
between charts. Left to itself, xatlas grows a few huge charts on a smooth closed surface and
parameterising them dominates its run time (20–40 s for 50k faces on a 2-core CPU); capping a
chart at 1/128 of the surface area (:data:`CHARTS_PER_SURFACE`) gives ~200 charts in ≈ 3 s with
the same texel utilisation (~60 %). A mesh with many holes (a perforated reconstruction) still gets
thousands of charts; letting charts grow to a higher cost (:data:`CHART_MAX_COST`) keeps the
utilisation and takes 40 % less time. The run time still grows faster than linearly with the face
count (≈ 35 s for 150k), so texturing refuses meshes above :data:`MAX_ATLAS_FACES` instead of
running for minutes: decimate first (``--faces``) or export vertex colours.

Bake, all in PyTorch on the scene's device (the same code runs on CUDA):

1. Rasterize every triangle in UV space at once: each face's texel bounding box is enumerated
   with ``repeat_interleave`` (no per-texel or per-face Python loop) and a texel belongs to the face
   whose triangle holds its centre (barycentric coordinates >= 0). A face too thin to hold any
   texel centre still gets the texels under its corners and centroid, so every face owns texels.
2. The texel's 3D point is the barycentric combination of the face's corners; the albedo is
   queried there in chunks.
3. Charts are padded: ``padding`` rounds of dilation copy the mean of the filled 8-neighbours
   into each empty texel next to a chart, so bilinear filtering and the first mip levels never mix
   in unbaked texels across a seam; texels further from any chart get the mean colour (not black),
   so coarse mip levels show no dark seams either.

Image convention: row 0 is the top of the image and ``v`` points up (OBJ/trimesh), so texel
``(row, col)`` has its centre at ``u = (col + 0.5) / S``, ``v = 1 − (row + 0.5) / S``.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import Tensor

from dreamperp.errors import UsageError
from dreamperp.export.raster import rasterize
from dreamperp.images import to_uint8

MAX_ATLAS_FACES = 200_000
CHARTS_PER_SURFACE = 128  # a chart covers at most this fraction (1/N) of the surface area
ATLAS_PADDING = 4  # texels between charts; the dilation fills as many
CHART_MAX_COST = 8.0  # xatlas' default 2 stops growing charts sooner: on a perforated reconstruction (3,400 charts) 15 s → 9 s


def uv_atlas(vertices: np.ndarray, faces: np.ndarray, size: int, padding: int = ATLAS_PADDING) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """xatlas charts packed for a ``size²`` texture.

    ``vertices [V, 3]``, ``faces [F, 3]`` → ``vmapping [V']`` (the input vertex of each atlas
    vertex; seams split vertices), ``faces [F, 3]`` into the atlas vertices (same face order) and
    ``uv [V', 2]`` in [0, 1]. Raises UsageError above :data:`MAX_ATLAS_FACES` faces.
    """
    if len(faces) > MAX_ATLAS_FACES:
        raise UsageError(
            f"a texture atlas for {len(faces)} faces would take minutes; decimate to at most {MAX_ATLAS_FACES} faces with "
            f"--faces (export.faces), or export vertex colours with --texture off (export.texture=false)"
        )
    import xatlas

    atlas = xatlas.Atlas()
    atlas.add_mesh(np.ascontiguousarray(vertices, dtype=np.float32), np.ascontiguousarray(faces, dtype=np.uint32))
    chart_options = xatlas.ChartOptions()  # otherwise defaults: one chart-growing iteration, the fast setting
    tri = np.asarray(vertices, dtype=np.float64)[np.asarray(faces)]
    area = 0.5 * float(np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1).sum())
    chart_options.max_chart_area = area / CHARTS_PER_SURFACE
    chart_options.max_cost = CHART_MAX_COST
    pack_options = xatlas.PackOptions()
    pack_options.resolution = int(size)  # texels per unit estimated to fill about size × size
    pack_options.padding = int(padding)
    pack_options.bilinear = True  # leave a texel around charts for bilinear filtering
    atlas.generate(chart_options, pack_options)
    if atlas.atlas_count != 1:
        raise RuntimeError(f"xatlas produced {atlas.atlas_count} atlases, expected one")
    vmapping, atlas_faces, uv = atlas[0]
    return vmapping.astype(np.int64), atlas_faces.astype(np.int64), np.clip(uv.astype(np.float64), 0.0, 1.0)


def _texel_coords(uv: Tensor, size: int) -> Tensor:
    """UV ``[..., 2]`` → continuous texel coordinates (x = column, y = row) whose integers are texel centres."""
    return torch.stack([uv[..., 0] * size - 0.5, (1.0 - uv[..., 1]) * size - 0.5], -1)


@torch.no_grad()
def rasterize_uv(uv: Tensor, faces: Tensor, size: int, max_candidates: int = 1 << 22) -> tuple[Tensor, Tensor]:
    """Which face covers each texel centre, and where.

    ``uv [V, 2]`` (float), ``faces [F, 3]`` (long) on one device → ``face_id [S, S]`` (long, −1 where
    no face) and ``bary [S, S, 3]`` (float, barycentric coordinates in that face). The texel centres
    are rasterized by :func:`dreamperp.export.raster.rasterize` (in float64, at one depth, so a texel
    on a shared edge goes to either face); faces that cover no texel centre then claim one.
    """
    device = uv.device
    xy = _texel_coords(uv.double(), size)  # [V, 2]
    raster = rasterize(xy, torch.zeros(len(xy), dtype=torch.float64, device=device), faces, size, size,
                       perspective=False, max_candidates=max_candidates)
    face_id, bary = raster.face.reshape(-1), raster.bary.reshape(-1, 3)
    p = xy[faces]  # [F, 3, 2]
    n_faces = len(faces)

    # Faces that own no texel centre (slivers, sub-texel triangles): claim the free texels under
    # their corners and centroid, with those points' barycentric coordinates (clamped into the face).
    owned = torch.zeros(n_faces, dtype=torch.bool, device=device)
    owned[face_id[face_id >= 0]] = True
    orphans = (~owned).nonzero().squeeze(1)
    if len(orphans):
        corners = torch.eye(3, dtype=torch.float64, device=device)
        points = torch.cat([corners, torch.full((1, 3), 1.0 / 3.0, dtype=torch.float64, device=device)])  # [4, 3] barycentric
        for lam in points:
            at = torch.einsum("k,fkd->fd", lam, p[orphans]).round().long().clamp(0, size - 1)
            texel = at[:, 1] * size + at[:, 0]
            free = face_id[texel] < 0
            face_id[texel[free]] = orphans[free]
            bary[texel[free]] = lam.float()
    return face_id.view(size, size), bary.view(size, size, 3)


def _box3(x: Tensor) -> Tensor:
    """Sum over each 3 × 3 neighbourhood of ``x [C, S, S]`` (zero outside), as two separable shifted adds."""
    size_y, size_x = x.shape[-2:]
    p = torch.nn.functional.pad(x, (1, 1, 1, 1))
    rows = p[..., 0:size_x] + p[..., 1 : size_x + 1] + p[..., 2 : size_x + 2]
    return rows[..., 0:size_y, :] + rows[..., 1 : size_y + 1, :] + rows[..., 2 : size_y + 2, :]


@torch.no_grad()
def dilate(image: Tensor, mask: Tensor, iterations: int) -> tuple[Tensor, Tensor]:
    """Grow the filled region of ``image [S, S, C]`` (``mask [S, S]`` bool) by ``iterations`` texels.

    Each round sets every empty texel with a filled 8-neighbour to the mean of those neighbours.
    Returns the new image and mask.
    """
    m = mask[None].float()  # [1, S, S]
    img = image.permute(2, 0, 1).float() * m  # [C, S, S], zero where empty
    for _ in range(iterations):
        sums = _box3(torch.cat([img, m]))
        grow = (sums[-1:] > 0) & (m == 0)
        if not bool(grow.any()):
            break
        img = torch.where(grow, sums[:-1] / sums[-1:].clamp(min=1), img)
        m = torch.where(grow, torch.ones_like(m), m)
    return img.permute(1, 2, 0), m[0] > 0


@torch.no_grad()
def bake_albedo(
    albedo: Callable[[Tensor], Tensor],
    vertices: np.ndarray,
    faces: np.ndarray,
    uv: np.ndarray,
    size: int,
    device: torch.device | str = "cpu",
    *,
    padding: int = ATLAS_PADDING,
    chunk: int = 1 << 17,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bake ``albedo(points [N, 3]) -> [N, 3]`` in [0, 1] into a ``size²`` texture.

    ``vertices [V, 3]``, ``faces [F, 3]`` and ``uv [V, 2]`` describe the atlas mesh (one UV per
    vertex). Returns ``texture [S, S, 3]`` uint8 (row 0 at the top), ``covered [S, S]`` (texels
    whose centre a face holds, or a sliver face claimed) and ``filled [S, S]`` (covered or reached
    by the chart padding; all other texels hold the mean colour).
    """
    device = torch.device(device)
    v = torch.from_numpy(np.asarray(vertices, dtype=np.float32)).to(device)
    f = torch.from_numpy(np.asarray(faces, dtype=np.int64)).to(device)
    face_id, bary = rasterize_uv(torch.from_numpy(np.asarray(uv, dtype=np.float64)).to(device), f, size)
    covered = face_id >= 0
    fid, lam = face_id[covered], bary[covered]
    points = torch.einsum("nk,nkd->nd", lam, v[f[fid]])
    colours = torch.cat([albedo(c).float() for c in points.split(chunk)], 0) if len(points) else torch.zeros(0, 3, device=device)
    image = torch.zeros(size, size, 3, dtype=torch.float32, device=device)
    image[covered] = torch.nan_to_num(colours.to(device), nan=0.0).clamp(0.0, 1.0)
    image, filled = dilate(image, covered, padding)
    if bool(covered.any()):
        image[~filled] = image[covered].mean(0)
    texture = to_uint8(image)
    return texture, covered.cpu().numpy(), filled.cpu().numpy()

