"""The surface the renders show: the iso-level read from the scene, the density grid, cavities
filled, marching cubes, floaters dropped (docs/design.md §14).

Level (``threshold`` auto). Rays from 64 directions spread over the sphere cross the scene box;
those that the field makes at least a little opaque are marched finely (256 samples across the
bound sphere). On each, the *rendered* surface is where the accumulated opacity
``1 − exp(−∫σ)`` crosses ½ (a ray that never gets half opaque shows background), and the surface
of a level ``L`` is the first sample where ``σ >= L``. The level chosen minimises the mean, over
the rays either surface hits, of the distance between the two crossings, a ray hit by only one of
them costing ``0.3 × bound`` (the cap of every distance). A pure silhouette criterion picks levels far
too low: rays grazing a soft surface get half opaque in its outer haze, and matching them moves
the whole surface outwards (measured in docs/design.md §14). A field no ray of which gets half
opaque is empty. An explicit ``--threshold X`` skips the fit.

Density grid. The density is sampled on a ``resolution³`` grid spanning ``[-bound, bound]³``;
points outside the sphere of radius ``bound`` are zero (the renderer only marches inside it), and
the grid is padded with one empty layer, so the surface is closed. From 128³ on it is evaluated
coarse-to-fine: every 4th point first, then all fine points of the coarse cells that hold the
level or come near it (a corner above half the level, grown by one cell); the other cells are
empty or solid as their corners say — exact for every surface wider than a coarse cell.

Cavities. Every empty region (below the level) that does not reach the outside of the grid is
enclosed by the object: no outside view sees its walls, so it is filled (set above the level)
before marching cubes — first on the coarse lattice, so that the walls of large cavities are never
refined, then on the fine grid. A reconstruction's shell is often perforated (its density dips
below the level in patches), which connects its inside to the outside; so on the fine grid the
solid is also closed over holes up to ``2 × CLOSE_RADIUS`` wide and the empty points inside it
filled (:func:`enclosed`); concave corners are rounded by at most about ``CLOSE_RADIUS``.
This removes the inner shells a reconstruction's interior grows; faces that still no view sees go
in :func:`dreamperp.export.raster.visible_faces`.
Disconnected pieces with less area than ``min_component_ratio`` × the largest are dropped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch

from dreamperp.errors import UsageError
from dreamperp.export.common import scene_device

BAND_MIN_RESOLUTION = 128  # below this the dense grid is cheap enough
BAND_STRIDE = 4
BAND_LOW = 0.5  # a coarse cell with a corner above BAND_LOW × level may hold surface
FIT_DIRECTIONS = 64
FIT_CANDIDATE_RAYS = 16384  # rays cast; those at least FIT_MIN_OPACITY opaque are marched finely
FIT_RAYS = 4096
FIT_SAMPLES = 256
FIT_COARSE_SAMPLES = 32
FIT_MIN_OPACITY = 0.02
FIT_LEVELS = 64
CLOSE_RADIUS = 0.03  # × bound: holes in a shell up to about twice this wide are closed when filling its inside
FIT_MISS_COST = 0.3  # × bound: what a ray hit by only one of the two surfaces costs in the fit


class EmptyFieldError(UsageError):
    """Nothing (or everything) inside the bound is above the threshold, so there is no surface."""


@dataclass
class LevelFit:
    """How the level was read from the scene: the level, the silhouette IoU of its ray hits against
    the half-opacity hits, the median distance of its first crossings to the half-opacity depths
    (scene units), the rays compared and the largest density met on them."""

    level: float
    iou: float
    depth_error: float
    rays: int
    peak: float
    offset: float = 0.0  # median (half-opacity depth − first crossing): how far inside the level surface the renders' surface lies


def _fit_rays(bound: float, device: torch.device, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``FIT_CANDIDATE_RAYS`` parallel-ray bundles from :data:`FIT_DIRECTIONS` directions, offsets
    uniform over the bound's disc → origins, unit directions ``[R, 3]`` (starting outside the bound)."""
    from dreamperp.export.raster import fibonacci_directions, ortho_basis

    gen = torch.Generator().manual_seed(seed)
    per = FIT_CANDIDATE_RAYS // FIT_DIRECTIONS
    origins, dirs = [], []
    for d in fibonacci_directions(FIT_DIRECTIONS).float():
        right, up = ortho_basis(d)
        r = bound * torch.rand(per, generator=gen).sqrt()
        phi = 2 * math.pi * torch.rand(per, generator=gen)
        offset = (r * phi.cos())[:, None] * right + (r * phi.sin())[:, None] * up
        origins.append(offset - 2.0 * bound * d)
        dirs.append(d.expand(per, 3))
    return torch.cat(origins).to(device), torch.cat(dirs).to(device)


