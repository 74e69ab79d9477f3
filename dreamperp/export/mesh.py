"""Mesh export: the surface (:mod:`dreamperp.export.surface`) → decimation → faces no outside view
sees removed → UV atlas → baked albedo texture → files → fidelity against the scene (docs/design.md §14).

The one place for the mesh pipeline: ``dreamperp export`` and the end of training both call
:func:`export_mesh`; the seconds of each stage are kept in :class:`Timings`, and the export's
figures (level, faces, seen area, fidelity, timings) go to ``export/fidelity.json``.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

import numpy as np
import torch

from dreamperp.config import MESH_FORMATS, TEXTURE_SIZES, parse_threshold
from dreamperp.errors import UsageError
from dreamperp.export.common import positive_int, scene_device
from dreamperp.export.formats import TEXTURED_FORMATS, mesh_files
from dreamperp.export.surface import LevelFit, extract_surface, fit_level
from dreamperp.files import atomic_write_bytes, make_output_folder
from dreamperp.images import to_uint8

FIDELITY_NAME = "fidelity.json"
VISIBILITY_VIEWS = 32
VISIBILITY_SIZE = 256


@dataclass
class Timings:
    """Seconds per export stage, in order: wall clock, and the CPU time of this process (all its
    threads), which a machine shared with other jobs inflates less."""

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

    def total(self) -> float:
        return sum(self.seconds.values())

    def summary(self) -> str:
        parts = [f"{name} {sec:.1f} s" for name, sec in self.seconds.items()]
        cpu = sum(self.cpu_seconds.values())
        return ", ".join(parts) + f" (total {self.total():.1f} s wall, {cpu:.1f} s CPU)"


# -------------------------------------------------------------------------------------- arguments
@dataclass
class ExportArgs:
    """Checked export settings: the command's flags over the run's ``export.*`` values."""

    formats: List[str]
    resolution: int
    threshold: Optional[float]  # None: auto
    faces: int
    texture: bool
    texture_size: int


def check_args(
    formats: Optional[Sequence[str]] = None,
    resolution: Any = None,
    threshold: Any = None,
    faces: Any = None,
    texture: Any = None,
    texture_size: Any = None,
) -> None:
    """UsageError, naming the flag and its config key, for the first bad value given (None: not given)."""
    for fmt in formats or ():
        if fmt not in MESH_FORMATS:
            raise UsageError(f"unknown mesh format {fmt!r}: use one of {', '.join(MESH_FORMATS)}")
    if resolution is not None:
        positive_int(resolution, "--resolution (export.resolution)", minimum=8)
    parse_threshold(threshold, "--threshold (export.threshold)")
    if faces is not None and (isinstance(faces, bool) or int(faces) != faces or int(faces) < 0):
        raise UsageError(f"--faces must be an integer >= 0 (0 keeps every face; export.faces), got {faces}")
    if texture is not None:
        parse_on_off(texture, "--texture (export.texture)")
    if texture_size is not None and (int(texture_size) != texture_size or int(texture_size) not in TEXTURE_SIZES):
        raise UsageError(f"--texture-size must be a power of two from {TEXTURE_SIZES[0]} to {TEXTURE_SIZES[-1]} (export.texture_size), got {texture_size}")


def resolve_args(ex: Any, **given: Any) -> ExportArgs:
    """The flags in ``given`` (None: not given) over the run's ``ex`` (``cfg.export``), checked by :func:`check_args`."""
    values = {k: (getattr(ex, k) if given.get(k) is None else given[k]) for k in ("formats", "resolution", "threshold", "faces", "texture", "texture_size")}
    check_args(**values)
    return ExportArgs(
        formats=list(dict.fromkeys(values["formats"])),  # unique, in order
        resolution=int(values["resolution"]),
        threshold=parse_threshold(values["threshold"], "--threshold (export.threshold)"),
        faces=int(values["faces"]),
        texture=parse_on_off(values["texture"], "--texture (export.texture)"),
        texture_size=int(values["texture_size"]),
    )


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


