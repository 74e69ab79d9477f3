"""Render a trained run at given poses, the library of ``dreamperp render`` (:mod:`dreamperp.commands.render`).

Poses come from a NeRF-synthetic ``transforms.json`` (``camera_angle_x``, ``frames[].file_path``,
``frames[].transform_matrix`` in the OpenGL/Blender camera convention, as docs/design.md §2);
each view is written to ``DIR/<basename of file_path>.png``. The image size is, in order: ``--size``
(the width; the height keeps the aspect ratio of the file's images when they exist), the size of
the first frame's image, the file's top-level ``w``/``h``; otherwise it is an error. With
``--turntable N`` the run is rendered from N orbit views instead (``DIR/0000.png`` ...), at
``data.eval_elevation``/``eval_radius``/``eval_fov`` and ``--size`` (default 512).

Images are the albedo render composited on the run's evaluation background (multiview runs:
``data.background``, white for 'random'; text runs: the scene's own background), as 8-bit RGB.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Optional, Sequence

import torch

from dreamperp.errors import UsageError
from dreamperp.export.common import positive_int, scene_device
from dreamperp.files import atomic_write_bytes
from dreamperp.images import png_bytes, to_uint8
from dreamperp.multiview import (
    IMAGE_SUFFIXES,
    MultiviewDataset,
    eval_background,
    load_transforms,
)

DEFAULT_TURNTABLE_SIZE = 512


@dataclass
class CameraFile:
    """The poses of a transforms.json (read by :func:`dreamperp.multiview.load_transforms` without
    images) and the output image name of each frame."""

    poses: MultiviewDataset
    names: List[str]

    @property
    def path(self) -> Path:
        return self.poses.path

    @property
    def c2w(self) -> torch.Tensor:
        """``[N, 4, 4]`` camera-to-world (OpenGL camera)."""
        return self.poses.c2w

    @property
    def fovx_deg(self) -> float:
        return self.poses.fovx_deg

    @property
    def height(self) -> Optional[int]:
        return self.poses.height

    @property
    def width(self) -> Optional[int]:
        return self.poses.width


def output_name(file_path: str) -> str:
    """``./test/r_0`` → ``r_0.png``; ``images/0001.jpg`` → ``0001.png``."""
    name = Path(file_path).name
    stem = name[: -len(Path(name).suffix)] if Path(name).suffix.lower() in IMAGE_SUFFIXES else name
    return f"{stem}.png"


def read_camera_file(path: str | Path) -> CameraFile:
    """Parse a NeRF-synthetic transforms.json (or a folder holding one) without loading images.

    Raises UsageError naming the file for anything malformed (see ``load_transforms``) and for
    frames that would write the same output image.
    """
    poses = load_transforms(path, load_images=False, source="--cameras")
    names = [output_name(name) for name in poses.names]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise UsageError(f"camera file '{poses.path}': several frames would write the same image {sorted(dup)[0]!r}; give them distinct file names")
    return CameraFile(poses, names)


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
    from dreamperp.export.video import render_views

    bg = eval_background(cfg, scene_device(scene))
    views = render_views(scene, cams, bg, need_normals=False)
    if progress:
        from tqdm import tqdm

        views = tqdm(views, total=len(paths), desc="render", unit="view", dynamic_ncols=True)
    written = []
    for out, path in zip(views, paths):
        written.append(atomic_write_bytes(Path(path), png_bytes(to_uint8(out["rgb"]))))
    return written
