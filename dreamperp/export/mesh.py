"""Mesh export: marching cubes over the density, albedo vertex colours.

The density is sampled on a ``resolution³`` grid spanning the scene box ``[-bound, bound]³``.
Points outside the sphere of radius ``bound`` are set to zero: the renderer only marches inside
that sphere, so the field there was never seen by a loss and may hold anything. The grid is padded
with one empty layer on every side, so the surface is closed even where the object touches the
bound. Points with density >= the threshold are inside.

Threshold ``auto``: ``min(25, max σ / 2)``. 25 is the iso-level peers use for trained fields
(threestudio): a ray crossing 0.03 scene units of it is half opaque, i.e. a surface at the
resolution of a render. A field that never gets that dense (e.g. a short or tiny run still close to
the initial density blob) is cut at half its peak instead, so it still gives a mesh. A field so
thin that even half its peak, crossed over the whole scene diameter, would stay under 50 % opaque
(``max σ / 2 < ln 2 / (2·bound)``) counts as empty.

Vertex colours are the albedo at the vertices. Disconnected pieces with fewer faces than
``min_component_ratio`` × the largest piece are dropped (floaters). GLB is written y-up
(glTF convention): world (x, y, z) → (x, z, −y), a proper rotation, so face winding is kept;
OBJ and PLY keep the z-up world frame.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch

from dreamperp.config import MESH_FORMATS
from dreamperp.errors import UsageError
from dreamperp.export.common import positive_int, scene_device
from dreamperp.files import atomic_write_bytes
from dreamperp.runs.checkpoint import load_run

AUTO_LEVEL = 25.0

# glTF is y-up: (x, y, z)_world → (x, z, −y). Rows are the output axes.
Z_UP_TO_Y_UP = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])


class EmptyFieldError(UsageError):
    """Nothing (or everything) inside the bound is above the threshold, so there is no surface."""


@torch.no_grad()
def density_grid(scene: Any, bound: float, inside: np.ndarray, *, progress: bool = False) -> np.ndarray:
    """Density on ``resolution³`` points spanning ``[-bound, bound]³`` (axis order x, y, z) → float32 numpy.

    Evaluated one x-slab at a time and only where ``inside`` (:func:`inside_sphere_mask`, which
    also sets the resolution) holds, zero elsewhere, through ``scene.density(points [N, 3]) -> [N]``.
    """
    resolution = inside.shape[0]
    device = scene_device(scene)
    axis = torch.from_numpy(grid_axis(bound, resolution))
    yy, zz = torch.meshgrid(axis, axis, indexing="ij")
    mask = torch.from_numpy(inside)
    out = np.zeros((resolution, resolution, resolution), dtype=np.float32)
    slabs = range(resolution)
    if progress:
        from tqdm import tqdm

        slabs = tqdm(slabs, desc="density grid", unit="slab", leave=False, dynamic_ncols=True)
    for i in slabs:
        inside = mask[i]
        if not bool(inside.any()):
            continue
        pts = torch.stack([torch.full_like(yy[inside], float(axis[i])), yy[inside], zz[inside]], -1).to(device)
        sigma = scene.density(pts).float().cpu().numpy()
        out[i][inside.numpy()] = np.nan_to_num(sigma, nan=0.0, posinf=np.finfo(np.float32).max)
    return out


def grid_axis(bound: float, resolution: int) -> np.ndarray:
    """The ``resolution`` sample coordinates along each axis, ``[-bound, bound]`` inclusive (float32)."""
    return np.linspace(-bound, bound, resolution, dtype=np.float32)


def inside_sphere_mask(bound: float, resolution: int) -> np.ndarray:
    """Boolean ``[R, R, R]`` of the grid points within the sphere of radius ``bound`` (as in :func:`density_grid`)."""
    axis = grid_axis(bound, resolution)
    r2 = axis[:, None, None] ** 2 + axis[None, :, None] ** 2 + axis[None, None, :] ** 2
    return r2 <= bound * bound * (1 + 1e-6)


def choose_threshold(grid: np.ndarray, inside: np.ndarray, bound: float, threshold: Optional[float]) -> float:
    """The iso-level to use (see the module docstring for 'auto' = None); raises EmptyFieldError
    when nothing, or everything, inside the bound reaches it."""
    values = grid[inside]
    peak = float(values.max()) if values.size else 0.0
    low = float(values.min()) if values.size else 0.0
    if threshold is None:
        level = min(AUTO_LEVEL, 0.5 * peak)
        floor = math.log(2.0) / (2.0 * bound)
        if level < floor:
            raise EmptyFieldError(
                f"the density field is empty: its largest value inside the bound is {peak:.3g}, too thin for a surface "
                f"(threshold auto needs at least {2 * floor:.3g}); nothing to mesh — train longer, or force a level with --threshold "
                f"(export.threshold), e.g. --threshold {max(0.5 * peak, 1e-6):.3g}"
            )
    else:
        level = float(threshold)
        if not peak >= level:
            raise EmptyFieldError(
                f"no density inside the bound reaches the threshold {level:g} (largest value: {peak:.3g}); nothing to mesh — "
                f"use a lower --threshold (export.threshold), e.g. --threshold {max(0.5 * peak, 1e-6):.3g}"
            )
    if low >= level:
        hint = f"e.g. --threshold {0.5 * (low + peak):.3g}" if peak > low else "the field is constant, so no threshold helps"
        raise EmptyFieldError(
            f"the whole scene bound is solid: every density inside it is >= the threshold "
            f"{'auto = ' if threshold is None else ''}{level:.3g} (smallest value: {low:.3g}), so there is no surface — "
            f"use a higher --threshold (export.threshold), {hint}"
        )
    return level


def keep_large_components(vertices: np.ndarray, faces: np.ndarray, min_ratio: float) -> tuple[np.ndarray, np.ndarray]:
    """Drop connected pieces (sharing vertices) with fewer faces than ``min_ratio`` × the largest piece's.

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
    counts = np.bincount(face_label)
    keep_face = counts[face_label] >= min_ratio * counts.max()
    faces = faces[keep_face]
    used = np.unique(faces)
    remap = np.full(n, -1, dtype=np.int64)
    remap[used] = np.arange(len(used))
    return vertices[used], remap[faces]