@torch.no_grad()
def _march(scene: Any, o: torch.Tensor, d: torch.Tensor, bound: float, samples: int, chunk: int = 1 << 18) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Density at ``samples`` midpoints of equal steps across the bound sphere → ``t [R, S]``,
    ``sigma [R, S]`` (float64 on the CPU) and the step ``delta [R, 1]``."""
    from dreamperp.scene.renderer import ray_sphere

    near, far, _ = ray_sphere(o, d, bound)
    delta = (far - near) / samples
    t = near[:, None] + delta[:, None] * (torch.arange(samples, device=o.device) + 0.5)
    x = (o[:, None, :] + d[:, None, :] * t[..., None]).reshape(-1, 3)
    sigma = torch.cat([scene.density(p).float() for p in x.split(chunk)]).view(t.shape)
    sigma = torch.nan_to_num(sigma, nan=0.0, posinf=3e38).clamp_min(0).double().cpu()
    return t.double().cpu(), sigma, delta.double().cpu()[:, None]


def _first_crossing(t: torch.Tensor, values: torch.Tensor, level: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Where ``values [R, S]`` (sampled at ``t``) first reaches ``level``, linearly interpolated → ``hit [R]``, ``depth [R]``."""
    above = values >= level
    hit = above.any(-1)
    i = above.to(torch.int8).argmax(-1)
    j = (i - 1).clamp_min(0)
    v0, v1 = values.gather(1, j[:, None])[:, 0], values.gather(1, i[:, None])[:, 0]
    t0, t1 = t.gather(1, j[:, None])[:, 0], t.gather(1, i[:, None])[:, 0]
    frac = torch.where((i > 0) & (v1 > v0), (level - v0) / (v1 - v0).clamp_min(1e-30), torch.ones_like(v0))
    return hit, t0 + (t1 - t0) * frac.clamp(0, 1)


@torch.no_grad()
def fit_level(scene: Any, bound: float) -> LevelFit:
    """Read the iso-level from the scene (see the module docstring); raises EmptyFieldError when
    no ray gets half opaque."""
    device = scene_device(scene)
    o, d = _fit_rays(bound, device)
    _, sigma, delta = _march(scene, o, d, bound, FIT_COARSE_SAMPLES)
    opacity = 1.0 - torch.exp(-(sigma * delta).sum(-1))
    peak = float(sigma.max()) if sigma.numel() else 0.0
    keep = (opacity >= FIT_MIN_OPACITY).nonzero()[:, 0]
    keep = keep[torch.randperm(len(keep), generator=torch.Generator().manual_seed(1))[:FIT_RAYS]]
    t, sigma, delta = _march(scene, o[keep.to(device)], d[keep.to(device)], bound, FIT_SAMPLES) if len(keep) else (None, None, None)
    shown = None
    if t is not None:
        # accumulated opacity at each sample's end: the crossing of 1/2 is where the render shows the surface
        acc = 1.0 - torch.exp(-(sigma * delta).cumsum(-1))
        shown, depth = _first_crossing(t + 0.5 * delta, acc, 0.5)
        peak = max(peak, float(sigma.max()))
    if shown is None or not bool(shown.any()):
        hint = f"e.g. --threshold {max(0.5 * peak, 1e-6):.3g}" if peak > 0 else "though no density is above zero"
        raise EmptyFieldError(
            f"the density field is empty: no ray through the scene gets half opaque (largest density seen: {peak:.3g}), so no "
            f"surface is rendered; nothing to mesh — train longer, or force a level with --threshold (export.threshold), {hint}"
        )
    levels = torch.logspace(math.log10(peak * 1e-3), math.log10(peak), FIT_LEVELS, dtype=torch.float64)
    miss = FIT_MISS_COST * bound
    rows = []
    for level in levels.tolist():
        hit, first = _first_crossing(t, sigma, level)
        both = hit & shown
        any_ = hit | shown
        gap = depth[both] - first[both]
        cost = (gap.abs().clamp_max(miss).sum() + miss * (int(any_.sum()) - int(both.sum()))) / max(int(any_.sum()), 1)
        iou = int(both.sum()) / max(int(any_.sum()), 1)
        err = float(gap.abs().median()) if bool(both.any()) else math.inf
        offset = float(gap.median()) if bool(both.any()) else 0.0
        rows.append((float(cost), iou, err, level, offset))
    _, iou, err, level, offset = min(rows)
    return LevelFit(level=float(level), iou=iou, depth_error=err, rays=len(t), peak=peak, offset=offset)


