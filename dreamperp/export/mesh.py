"""Mesh export: marching cubes over the density → decimation → UV atlas → baked albedo texture.

The one place for the mesh pipeline (``dreamperp export`` and the end of training both call
:func:`export_mesh`); timings of each stage are kept in ``Timings``.

Density grid. The density is sampled on a ``resolution³`` grid spanning the scene box
``[-bound, bound]³``. Points outside the sphere of radius ``bound`` are set to zero: the renderer
only marches inside that sphere, so the field there was never seen by a loss and may hold anything.
The grid is padded with one empty layer on every side, so the surface is closed even where the
object touches the bound. Points with density >= the threshold are inside. From 128³ on, the grid
is evaluated coarse-to-fine: every 4th point first, then all fine points of the coarse cells that
hold the surface or come near it (a corner within half the threshold of it, grown by one cell);
the other cells are empty or solid as their corners say. That is exact for every surface wider than
a coarse cell (4 voxels) and ~10× fewer field queries than the dense grid on a typical object.

Threshold ``auto``: ``min(25, max σ / 2)``. 25 is the iso-level peers use for trained SDS fields
(threestudio): a ray crossing 0.03 scene units of it is half opaque, i.e. a surface at the
resolution of a render. A field that never gets that dense (e.g. a short or tiny run still close to
the initial density blob) is cut at half its peak instead, so it still gives a mesh. A field so
thin that even half its peak, crossed over the whole scene diameter, would stay under 50 % opaque
(``max σ / 2 < ln 2 / (2·bound)``) counts as empty. The chosen value is reported.

Disconnected pieces with fewer faces than ``min_component_ratio`` × the largest piece are dropped
(floaters). Then the mesh is decimated to ``faces`` (:mod:`dreamperp.export.decimate`), and for a
textured export unwrapped and baked (:mod:`dreamperp.export.texture`).

Formats: ``glb`` (texture embedded as the PBR ``baseColorTexture``, or vertex colours), ``obj``
(+ ``.mtl`` + ``.png`` when textured, else vertex colours as extra ``v`` columns), ``ply`` (always
vertex colours: the albedo at the vertices). GLB is written y-up (glTF convention): world
(x, y, z) → (x, z, −y), a proper rotation, so face winding is kept; OBJ and PLY keep the z-up world
frame.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, Optional, Sequence

import numpy as np
import torch

from dreamperp.config import MESH_FORMATS
from dreamperp.errors import UsageError
from dreamperp.export.common import positive_int, scene_device
from dreamperp.files import atomic_write_bytes, make_output_folder
from dreamperp.images import to_uint8
from dreamperp.runs.checkpoint import load_run

TEXTURED_FORMATS = ("glb", "obj")
AUTO_LEVEL = 25.0
BAND_MIN_RESOLUTION = 128  # below this the dense grid is cheap enough
BAND_STRIDE = 4
BAND_LOW = 0.5  # a coarse cell with a corner above BAND_LOW × threshold may hold surface

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
    out = np.zeros(inside.shape, dtype=np.float32)
    _density_at(scene, bound, inside, out, progress=progress)
    return out


@torch.no_grad()
def _density_at(scene: Any, bound: float, mask: np.ndarray, out: np.ndarray, *, progress: bool = False) -> None:
    """Write ``scene.density`` into ``out [R, R, R]`` at the grid points where ``mask [R, R, R]`` holds."""
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


@torch.no_grad()
def surface_grid(
    scene: Any,
    bound: float,
    inside: np.ndarray,
    threshold: Optional[float],
    *,
    progress: bool = False,
    coarse_to_fine: Optional[bool] = None,
) -> tuple[np.ndarray, float]:
    """The density grid marching cubes needs and the iso-level (see the module docstring).

    ``inside [R, R, R]`` from :func:`inside_sphere_mask`. Below :data:`BAND_MIN_RESOLUTION` the grid
    is dense; from it on, coarse-to-fine: the level is chosen from the points evaluated so far, and
    the refinement repeats (at most 4 times) until the level asks for no new cell.
    ``coarse_to_fine`` forces either way (None: by resolution).
    Returns ``(grid [R, R, R] float32, level)``; raises EmptyFieldError when there is no surface.
    """
    from scipy.ndimage import binary_dilation

    resolution = inside.shape[0]
    if not (resolution >= BAND_MIN_RESOLUTION if coarse_to_fine is None else coarse_to_fine):
        grid = density_grid(scene, bound, inside, progress=progress)
        return grid, choose_threshold(grid, inside, bound, threshold)
    idx = np.unique(np.r_[np.arange(0, resolution, BAND_STRIDE), resolution - 1])  # coarse lattice ⊂ fine points
    cell_of = np.minimum(np.searchsorted(idx, np.arange(resolution), side="right") - 1, len(idx) - 2)
    lattice = np.zeros(resolution, dtype=bool)
    lattice[idx] = True
    known = inside & lattice[:, None, None] & lattice[None, :, None] & lattice[None, None, :]
    grid = np.zeros(inside.shape, dtype=np.float32)
    _density_at(scene, bound, known, grid)
    for _ in range(4):
        level = choose_threshold(grid, known, bound, threshold)
        corners = grid[np.ix_(idx, idx, idx)]
        n = len(idx) - 1  # coarse cells per axis
        shifted = [corners[a : n + a, b : n + b, c : n + c] for a in (0, 1) for b in (0, 1) for c in (0, 1)]
        cmax, cmin = np.maximum.reduce(shifted), np.minimum.reduce(shifted)
        active = binary_dilation((cmax >= BAND_LOW * level) & (cmin < level), structure=np.ones((3, 3, 3), dtype=bool))
        need = active[np.ix_(cell_of, cell_of, cell_of)] & inside & ~known
        if not need.any():
            break
        _density_at(scene, bound, need, grid, progress=progress)
        known |= need
    else:
        level = choose_threshold(grid, known, bound, threshold)
    # Cells not refined are empty (0, already) or solid: give their points a value above the level.
    solid = (cmin >= level)[np.ix_(cell_of, cell_of, cell_of)] & inside & ~known
    grid[solid] = max(2.0 * level, level + 1.0)
    return grid, level


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


@dataclass
class Timings:
    """Seconds per export stage, in order (marching cubes, decimation, atlas, bake, write): wall clock,
    and the CPU time of this process (all its threads), which a machine shared with other jobs inflates less."""

    seconds: Dict[str, float] = field(default_factory=dict)
    cpu_seconds: Dict[str, float] = field(default_factory=dict)

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - wall
            self.cpu_seconds[name] = self.cpu_seconds.get(name, 0.0) + time.process_time() - cpu

    def summary(self) -> str:
        parts = [f"{name} {sec:.1f} s" for name, sec in self.seconds.items()]
        cpu = sum(self.cpu_seconds.values())
        return ", ".join(parts) + f" (total {sum(self.seconds.values()):.1f} s wall, {cpu:.1f} s CPU)"


@torch.no_grad()
def extract_surface(
    scene: Any,
    bound: float,
    resolution: int = 256,
    threshold: Optional[float] = None,
    min_component_ratio: float = 0.05,
    *,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray, float]:
    """Marching cubes of ``scene.density`` at ``threshold`` (None: auto), floaters dropped.

    Returns ``vertices [V, 3]`` (float64, z-up world frame), ``faces [F, 3]`` (int64, outward
    winding) and the level used. Raises :class:`EmptyFieldError` (a UsageError) when there is no surface.
    """
    import mcubes

    resolution = positive_int(resolution, "--resolution (export.resolution)", minimum=8)
    inside = inside_sphere_mask(bound, resolution)
    grid, level = surface_grid(scene, bound, inside, threshold, progress=progress)
    padded = np.pad(grid, 1, mode="constant", constant_values=0.0)
    vertices, faces = mcubes.marching_cubes(padded, level)
    if len(faces) == 0:  # cannot happen after choose_threshold, but never hand an empty mesh on
        raise EmptyFieldError(f"marching cubes found no surface at threshold {level:g}; try another --threshold")
    step = 2.0 * bound / (resolution - 1)
    vertices = (vertices - 1.0) * step - bound  # padded grid index → world
    vertices, faces = keep_large_components(vertices, faces.astype(np.int64), min_component_ratio)
    if _signed_volume(vertices, faces) < 0:  # marching cubes winding depends on the sign convention; make normals point out
        faces = faces[:, ::-1].copy()
    return vertices, faces, level


def _signed_volume(vertices: np.ndarray, faces: np.ndarray) -> float:
    """Volume enclosed by a closed triangle mesh, positive when its faces wind outwards."""
    a, b, c = (vertices[faces[:, k]] for k in range(3))
    return float(np.einsum("ij,ij->i", a, np.cross(b, c)).sum() / 6.0)


@torch.no_grad()
def vertex_albedo(scene: Any, vertices: np.ndarray, chunk: int = 1 << 18) -> np.ndarray:
    """RGBA uint8 ``[V, 4]``: ``scene.albedo`` at ``vertices [V, 3]``, queried in chunks on the scene's device."""
    pts = torch.from_numpy(np.asarray(vertices, dtype=np.float32)).to(scene_device(scene))
    albedo = to_uint8(torch.cat([scene.albedo(p).float().cpu() for p in pts.split(chunk)], 0))
    return np.concatenate([albedo, np.full((len(albedo), 1), 255, dtype=np.uint8)], 1)


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
    """:func:`extract_surface` as a ``trimesh.Trimesh`` (z-up) with albedo RGBA uint8 vertex
    colours and ``metadata["threshold"]``; not decimated."""
    import trimesh

    vertices, faces, level = extract_surface(scene, bound, resolution, threshold, min_component_ratio, progress=progress)
    mesh = trimesh.Trimesh(vertices=vertices, faces=faces, vertex_colors=vertex_albedo(scene, vertices), process=False)
    mesh.metadata["threshold"] = level
    return mesh


