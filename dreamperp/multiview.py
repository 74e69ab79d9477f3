"""Multi-view datasets in the NeRF-synthetic ``transforms.json`` format, and ray sampling from them.

Format: ``camera_angle_x`` (horizontal fov, radians; or ``fl_x`` with ``w``) and ``frames``, each with
``file_path`` (relative to the json, with or without extension; ``.png`` is tried when missing) and a
4×4 (or 3×4) ``transform_matrix`` (camera-to-world, OpenGL/Blender camera: x right, y up, looking down −z;
z-up world as in docs/design.md §2). Images are RGB(A); missing alpha counts as opaque.
``aabb_scale`` and other keys are ignored.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
import torch
from torch import Tensor

from dreamperp.cameras import (
    CameraBatch,
    cameras_from_c2w,
    fov_x_to_y,
    pixel_directions,
)
from dreamperp.config import Config
from dreamperp.errors import UsageError, first_line

# RGB of each data.background; 'random' is a training-time augmentation, and evaluation composites
# on white like the NeRF-synthetic benchmarks.
_BACKGROUND_RGB = {"white": (1.0, 1.0, 1.0), "black": (0.0, 0.0, 0.0), "random": (1.0, 1.0, 1.0)}


@dataclass
class RayBatch:
    """Training rays with their targets, all ``[n, ...]``.

    ``rgb`` is the image colour composited on ``bg_color`` (render the prediction on the same
    ``bg_color``); ``alpha`` is the image alpha.
    """

    rays_o: Tensor  # [n, 3]
    rays_d: Tensor  # [n, 3] unit
    rgb: Tensor  # [n, 3]
    alpha: Tensor  # [n, 1]
    bg_color: Tensor  # [n, 3]


@dataclass
class MultiviewDataset:
    """Posed RGBA images: ``images [N, H, W, 4]`` float in [0, 1] (None when loaded without images),
    ``c2w [N, 4, 4]``, horizontal ``fovx_deg``, and the resolved image ``file_paths``.

    ``height``/``width`` are None only when loaded without images and the size is unknown (see
    :func:`load_transforms`); ``names`` are the basenames of the frames' ``file_path``."""

    path: Path
    c2w: Tensor
    fovx_deg: float
    height: Optional[int]
    width: Optional[int]
    file_paths: List[Path]
    images: Optional[Tensor] = None
    names: List[str] = field(default_factory=list)

    def __len__(self) -> int:
        return self.c2w.shape[0]

    @property
    def fovy_deg(self) -> float:
        return float(fov_x_to_y(self.fovx_deg, *self._require_size()))

    def cameras(self, device: torch.device | str | None = None, height: Optional[int] = None, width: Optional[int] = None) -> CameraBatch:
        """All poses as a :class:`CameraBatch`, at the images' size or ``height`` × ``width`` (same
        vertical fov; with the size unknown, both are needed and the horizontal fov is kept)."""
        if self.height is None or self.width is None:
            if height is None or width is None:
                self._require_size()
            cams = cameras_from_c2w(self.c2w, height, width, fovx_deg=self.fovx_deg)
        else:
            cams = cameras_from_c2w(self.c2w, self.height, self.width, fovx_deg=self.fovx_deg)
            if height is not None or width is not None:
                cams = cams.resized(height or self.height, width or self.width)
        return cams.to(device or "cpu")

    def composited(self, background: str | Tensor = "white") -> Tensor:
        """RGB images ``[N, H, W, 3]`` over a background ('white', 'black' or an RGB tensor)."""
        images = self._require_images()
        bg = background_color(background, images.shape[:-1] + (3,), images.device)
        return images[..., :3] * images[..., 3:] + bg * (1.0 - images[..., 3:])

    def sample_rays(
        self,
        n: int,
        *,
        background: str = "white",
        device: torch.device | str | None = None,
        generator: Optional[torch.Generator] = None,
    ) -> RayBatch:
        """``n`` random pixels drawn uniformly over all images, with their rays and targets.

        ``background``: 'white', 'black' or 'random' (a uniform random colour per ray).
        """
        images = self._require_images()
        count, h, w = images.shape[0], self.height, self.width
        flat = torch.randint(0, count * h * w, (n,), generator=generator)
        view, pix = flat // (h * w), flat % (h * w)
        rows, cols = pix // w, pix % w
        cams = self.cameras()
        rays_d = pixel_directions(cams, view, rows, cols)
        rays_o = cams.c2w[view, :3, 3]
        rgba = images[view, rows, cols]
        if background == "random":
            bg = torch.rand(n, 3, generator=generator)
        else:
            bg = background_color(background, (n, 3), rgba.device)
        rgb = rgba[:, :3] * rgba[:, 3:] + bg * (1.0 - rgba[:, 3:])
        dev = device or "cpu"
        return RayBatch(rays_o.to(dev), rays_d.to(dev), rgb.to(dev), rgba[:, 3:].to(dev), bg.to(dev))

    def _require_size(self) -> Tuple[int, int]:
        if self.height is None or self.width is None:
            raise ValueError(f"the image size of '{self.path}' is unknown (no image and no 'w'/'h'); give height and width")
        return self.height, self.width

    def _require_images(self) -> Tensor:
        if self.images is None:
            raise ValueError("this dataset was loaded without images (load_images=False)")
        return self.images