# ------------------------------------------------------------------------------------ density grid
def grid_axis(bound: float, resolution: int) -> np.ndarray:
    """The ``resolution`` sample coordinates along each axis, ``[-bound, bound]`` inclusive (float32)."""
    return np.linspace(-bound, bound, resolution, dtype=np.float32)


def inside_sphere_mask(bound: float, resolution: int) -> np.ndarray:
    """Boolean ``[R, R, R]`` of the grid points within the sphere of radius ``bound``."""
    axis = grid_axis(bound, resolution)
    r2 = axis[:, None, None] ** 2 + axis[None, :, None] ** 2 + axis[None, None, :] ** 2
    return r2 <= bound * bound * (1 + 1e-6)


@torch.no_grad()
def density_grid(scene: Any, bound: float, inside: np.ndarray, *, progress: bool = False) -> np.ndarray:
    """Density on ``resolution³`` points spanning ``[-bound, bound]³`` (axis order x, y, z) → float32,
    evaluated where ``inside`` (:func:`inside_sphere_mask`, which also sets the resolution) holds, zero elsewhere."""
    out = np.zeros(inside.shape, dtype=np.float32)
    _density_at(scene, bound, inside, out, progress=progress)
    return out


@torch.no_grad()
def _density_at(scene: Any, bound: float, mask: np.ndarray, out: np.ndarray, *, progress: bool = False) -> None:
    """Write ``scene.density(points [N, 3]) -> [N]`` into ``out [R, R, R]`` where ``mask [R, R, R]`` holds, one x-slab at a time."""
    resolution = mask.shape[0]
    device = scene_device(scene)
    axis = torch.from_numpy(grid_axis(bound, resolution))
    yy, zz = torch.meshgrid(axis, axis, indexing="ij")
    slabs: Any = [i for i in range(resolution) if mask[i].any()]
    if progress:
        from tqdm import tqdm

        slabs = tqdm(slabs, desc="density grid", unit="slab", leave=False, dynamic_ncols=True)
    for i in slabs:
        sel = torch.from_numpy(mask[i])
        pts = torch.stack([torch.full_like(yy[sel], float(axis[i])), yy[sel], zz[sel]], -1).to(device)
        sigma = scene.density(pts).float().cpu().numpy()
        out[i][mask[i]] = np.nan_to_num(sigma, nan=0.0, posinf=np.finfo(np.float32).max)


def enclosed(solid: np.ndarray, close: int = 0) -> np.ndarray:
    """Points of ``~solid [R, R, R]`` not connected (through face neighbours) to the grid's border:
    the cavities, which no outside view sees into. With ``close`` = k > 0, also the empty points
    inside the solid closed over openings up to ~2k steps wide and more than one step from its
    outside (dilate by k, fill, erode by k + 1): the inside of a perforated shell."""
    from scipy.ndimage import binary_dilation, binary_erosion, binary_fill_holes

    cavities = binary_fill_holes(solid) & ~solid
    if close > 0:
        closed = binary_fill_holes(binary_dilation(solid, iterations=close))
        cavities |= binary_erosion(closed, iterations=close + 1, border_value=0) & ~solid
    return cavities