@dataclass
class ExportedMesh:
    """What :func:`build_meshes` made: the decimated mesh with vertex colours and, when asked, its
    textured twin (atlas vertices, UVs, ``texture [S, S, 3]`` uint8); both z-up trimesh objects."""

    coloured: Optional["trimesh.Trimesh"]  # noqa: F821
    textured: Optional["trimesh.Trimesh"]  # noqa: F821
    level: float
    faces_before: int
    timings: Timings
    texture_filled: Optional[np.ndarray] = None  # [S, S] bool: texels baked or reached by the chart padding


@torch.no_grad()
def build_meshes(
    scene: Any,
    bound: float,
    *,
    resolution: int = 256,
    threshold: Optional[float] = None,
    min_component_ratio: float = 0.05,
    faces: int = 50000,
    texture: bool = True,
    vertex_colours: bool = True,
    texture_size: int = 1024,
    progress: bool = False,
    timings: Optional[Timings] = None,
) -> ExportedMesh:
    """Marching cubes → decimation to ``faces`` (0: keep all) → (``texture``) xatlas + bake, and
    (``vertex_colours``) the albedo at the decimated vertices. See the module docstring."""
    import trimesh

    from dreamperp.export.decimate import decimate
    from dreamperp.export.texture import bake_albedo, uv_atlas

    timings = timings or Timings()
    with timings.stage("marching cubes"):
        vertices, tris, level = extract_surface(scene, bound, resolution, threshold, min_component_ratio, progress=progress)
    faces_before = len(tris)
    with timings.stage("decimation"):
        vertices, tris = decimate(vertices, tris, faces)
    coloured = textured = filled = None
    # Smooth shading normals from the welded mesh, so the vertices xatlas splits at seams agree.
    normals = trimesh.Trimesh(vertices=vertices, faces=tris, process=False).vertex_normals
    if texture:
        from PIL import Image

        with timings.stage("atlas"):
            vmapping, atlas_faces, uv = uv_atlas(vertices, tris, texture_size)
        with timings.stage("bake"):
            atlas_vertices = vertices[vmapping]
            image, _, filled = bake_albedo(scene.albedo, atlas_vertices, atlas_faces, uv, texture_size, scene_device(scene))
            material = trimesh.visual.material.PBRMaterial(
                name="albedo", baseColorTexture=Image.fromarray(image), metallicFactor=0.0, roughnessFactor=1.0
            )
            visual = trimesh.visual.TextureVisuals(uv=uv, material=material)
            textured = trimesh.Trimesh(atlas_vertices, atlas_faces, vertex_normals=normals[vmapping], visual=visual, process=False)
    if vertex_colours:
        with timings.stage("bake"):
            colours = vertex_albedo(scene, vertices)
            coloured = trimesh.Trimesh(vertices, tris, vertex_normals=normals, vertex_colors=colours, process=False)
    return ExportedMesh(coloured, textured, level, faces_before, timings, filled)