# --------------------------------------------------------------------------------------- pipeline
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
    fit: Optional[LevelFit] = None
    unseen_faces: float = 0.0  # share of the marching-cubes faces no view of the orbit saw (removed)
    seen_area: float = 1.0  # share of the final surface's area a denser orbit sees

    @property
    def final(self) -> "trimesh.Trimesh":  # noqa: F821
        return self.textured if self.textured is not None else self.coloured


@torch.no_grad()
def vertex_albedo(scene: Any, vertices: np.ndarray, chunk: int = 1 << 18) -> np.ndarray:
    """RGBA uint8 ``[V, 4]``: ``scene.albedo`` at ``vertices [V, 3]``, queried in chunks on the scene's device."""
    pts = torch.from_numpy(np.asarray(vertices, dtype=np.float32)).to(scene_device(scene))
    albedo = to_uint8(torch.cat([scene.albedo(p).float().cpu() for p in pts.split(chunk)], 0))
    return np.concatenate([albedo, np.full((len(albedo), 1), 255, dtype=np.uint8)], 1)


@torch.no_grad()
def extract_mesh(
    scene: Any, bound: float, resolution: int = 256, threshold: Optional[float] = None, min_component_ratio: float = 0.05, *, progress: bool = False
) -> "trimesh.Trimesh":  # noqa: F821
    """:func:`~dreamperp.export.surface.extract_surface` as a ``trimesh.Trimesh`` (z-up) with albedo
    RGBA uint8 vertex colours and ``metadata["threshold"]``; not decimated."""
    import trimesh

    surf = extract_surface(scene, bound, resolution, threshold, min_component_ratio, progress=progress)
    mesh = trimesh.Trimesh(vertices=surf.vertices, faces=surf.faces, vertex_colors=vertex_albedo(scene, surf.vertices), process=False)
    mesh.metadata["threshold"] = surf.level
    return mesh


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
    """Level → marching cubes → faces no view of a dense orbit sees removed → floaters dropped →
    decimation to ``faces`` (0: keep all) → (``texture``) xatlas + bake, and (``vertex_colours``)
    the albedo at the decimated vertices."""
    import trimesh

    from dreamperp.export.decimate import decimate
    from dreamperp.export.raster import face_areas, visible_faces
    from dreamperp.export.surface import drop_faces, keep_large_components
    from dreamperp.export.texture import bake_albedo, uv_atlas

    timings = timings or Timings()
    with timings.stage("level"):
        fit = fit_level(scene, bound) if threshold is None else None
    with timings.stage("marching cubes"):
        surf = extract_surface(scene, bound, resolution, threshold, 0.0, fit=fit, progress=progress)
    faces_before = len(surf.faces)
    with timings.stage("visibility"):
        seen = visible_faces(torch.from_numpy(surf.vertices), torch.from_numpy(surf.faces), bound, views=VISIBILITY_VIEWS, size=VISIBILITY_SIZE).numpy()
        vertices, tris = drop_faces(surf.vertices, surf.faces, seen) if seen.any() else (surf.vertices, surf.faces)
        vertices, tris = keep_large_components(vertices, tris, min_component_ratio)
    with timings.stage("decimation"):
        vertices, tris = decimate(vertices, tris, faces)
    with timings.stage("visibility"):
        # the share of the final surface a denser, interleaved orbit sees (the target: >= 95 %)
        v_t, f_t = torch.from_numpy(vertices), torch.from_numpy(tris)
        check = visible_faces(v_t, f_t, bound, views=2 * VISIBILITY_VIEWS, size=VISIBILITY_SIZE, offset=0.25).numpy()
        area = face_areas(v_t, f_t).numpy()
        seen_area = float(area[check].sum() / max(area.sum(), 1e-30))
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
    return ExportedMesh(coloured, textured, surf.level, faces_before, timings, filled, surf.fit, float(1.0 - seen.mean()) if len(seen) else 0.0, seen_area)