def close_steps(bound: float, spacing: float) -> int:
    """Grid steps of :data:`CLOSE_RADIUS` at this grid spacing (at least 1)."""
    return max(1, round(CLOSE_RADIUS * bound / spacing))


@torch.no_grad()
def surface_grid(
    scene: Any,
    bound: float,
    inside: np.ndarray,
    level: float,
    *,
    threshold_given: bool = False,
    progress: bool = False,
    coarse_to_fine: Optional[bool] = None,
) -> np.ndarray:
    """The density grid marching cubes needs at ``level``, cavities filled (module docstring).

    ``inside [R, R, R]`` from :func:`inside_sphere_mask`; ``coarse_to_fine`` forces either way
    (None: from :data:`BAND_MIN_RESOLUTION` on). Returns ``grid [R, R, R]`` float32; raises
    EmptyFieldError when nothing, or everything, inside the bound reaches the level.
    """
    from scipy.ndimage import binary_dilation

    resolution = inside.shape[0]
    solid_value = np.float32(max(2.0 * level, level + 1.0))
    if not (resolution >= BAND_MIN_RESOLUTION if coarse_to_fine is None else coarse_to_fine):
        grid = density_grid(scene, bound, inside, progress=progress)
        check_level(grid, inside, level, threshold_given)
    else:
        idx = np.unique(np.r_[np.arange(0, resolution, BAND_STRIDE), resolution - 1])  # coarse lattice ⊂ fine points
        cell_of = np.minimum(np.searchsorted(idx, np.arange(resolution), side="right") - 1, len(idx) - 2)
        lattice = np.zeros(resolution, dtype=bool)
        lattice[idx] = True
        known = inside & lattice[:, None, None] & lattice[None, :, None] & lattice[None, None, :]
        grid = np.zeros(inside.shape, dtype=np.float32)
        _density_at(scene, bound, known, grid)
        check_level(grid, known, level, threshold_given)
        corners = grid[np.ix_(idx, idx, idx)]
        corners[enclosed(corners >= level)] = solid_value  # their walls need no refining
        n = len(idx) - 1  # coarse cells per axis
        shifted = [corners[a : n + a, b : n + b, c : n + c] for a in (0, 1) for b in (0, 1) for c in (0, 1)]
        cmax, cmin = np.maximum.reduce(shifted), np.minimum.reduce(shifted)
        active = binary_dilation((cmax >= BAND_LOW * level) & (cmin < level), structure=np.ones((3, 3, 3), dtype=bool))
        need = active[np.ix_(cell_of, cell_of, cell_of)] & inside & ~known
        _density_at(scene, bound, need, grid, progress=progress)
        # Cells not refined are empty (0, already) or solid: give their points a value above the level.
        solid = (cmin >= level)[np.ix_(cell_of, cell_of, cell_of)] & inside & ~known & ~need
        grid[solid] = solid_value
        grid[np.ix_(idx, idx, idx)] = np.maximum(grid[np.ix_(idx, idx, idx)], np.where(corners == solid_value, solid_value, 0))
    grid[enclosed(grid >= level, close_steps(bound, 2.0 * bound / (resolution - 1)))] = solid_value
    return grid


def check_level(grid: np.ndarray, inside: np.ndarray, level: float, threshold_given: bool) -> None:
    """EmptyFieldError when nothing, or everything, of ``grid`` where ``inside`` holds reaches ``level``."""
    values = grid[inside]
    peak = float(values.max()) if values.size else 0.0
    low = float(values.min()) if values.size else 0.0
    name = f"threshold {level:g}" if threshold_given else f"threshold auto = {level:.3g}"
    if not peak >= level:
        raise EmptyFieldError(
            f"no density inside the bound reaches the {name} (largest value: {peak:.3g}); nothing to mesh — "
            f"use a lower --threshold (export.threshold), e.g. --threshold {max(0.5 * peak, 1e-6):.3g}"
        )
    if low >= level:
        hint = f"e.g. --threshold {0.5 * (low + peak):.3g}" if peak > low else "the field is constant, so no threshold helps"
        raise EmptyFieldError(
            f"the whole scene bound is solid: every density inside it is >= the {name} (smallest value: {low:.3g}), "
            f"so there is no surface — use a higher --threshold (export.threshold), {hint}"
        )