def mesh_files(mesh: "trimesh.Trimesh", fmt: str, name: str = "mesh") -> Dict[str, bytes]:  # noqa: F821
    """Serialise ``mesh`` (z-up world frame) as ``fmt`` → {file name: bytes}; GLB is converted to y-up.

    A textured OBJ gives three files (``name.obj``, ``name.mtl``, ``name.png``), everything else one.
    """
    import trimesh

    textured = isinstance(mesh.visual, trimesh.visual.TextureVisuals)
    if fmt == "glb":
        rotation = np.eye(4)
        rotation[:3, :3] = Z_UP_TO_Y_UP
        mesh = mesh.copy()
        mesh.apply_transform(rotation)
        return {f"{name}.glb": bytes(mesh.export(file_type="glb", include_normals=True))}
    if fmt == "obj" and textured:
        from PIL import Image

        image = mesh.visual.material.baseColorTexture if hasattr(mesh.visual.material, "baseColorTexture") else mesh.visual.material.image
        simple = trimesh.visual.material.SimpleMaterial(  # white Kd: viewers multiply it with map_Kd
            name=name, image=image, diffuse=(255, 255, 255, 255), ambient=(255, 255, 255, 255), specular=(0, 0, 0, 255)
        )
        visual = trimesh.visual.TextureVisuals(uv=mesh.visual.uv, material=simple)
        plain = trimesh.Trimesh(mesh.vertices, mesh.faces, visual=visual, process=False)
        text, extra = trimesh.exchange.obj.export_obj(
            plain, include_normals=False, include_texture=True, return_texture=True, mtl_name=f"{name}.mtl", header=None
        )
        if not isinstance(image, Image.Image) or set(extra) != {f"{name}.mtl", f"{name}.png"}:
            raise RuntimeError(f"OBJ export produced {sorted(extra)}, expected {name}.mtl and {name}.png")
        return {f"{name}.png": extra[f"{name}.png"], f"{name}.mtl": extra[f"{name}.mtl"], f"{name}.obj": text.encode()}
    data = mesh.export(file_type=fmt)
    return {f"{name}.{fmt}": data.encode() if isinstance(data, str) else bytes(data)}