def background_color(background: str | Tensor, shape: Tuple[int, ...], device: torch.device | str) -> Tensor:
    """'white' / 'black' / an RGB tensor → a colour tensor broadcast to ``shape`` (last dim 3)."""
    if isinstance(background, Tensor):
        return background.to(device=device, dtype=torch.float32).expand(shape)
    if background in ("white", "black"):
        return torch.tensor(_BACKGROUND_RGB[background], device=device).expand(shape)
    raise ValueError(f"background must be 'white', 'black' or an RGB tensor here, got {background!r}")


def eval_background(cfg: Config, device: torch.device | str) -> Optional[Tensor]:
    """Background colour ``[3]`` for evaluation renders, or None for the scene's own background.

    Multiview runs were fitted to images composited on ``data.background``, so their renders use
    that colour ('random' → white); text runs show the learned/solid background of the scene.
    """
    if cfg.data.type == "multiview":
        return torch.tensor(_BACKGROUND_RGB[cfg.data.background], dtype=torch.float32, device=device)
    return None


# --------------------------------------------------------------------------------------- loading
# Suffixes a frame's file_path may end with; any other path gets '.png' appended (NeRF-synthetic
# writes 'train/r_0' for train/r_0.png).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".exr", ".webp", ".bmp", ".tif", ".tiff")


def _resolve_json(path: str | Path, source: str) -> Path:
    p = Path(path)
    if p.is_dir():
        candidate = p / "transforms.json"
        if not candidate.is_file():
            raise UsageError(f"no transforms.json in folder '{p}' ({source} must be a transforms.json or the folder holding it)")
        return candidate
    if not p.is_file():
        raise UsageError(f"'{p}' does not exist ({source} must be a NeRF-synthetic transforms.json or the folder holding it)")
    return p


def _image_path(json_path: Path, file_path: str) -> Path:
    base = json_path.parent / file_path
    if base.is_file() or base.suffix.lower() in IMAGE_SUFFIXES:
        return base
    return base.with_name(base.name + ".png")


def read_image(path: Path) -> np.ndarray:
    """An RGB(A) image as float32 ``[H, W, 4]`` in [0, 1] (alpha 1 when absent)."""
    import imageio.v3 as iio

    try:
        img = np.asarray(iio.imread(path))
    except Exception as err:
        raise UsageError(f"could not read image '{path}': {first_line(err)}") from None
    if img.dtype == np.uint8:
        data = img.astype(np.float32) / 255.0
    elif img.dtype == np.uint16:
        data = img.astype(np.float32) / 65535.0
    else:
        data = np.clip(img.astype(np.float32), 0.0, 1.0)
    if data.ndim == 2:
        data = data[..., None]
    if data.ndim != 3 or data.shape[-1] not in (1, 2, 3, 4):
        raise UsageError(f"image '{path}' has an unsupported shape {tuple(img.shape)}; expected H x W x 3 or 4")
    if data.shape[-1] in (1, 2):  # grey (+ alpha)
        grey, alpha = data[..., :1], data[..., 1:] if data.shape[-1] == 2 else np.ones_like(data[..., :1])
        data = np.concatenate([grey, grey, grey, alpha], -1)
    elif data.shape[-1] == 3:
        data = np.concatenate([data, np.ones_like(data[..., :1])], -1)
    return data


def image_size(path: Path) -> Tuple[int, int]:
    """``(height, width)`` of an image, from its header where Pillow can read it (no decoding)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.size[1], im.size[0]
    except Exception:  # formats Pillow does not know (EXR): decode; a UsageError when unreadable
        return read_image(path).shape[:2]


def _json_size(json_path: Path, meta: dict) -> Optional[Tuple[int, int]]:
    """The json's ``(h, w)`` when both keys are there."""
    if "w" not in meta or "h" not in meta:
        return None
    try:
        height, width = int(meta["h"]), int(meta["w"])
    except (TypeError, ValueError):
        height = width = 0
    if height < 1 or width < 1:
        raise UsageError(f"'{json_path}': 'w' and 'h' must be positive image sizes in pixels, got w={meta['w']!r}, h={meta['h']!r}")
    return height, width