# ------------------------------------------------------------------------------------ the surface
def keep_large_components(vertices: np.ndarray, faces: np.ndarray, min_ratio: float) -> tuple[np.ndarray, np.ndarray]:
    """Drop connected pieces (sharing vertices) with less area than ``min_ratio`` × the largest piece's.

    ``vertices [V, 3]``, ``faces [F, 3]`` → the kept vertices and re-indexed faces.
    """
    if len(faces) == 0 or min_ratio <= 0:
        return vertices, faces
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(vertices)
    a, b = faces[:, [0, 1, 2]].ravel(), faces[:, [1, 2, 0]].ravel()
    graph = coo_matrix((np.ones(len(a), dtype=np.int8), (a, b)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    face_label = labels[faces[:, 0]]
    tri = vertices[faces]
    area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    piece = np.bincount(face_label, weights=area)
    return drop_faces(vertices, faces, piece[face_label] >= min_ratio * piece.max())


def drop_faces(vertices: np.ndarray, faces: np.ndarray, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Keep the faces where ``keep [F]`` holds and the vertices they use (faces re-indexed)."""
    faces = faces[keep]
    used = np.unique(faces)
    remap = np.full(len(vertices), -1, dtype=np.int64)
    remap[used] = np.arange(len(used))
    return vertices[used], remap[faces]


@dataclass
class Surface:
    """What :func:`extract_surface` found: ``vertices [V, 3]`` (float64, z-up world frame), ``faces
    [F, 3]`` (int64, outward winding), the level and, for threshold auto, how it was fitted."""

    vertices: np.ndarray
    faces: np.ndarray
    level: float
    fit: Optional[LevelFit] = None


@torch.no_grad()
def extract_surface(
    scene: Any,
    bound: float,
    resolution: int = 256,
    threshold: Optional[float] = None,
    min_component_ratio: float = 0.05,
    *,
    fit: Optional[LevelFit] = None,
    progress: bool = False,
    coarse_to_fine: Optional[bool] = None,
) -> Surface:
    """Marching cubes of ``scene.density`` at ``threshold`` (None: the level ``fit``, fitted here
    when not given), cavities filled, floaters dropped. Raises :class:`EmptyFieldError` (a
    UsageError) when there is no surface."""
    import mcubes

    if threshold is None and fit is None:
        fit = fit_level(scene, bound)
    elif threshold is not None:
        fit = None
    level = fit.level if fit is not None else float(threshold)  # type: ignore[arg-type]
    inside = inside_sphere_mask(bound, resolution)
    grid = surface_grid(scene, bound, inside, level, threshold_given=fit is None, progress=progress, coarse_to_fine=coarse_to_fine)
    vertices, faces = mcubes.marching_cubes(np.pad(grid, 1, mode="constant", constant_values=0.0), level)
    if len(faces) == 0:  # cannot happen after check_level, but never hand an empty mesh on
        raise EmptyFieldError(f"marching cubes found no surface at threshold {level:g}; try another --threshold")
    step = 2.0 * bound / (resolution - 1)
    vertices = (vertices - 1.0) * step - bound  # padded grid index → world
    vertices, faces = keep_large_components(vertices, faces.astype(np.int64), min_component_ratio)
    if signed_volume(vertices, faces) < 0:  # marching cubes winding depends on the sign convention; make normals point out
        faces = faces[:, ::-1].copy()
    return Surface(vertices, faces, level, fit)


def signed_volume(vertices: np.ndarray, faces: np.ndarray) -> float:
    """Volume enclosed by a closed triangle mesh, positive when its faces wind outwards."""
    a, b, c = (vertices[faces[:, k]] for k in range(3))
    return float(np.einsum("ij,ij->i", a, np.cross(b, c)).sum() / 6.0)