def mesh_bytes(mesh: "trimesh.Trimesh", fmt: str) -> bytes:  # noqa: F821
    """Serialise a vertex-coloured ``mesh`` (z-up world frame) as one ``fmt`` file; GLB is converted to y-up."""
    (data,) = mesh_files(mesh, fmt).values()
    return data


def check_export_args(formats: Sequence[str], faces: Any, texture_size: Any) -> None:
    """UsageError for an unknown format, a negative face budget or a bad texture size (before any work)."""
    from dreamperp.export.texture import check_texture_size

    for fmt in formats:
        if fmt not in MESH_FORMATS:
            raise UsageError(f"unknown mesh format {fmt!r}: use one of {', '.join(MESH_FORMATS)}")
    if faces is None or int(faces) != faces or int(faces) < 0:
        raise UsageError(f"--faces (export.faces) must be an integer >= 0 (0 keeps every face), got {faces}")
    check_texture_size(texture_size)


def parse_on_off(value: Any, flag: str) -> bool:
    """'on'/'off' (also true/false, yes/no, 1/0, or a bool) → bool; else UsageError naming ``flag``."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("on", "true", "yes", "1"):
        return True
    if text in ("off", "false", "no", "0"):
        return False
    raise UsageError(f"{flag} must be 'on' or 'off', got {value!r}")


def threshold_note(level: float, threshold: Optional[float]) -> str:
    """How the iso-level was chosen, for the log."""
    if threshold is not None:
        return f"threshold {level:.4g}"
    rule = f"the SDS level {AUTO_LEVEL:g}" if level >= AUTO_LEVEL else "half the peak density"
    return f"threshold auto = {level:.4g} ({rule})"


def export_mesh(
    scene: Any,
    cfg: Any,
    out_dir: str | Path,
    formats: Optional[Sequence[str]] = None,
    resolution: Optional[int] = None,
    threshold: Optional[float | str] = None,
    *,
    faces: Optional[int] = None,
    texture: Optional[bool | str] = None,
    texture_size: Optional[int] = None,
    progress: bool = True,
    name: str = "mesh",
    log: Optional[Callable[[str], None]] = None,
    timings: Optional[Timings] = None,
) -> list[Path]:
    """Extract the mesh of ``scene`` and write ``out_dir/<name>.<fmt>`` for each format, atomically.

    ``cfg`` is the run's Config: ``cfg.scene.bound`` and the ``cfg.export`` defaults (formats,
    resolution, threshold, faces, texture, texture_size) for any argument left None. ``threshold``:
    a float, 'auto', or None. ``texture`` applies to glb/obj (ply always has vertex colours).
    ``log`` gets the chosen threshold, the face counts and the stage timings.
    Returns the written paths (a textured OBJ also writes ``<name>.mtl`` and ``<name>.png``).
    Raises UsageError for bad arguments or an empty/all-solid field, before writing anything.
    """
    ex = cfg.export
    formats = list(dict.fromkeys(formats or ex.formats))  # unique, in order
    faces = ex.faces if faces is None else faces
    texture_size = ex.texture_size if texture_size is None else texture_size
    check_export_args(formats, faces, texture_size)
    texture = parse_on_off(ex.texture if texture is None else texture, "--texture (export.texture)")
    level_arg = parse_threshold_arg(ex.threshold if threshold is None else threshold)
    textured_formats = [f for f in formats if f in TEXTURED_FORMATS] if texture else []
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        make_output_folder(out_dir)  # raises the one-line error now, not after minutes of work
    timings = timings or Timings()
    built = build_meshes(
        scene,
        float(cfg.scene.bound),
        resolution=resolution if resolution is not None else ex.resolution,
        threshold=level_arg,
        min_component_ratio=ex.min_component_ratio,
        faces=int(faces),
        texture=bool(textured_formats),
        vertex_colours=len(textured_formats) < len(formats),
        texture_size=int(texture_size),
        progress=progress,
        timings=timings,
    )
    paths = []
    with timings.stage("write"):
        for fmt in formats:
            mesh = built.textured if fmt in textured_formats else built.coloured
            files = mesh_files(mesh, fmt, name)
            for file_name, data in files.items():  # the main file last, once its .mtl/.png are in place
                written = atomic_write_bytes(out_dir / file_name, data)
            paths.append(written)
    if log is not None:
        final = built.textured if built.textured is not None else built.coloured
        log(f"{threshold_note(built.level, level_arg)}; {built.faces_before} faces → {len(final.faces)} (budget {faces or 'all'})")
        log(f"mesh timings: {timings.summary()}")
    return paths


def _stderr_log(message: str) -> None:
    print(f"dreamperp export: {message}", file=sys.stderr, flush=True)


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
    """``dreamperp export RUN_DIR [--format F ...] [--resolution N] [--threshold auto|X] [--faces N]
    [--texture on|off] [--texture-size S] [--checkpoint PATH]``: paths on stdout, the chosen threshold
    and the per-stage timings on stderr."""
    if args.threshold is not None:
        parse_threshold_arg(args.threshold)  # fail on a bad value before loading the run
    if args.resolution is not None:
        positive_int(args.resolution, "--resolution", minimum=8)
    faces, texture, texture_size = getattr(args, "faces", None), getattr(args, "texture", None), getattr(args, "texture_size", None)
    if faces is not None and faces < 0:
        raise UsageError(f"--faces must be an integer >= 0 (0 keeps every face), got {faces}")
    if texture_size is not None:
        from dreamperp.export.texture import check_texture_size

        check_texture_size(texture_size, "--texture-size")
    if texture is not None:
        parse_on_off(texture, "--texture")
    run = load_run(args.run_dir, checkpoint=args.checkpoint)
    paths = export_mesh(
        run.scene,
        run.cfg,
        Path(run.run_dir) / "export",
        args.formats,
        args.resolution,
        args.threshold,
        faces=faces,
        texture=texture,
        texture_size=texture_size,
        log=_stderr_log,
    )
    for path in paths:
        print(path)
    return 0
