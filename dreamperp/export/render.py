"""Render a trained run at given poses: ``dreamperp render RUN_DIR --cameras transforms.json --out DIR``.

Poses come from a NeRF-synthetic ``transforms.json`` (``camera_angle_x``, ``frames[].file_path``,
``frames[].transform_matrix`` in the OpenGL/Blender camera convention, as DESIGN.md section 2);
each view is written to ``DIR/<basename of file_path>.png``. The image size is, in order: ``--size``
(the width; the height keeps the aspect ratio of the file's images when they exist), the size of
the first frame's image, the file's top-level ``w``/``h``; otherwise it is an error. With
``--turntable N`` the run is rendered from N orbit views instead (``DIR/0000.png`` ...), at
``data.eval_elevation``/``eval_radius``/``eval_fov`` and ``--size`` (default 512).

Images are the albedo render composited on the run's evaluation background (multiview runs:
``data.background``, white for 'random'; text runs: the scene's own background), as 8-bit RGB.
"""

from __future__ import annotations

import argparse
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Optional, Sequence

import numpy as np
import torch

from dreamperp.errors import UsageError
from dreamperp.export.common import eval_background, load_run_for_eval, positive_int, scene_device, write_bytes_atomic

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".exr", ".webp", ".bmp", ".tif", ".tiff")
DEFAULT_TURNTABLE_SIZE = 512


@dataclass
class CameraFile:
    """Poses read from a transforms.json: ``c2w [N, 4, 4]``, horizontal fov, output names, image size."""

    path: Path
    c2w: torch.Tensor
    fovx_deg: float
    names: List[str]
    height: Optional[int]
    width: Optional[int]


def resolve_image(base: Path, file_path: str) -> Optional[Path]:
    """The image of a frame: ``base/file_path``, or with ``.png`` appended (NeRF-synthetic omits it)."""
    p = base / file_path
    for cand in (p, p.with_name(p.name + ".png")):
        if cand.is_file():
            return cand
    return None


def output_name(file_path: str) -> str:
    """``./test/r_0`` → ``r_0.png``; ``images/0001.jpg`` → ``0001.png``."""
    name = Path(file_path).name
    stem = name[: -len(Path(name).suffix)] if Path(name).suffix.lower() in IMAGE_SUFFIXES else name
    return f"{stem}.png"