@torch.no_grad()
def extract_mesh(
    scene: Any,
    bound: float,
    resolution: int = 256,
    threshold: Optional[float] = None,
    min_component_ratio: float = 0.05,
    *,
    progress: bool = False,
) -> "trimesh.Trimesh":  # noqa: F821
    """Marching cubes of ``scene.density`` at ``threshold`` (None: auto), vertex colours from ``scene.albedo``.

    Returns a ``trimesh.Trimesh`` in the z-up world frame, outward-facing, with RGBA uint8 vertex
    colours. Raises :class:`EmptyFieldError` (a UsageError) when there is no surface.
    """
    import mcubes
    import trimesh

    resolution = positive_int(resolution, "--resolution (export.resolution)", minimum=8)
    inside = inside_sphere_mask(bound, resolution)
    grid = density_grid(scene, bound, inside, progress=progress)
    level = choose_threshold(grid, inside, bound, threshold)
    padded = np.pad(grid, 1, mode="constant", constant_values=0.0)
    vertices, faces = mcubes.marching_cubes(padded, level)
    if len(faces) == 0:  # cannot happen after choose_threshold, but never hand an empty mesh on
        raise EmptyFieldError(f"marching cubes found no surface at threshold {level:g}; try another --threshold")
    step = 2.0 * bound / (resolution - 1)
    vertices = (vertices - 1.0) * step - bound  # padded grid index → world
    vertices, faces = keep_large_components(vertices, faces.astype(np.int64), min_component_ratio)

    device = scene_device(scene)
    pts = torch.from_numpy(vertices.astype(np.float32)).to(device)
    albedo = torch.cat([scene.albedo(p).float().cpu() for p in pts.split(1 << 18)], 0).clamp(0, 1).numpy()
    colors = np.concatenate([np.round(albedo * 255), np.full((len(albedo), 1), 255)], 1).astype(np.uint8)
    mesh = trimesh.Trimesh(vertices=vertices, faces=faces, vertex_colors=colors, process=False)
    if mesh.volume < 0:  # marching cubes winding depends on the sign convention; make normals point out
        mesh.invert()
    mesh.metadata["threshold"] = level
    return mesh