def threshold_note(level: float, fit: Optional[LevelFit]) -> str:
    """How the iso-level was chosen, for the log."""
    if fit is None:
        return f"threshold {level:.4g}"
    return (
        f"threshold auto = {level:.4g} (read from the scene: silhouette IoU {fit.iou:.3f} against the half-opacity surface "
        f"of {fit.rays} rays, median depth offset {fit.depth_error:.4f})"
    )


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
    fidelity: bool = True,
    progress: bool = True,
    name: str = "mesh",
    log: Optional[Callable[[str], None]] = None,
    fidelity_log: Optional[Callable[[str], None]] = None,
    timings: Optional[Timings] = None,
) -> list[Path]:
    """Extract the mesh of ``scene`` and write ``out_dir/<name>.<fmt>`` for each format, atomically,
    then (``fidelity``) compare it with the scene and write ``out_dir/fidelity.json``.

    ``cfg`` is the run's Config: ``cfg.scene.bound`` and the ``cfg.export`` defaults for any argument
    left None. ``threshold``: a float, 'auto', or None. ``texture`` applies to glb/obj (ply always
    has vertex colours). ``log`` gets the chosen threshold, the face counts, the stage timings and,
    last, the fidelity line (``fidelity_log`` instead, when given). Returns the written mesh paths (a textured OBJ also writes
    ``<name>.mtl`` and ``<name>.png``). Raises UsageError for bad arguments or an empty/all-solid
    field, before writing anything.
    """
    from dreamperp.export.fidelity import check_fidelity, fidelity_line

    args = resolve_args(cfg.export, formats=formats, resolution=resolution, threshold=threshold, faces=faces, texture=texture, texture_size=texture_size)
    textured_formats = [f for f in args.formats if f in TEXTURED_FORMATS] if args.texture else []
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        make_output_folder(out_dir)  # raises the one-line error now, not after minutes of work
    timings = timings or Timings()
    built = build_meshes(
        scene,
        float(cfg.scene.bound),
        resolution=args.resolution,
        threshold=args.threshold,
        min_component_ratio=cfg.export.min_component_ratio,
        faces=args.faces,
        texture=bool(textured_formats),
        vertex_colours=len(textured_formats) < len(args.formats),
        texture_size=args.texture_size,
        progress=progress,
        timings=timings,
    )
    paths = []
    with timings.stage("write"):
        for fmt in args.formats:
            mesh = built.textured if fmt in textured_formats else built.coloured
            for file_name, data in mesh_files(mesh, fmt, name).items():  # the main file last, once its .mtl/.png are in place
                written = atomic_write_bytes(out_dir / file_name, data)
            paths.append(written)
    fid = None
    if fidelity:
        with timings.stage("fidelity"):
            try:
                fid = check_fidelity(scene, cfg, built.final)
            except Exception as err:  # the mesh files are written; a failed check must not hide them
                if log is not None:
                    log(f"warning: fidelity check failed ({type(err).__name__}: {err}); the mesh files are complete")
    if log is not None:
        log(f"{threshold_note(built.level, built.fit)}; {built.faces_before} faces → {len(built.final.faces)} (budget {args.faces or 'all'})")
        log(f"mesh timings: {timings.summary()}")
    if fid is not None:
        record = {
            "mesh": [p.name for p in paths],
            "level": built.level,
            "threshold": "auto" if args.threshold is None else args.threshold,
            "level_fit": None if built.fit is None else vars(built.fit),
            "faces_marching_cubes": built.faces_before,
            "faces": len(built.final.faces),
            "unseen_faces_removed": built.unseen_faces,
            "seen_area": built.seen_area,
            "resolution": args.resolution,
            "texture_size": args.texture_size if textured_formats else None,
            "seconds": {**timings.seconds, "total": timings.total()},
            "cpu_seconds": timings.cpu_seconds,
            **fid.to_dict(),
        }
        atomic_write_bytes(out_dir / FIDELITY_NAME, (json.dumps(record, indent=2, allow_nan=True) + "\n").encode())
        if (fidelity_log or log) is not None:
            (fidelity_log or log)(fidelity_line(fid))
    return paths
