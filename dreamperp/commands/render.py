"""``dreamperp render RUN_DIR (--cameras TRANSFORMS | --turntable N) --out DIR``: a trained run at
given poses, one PNG a view (the camera file, the sizes and the rendering are :mod:`dreamperp.export.render`'s)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from dreamperp.errors import UsageError
from dreamperp.export.common import positive_int, scene_device
from dreamperp.export.render import DEFAULT_TURNTABLE_SIZE, CameraFile, output_size, read_camera_file, render_to_pngs
from dreamperp.runs.checkpoint import load_run


@dataclass
class RenderRequest:
    """What to render, checked: the output folder, the image size, and either a camera file or a turntable."""

    out_dir: Path
    height: int
    width: int
    camera_file: Optional[CameraFile] = None  # --cameras
    turntable: int = 0  # --turntable N (0 with --cameras)


def check_inputs(args: argparse.Namespace) -> RenderRequest:
    """Every flag, and the camera file, before the (slow) run loading: UsageError naming what is wrong."""
    if (args.cameras is None) == (args.turntable is None):
        raise UsageError("give exactly one of --cameras TRANSFORMS.json and --turntable N")
    out_dir = Path(args.out)
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"--out '{out_dir}' exists and is not a folder")
    if args.cameras is not None:
        camera_file = read_camera_file(args.cameras)
        height, width = output_size(camera_file, args.size)
        return RenderRequest(out_dir, height, width, camera_file=camera_file)
    n = positive_int(args.turntable, "--turntable")
    size = positive_int(args.size if args.size is not None else DEFAULT_TURNTABLE_SIZE, "--size")
    return RenderRequest(out_dir, size, size, turntable=n)


def render_command(args: argparse.Namespace) -> int:
    """``dreamperp render RUN_DIR (--cameras TRANSFORMS | --turntable N) --out DIR [--size N] [--checkpoint PATH]``."""
    from dreamperp.cameras import cameras_from_c2w
    from dreamperp.export.video import turntable_cameras

    # 1. Check the flags and read the camera file, before the (slow) run loading.
    req = check_inputs(args)

    # 2. Load the run: its newest checkpoint, or --checkpoint.
    run = load_run(args.run_dir, checkpoint=args.checkpoint)
    device = scene_device(run.scene)

    # 3. The cameras and each one's output file.
    if req.camera_file is not None:
        cams = cameras_from_c2w(req.camera_file.c2w.to(device), req.height, req.width, fovx_deg=req.camera_file.fovx_deg)
        paths = [req.out_dir / name for name in req.camera_file.names]
    else:
        cams = turntable_cameras(run.cfg, req.turntable, run.cfg.data.eval_elevation, req.width, device)
        paths = [req.out_dir / f"{i:04d}.png" for i in range(req.turntable)]

    # 4. The output folder.
    try:
        req.out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:  # e.g. a parent of --out is a file
        raise UsageError(f"cannot create the --out folder '{req.out_dir}': {err.strerror} (choose another --out)") from None

    # 5. Render and write the PNGs.
    render_to_pngs(run.scene, run.cfg, cams, paths)
    print(f"{len(paths)} images ({req.width}x{req.height}) written to {req.out_dir}")
    return 0