def mesh_bytes(mesh: "trimesh.Trimesh", fmt: str) -> bytes:  # noqa: F821
    """Serialise ``mesh`` (z-up world frame) as ``fmt``; GLB is converted to y-up."""
    import trimesh

    if fmt == "glb":
        mesh = trimesh.Trimesh(
            vertices=mesh.vertices @ Z_UP_TO_Y_UP.T, faces=mesh.faces, vertex_colors=mesh.visual.vertex_colors, process=False
        )
    data = mesh.export(file_type=fmt)
    return data.encode() if isinstance(data, str) else bytes(data)


def export_mesh(
    scene: Any,
    cfg: Any,
    out_dir: str | Path,
    formats: Optional[Sequence[str]] = None,
    resolution: Optional[int] = None,
    threshold: Optional[float | str] = None,
    *,
    progress: bool = True,
    name: str = "mesh",
) -> list[Path]:
    """Extract the mesh of ``scene`` and write ``out_dir/<name>.<fmt>`` for each format, atomically.

    ``cfg`` is the run's Config: ``cfg.scene.bound`` and the ``cfg.export`` defaults for any
    argument left None. ``threshold``: a float, 'auto', or None (cfg.export.threshold).
    Returns the written paths. Raises UsageError for bad arguments or an empty/all-solid field.
    """
    formats = list(formats or cfg.export.formats)
    for fmt in formats:
        if fmt not in MESH_FORMATS:
            raise UsageError(f"unknown mesh format {fmt!r}: use one of {', '.join(MESH_FORMATS)}")
    level = parse_threshold_arg(cfg.export.threshold if threshold is None else threshold)
    mesh = extract_mesh(
        scene,
        float(cfg.scene.bound),
        resolution if resolution is not None else cfg.export.resolution,
        level,
        cfg.export.min_component_ratio,
        progress=progress,
    )
    out_dir = Path(out_dir)
    paths = []
    for fmt in dict.fromkeys(formats):  # unique, in order
        paths.append(atomic_write_bytes(out_dir / f"{name}.{fmt}", mesh_bytes(mesh, fmt)))
    return paths


def parse_threshold_arg(value: float | str | None) -> Optional[float]:
    """'auto' (or None) → None; a number or numeric string → float; else UsageError naming --threshold."""
    if value is None or (isinstance(value, str) and value.strip().lower() == "auto"):
        return None
    try:
        level = float(value)
    except (TypeError, ValueError):
        raise UsageError(f"--threshold must be 'auto' or a number, got {value!r}") from None
    if not math.isfinite(level):
        raise UsageError(f"--threshold must be a finite number, got {value!r}")
    return level


def export_command(args: argparse.Namespace) -> int:
    """``dreamperp export RUN_DIR [--format F ...] [--resolution N] [--threshold auto|X] [--checkpoint PATH]``."""
    if args.threshold is not None:
        parse_threshold_arg(args.threshold)  # fail on a bad value before loading the run
    if args.resolution is not None:
        positive_int(args.resolution, "--resolution", minimum=8)
    run = load_run(args.run_dir, checkpoint=args.checkpoint)
    paths = export_mesh(run.scene, run.cfg, Path(run.run_dir) / "export", args.formats, args.resolution, args.threshold)
    for path in paths:
        print(path)
    return 0