def read_camera_file(path: str | Path) -> CameraFile:
    """Parse a NeRF-synthetic transforms.json (or a folder holding one) without loading images.

    Raises UsageError naming the file for anything malformed: bad JSON, no frames, a missing
    ``camera_angle_x``, a matrix that is not a finite invertible 4x4, duplicate output names.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "transforms.json"
    if not path.is_file():
        raise UsageError(f"camera file '{path}' does not exist (give a NeRF-synthetic transforms.json)")
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UsageError(f"camera file '{path}' is not valid JSON: {str(err).splitlines()[0]}") from None
    if not isinstance(meta, dict):
        raise UsageError(f"camera file '{path}' must hold a JSON object with 'camera_angle_x' and 'frames'")
    try:
        if "camera_angle_x" not in meta and "fl_x" in meta and "w" in meta:  # instant-ngp style intrinsics
            fovx = 2 * math.atan(float(meta["w"]) / (2 * float(meta["fl_x"])))
        else:
            fovx = float(meta["camera_angle_x"])
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        raise UsageError(f"camera file '{path}' needs a numeric 'camera_angle_x' (horizontal field of view in radians)") from None
    if not 0 < fovx < math.pi:
        raise UsageError(f"camera file '{path}': camera_angle_x must be in (0, pi) radians, got {fovx}")
    frames = meta.get("frames")
    if not isinstance(frames, list) or not frames:
        raise UsageError(f"camera file '{path}' has no 'frames' list (or it is empty)")
    mats, names, paths = [], [], []
    for i, frame in enumerate(frames):
        where = f"camera file '{path}', frame {i}"
        if not isinstance(frame, dict) or not isinstance(frame.get("file_path"), str):
            raise UsageError(f"{where}: needs a 'file_path' string")
        try:
            m = np.asarray(frame["transform_matrix"], dtype=np.float64)
        except (KeyError, TypeError, ValueError):
            raise UsageError(f"{where} ({frame['file_path']}): needs a 4x4 numeric 'transform_matrix'") from None
        if m.shape == (3, 4):
            m = np.concatenate([m, [[0.0, 0.0, 0.0, 1.0]]], 0)
        if m.shape != (4, 4) or not np.isfinite(m).all():
            raise UsageError(f"{where} ({frame['file_path']}): 'transform_matrix' must be a finite 4x4 matrix, got shape {m.shape}")
        if abs(np.linalg.det(m[:3, :3])) < 1e-8:
            raise UsageError(f"{where} ({frame['file_path']}): 'transform_matrix' is not invertible")
        mats.append(m)
        paths.append(frame["file_path"])
        names.append(output_name(frame["file_path"]))
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise UsageError(f"camera file '{path}': several frames would write the same image {sorted(dup)[0]!r}; give them distinct file names")
    height = width = None
    image = resolve_image(path.parent, paths[0])
    if image is not None:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(image) as im:
                width, height = im.size
        except (OSError, UnidentifiedImageError):
            raise UsageError(f"camera file '{path}': image '{image}' cannot be read") from None
    elif isinstance(meta.get("w"), (int, float)) and isinstance(meta.get("h"), (int, float)):
        width, height = int(meta["w"]), int(meta["h"])
    c2w = torch.from_numpy(np.stack(mats)).float()
    return CameraFile(path, c2w, math.degrees(fovx), names, height, width)


def output_size(cams: CameraFile, size: Optional[int]) -> tuple[int, int]:
    """(height, width) to render ``cams`` at, given ``--size`` (see the module docstring)."""
    if size is not None:
        size = positive_int(size, "--size")
        if cams.height and cams.width:
            return max(1, round(size * cams.height / cams.width)), size
        return size, size
    if cams.height and cams.width:
        return cams.height, cams.width
    raise UsageError(
        f"camera file '{cams.path}': cannot tell the image size (the first frame's image is missing and there are no 'w'/'h' keys); pass --size N"
    )


@torch.no_grad()
def render_to_pngs(scene: Any, cfg: Any, cams: Any, paths: Sequence[Path], *, progress: bool = True) -> List[Path]:
    """Render every camera of ``cams`` (a CameraBatch) and write 8-bit RGB PNGs to ``paths`` (atomically)."""
    from PIL import Image

    from dreamperp.export.video import render_views, to_uint8

    bg = eval_background(cfg, scene_device(scene))
    views = render_views(scene, cams, bg, need_normals=False)
    if progress:
        from tqdm import tqdm

        views = tqdm(views, total=len(paths), desc="render", unit="view", dynamic_ncols=True)
    written = []
    for out, path in zip(views, paths):
        buf = io.BytesIO()
        Image.fromarray(to_uint8(out["rgb"])).save(buf, format="PNG")
        written.append(write_bytes_atomic(Path(path), buf.getvalue()))
    return written


def render_command(args: argparse.Namespace) -> int:
    """``dreamperp render RUN_DIR (--cameras TRANSFORMS | --turntable N) --out DIR [--size N] [--checkpoint PATH]``."""
    from dreamperp.cameras import cameras_from_c2w

    if (args.cameras is None) == (args.turntable is None):
        raise UsageError("give exactly one of --cameras TRANSFORMS.json and --turntable N")
    out_dir = Path(args.out)
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"--out '{out_dir}' exists and is not a folder")
    if args.cameras is not None:
        cam_file = read_camera_file(args.cameras)  # checked before the (slow) run loading
        height, width = output_size(cam_file, args.size)
    else:
        n = positive_int(args.turntable, "--turntable")
        height = width = positive_int(args.size if args.size is not None else DEFAULT_TURNTABLE_SIZE, "--size")
    run = load_run_for_eval(args.run_dir, checkpoint=args.checkpoint)
    device = scene_device(run.scene)
    if args.cameras is not None:
        cams = cameras_from_c2w(cam_file.c2w.to(device), height, width, fovx_deg=cam_file.fovx_deg)
        paths = [out_dir / name for name in cam_file.names]
    else:
        from dreamperp.export.video import turntable_cameras

        cams = turntable_cameras(run.cfg, n, run.cfg.data.eval_elevation, width, device)
        paths = [out_dir / f"{i:04d}.png" for i in range(n)]
    out_dir.mkdir(parents=True, exist_ok=True)
    render_to_pngs(run.scene, run.cfg, cams, paths)
    print(f"{len(paths)} images ({width}x{height}) written to {out_dir}")
    return 0