def _fovx_deg(json_path: Path, meta: dict, width: Optional[int]) -> float:
    """Horizontal fov in degrees from ``camera_angle_x``, else ``fl_x`` with ``w`` (or the image width)."""
    if "camera_angle_x" in meta:
        try:
            fovx = math.degrees(float(meta["camera_angle_x"]))
        except (TypeError, ValueError):
            raise UsageError(f"'{json_path}': camera_angle_x must be a number (radians), got {meta['camera_angle_x']!r}") from None
    elif "fl_x" in meta:
        w_meta = meta.get("w", width)
        if w_meta is None:
            raise UsageError(f"'{json_path}': 'fl_x' without 'camera_angle_x' needs 'w' (the image width in pixels that fl_x refers to)")
        try:
            focal, w_px = float(meta["fl_x"]), float(w_meta)
        except (TypeError, ValueError):
            focal = w_px = 0.0
        if not (focal > 0 and w_px > 0):
            raise UsageError(f"'{json_path}': 'fl_x' and 'w' must be positive numbers (pixels), got fl_x={meta['fl_x']!r}, w={w_meta!r}")
        fovx = math.degrees(2 * math.atan(w_px / (2 * focal)))
    else:
        raise UsageError(f"'{json_path}' has no 'camera_angle_x' (horizontal field of view in radians)")
    if not (0 < fovx < 180):
        raise UsageError(f"'{json_path}': camera_angle_x must be in (0, pi) radians, got {math.radians(fovx)}")
    return fovx


def load_transforms(path: str | Path, *, load_images: bool = True, source: str = "data.path") -> MultiviewDataset:
    """Read a NeRF-synthetic ``transforms.json`` (or the folder holding one).

    Raises :class:`UsageError` naming the file for: a missing file, invalid JSON, missing keys,
    a frame whose image is missing, unreadable or of a different size than the first, and a pose
    that is not a finite, invertible 4×4 matrix (3×4 is completed with ``0 0 0 1``). ``source``
    names the setting the path came from in those messages. With ``load_images=False`` only poses
    are read and no image has to exist: the size is the first frame's image's (from its header),
    else the json's ``w``/``h``, else unknown (``height``/``width`` None).
    """
    json_path = _resolve_json(path, source)
    try:
        meta = json.loads(json_path.read_text())
    except json.JSONDecodeError as err:
        raise UsageError(f"'{json_path}' is not valid JSON: {err.msg} (line {err.lineno}, column {err.colno})") from None
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(f"could not read '{json_path}': {err}") from None
    if not isinstance(meta, dict):
        raise UsageError(f"'{json_path}' must hold a JSON object with 'camera_angle_x' and 'frames'")
    frames = meta.get("frames")
    if not isinstance(frames, list) or not frames:
        raise UsageError(f"'{json_path}' has no 'frames' list (or it is empty)")

    poses, paths, names = [], [], []
    for i, frame in enumerate(frames):
        if not isinstance(frame, dict) or not isinstance(frame.get("file_path"), str) or "transform_matrix" not in frame:
            raise UsageError(f"'{json_path}': frame {i} needs 'file_path' (a string) and 'transform_matrix'")
        where = f"'{json_path}': frame {i} ('{frame['file_path']}')"
        try:
            pose = np.asarray(frame["transform_matrix"], dtype=np.float64)
        except (TypeError, ValueError):
            raise UsageError(f"{where} has a transform_matrix that is not a 4x4 array of numbers") from None
        if pose.shape == (3, 4):
            pose = np.concatenate([pose, [[0.0, 0.0, 0.0, 1.0]]], 0)
        if pose.shape != (4, 4):
            raise UsageError(f"{where} has a transform_matrix of shape {pose.shape}, expected 4x4")
        if not np.all(np.isfinite(pose)):
            raise UsageError(f"{where} has a non-finite transform_matrix")
        if abs(np.linalg.det(pose[:3, :3])) < 1e-6 or abs(np.linalg.det(pose)) < 1e-9:
            raise UsageError(
                f"{where} has a non-invertible transform_matrix (determinant {np.linalg.det(pose):.3g}); a camera pose that is not invertible cannot be used"
            )
        poses.append(pose)
        paths.append(_image_path(json_path, frame["file_path"]))
        names.append(Path(frame["file_path"]).name)

    images = None
    size: Optional[Tuple[int, int]] = None
    if load_images:
        arrays = []
        for i, img_path in enumerate(paths):
            if not img_path.is_file():
                raise UsageError(f"'{json_path}': frame {i} image '{img_path}' does not exist")
            img = read_image(img_path)
            if arrays and img.shape[:2] != arrays[0].shape[:2]:
                raise UsageError(
                    f"'{json_path}': frame {i} image '{img_path}' is {img.shape[1]}x{img.shape[0]} but the first image is "
                    f"{arrays[0].shape[1]}x{arrays[0].shape[0]}; all images must have the same size"
                )
            arrays.append(img)
        images = torch.from_numpy(np.stack(arrays, 0))
        size = images.shape[1], images.shape[2]
    elif paths[0].is_file():
        size = image_size(paths[0])
    else:
        size = _json_size(json_path, meta)
    height, width = (None, None) if size is None else (int(size[0]), int(size[1]))

    return MultiviewDataset(
        path=json_path,
        c2w=torch.from_numpy(np.stack(poses, 0)).float(),
        fovx_deg=_fovx_deg(json_path, meta, width),
        height=height,
        width=width,
        file_paths=paths,
        images=images,
        names=names,
    )
