"""Multi-view datasets in the NeRF-synthetic ``transforms.json`` format, and ray sampling from them.

Format: ``camera_angle_x`` (horizontal fov, radians; or ``fl_x`` with ``w``) and ``frames``, each with
``file_path`` (relative to the json, with or without extension; ``.png`` is tried when missing) and a
4×4 ``transform_matrix`` (camera-to-world, OpenGL/Blender camera: x right, y up, looking down −z;
z-up world as in DESIGN.md section 2). Images are RGB(A); missing alpha counts as opaque.
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

from dreamperp.cameras import CameraBatch, cameras_from_c2w, fov_x_to_y, pixel_directions
from dreamperp.errors import UsageError

BACKGROUNDS = ("white", "black", "random")


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
    ``c2w [N, 4, 4]``, horizontal ``fovx_deg``, and the resolved image ``file_paths``."""

    path: Path
    c2w: Tensor
    fovx_deg: float
    height: int
    width: int
    file_paths: List[Path]
    images: Optional[Tensor] = None
    names: List[str] = field(default_factory=list)

    def __len__(self) -> int:
        return self.c2w.shape[0]

    @property
    def fovy_deg(self) -> float:
        return float(fov_x_to_y(self.fovx_deg, self.height, self.width))

    def cameras(self, device: torch.device | str | None = None, height: Optional[int] = None, width: Optional[int] = None) -> CameraBatch:
        """All poses as a :class:`CameraBatch`, at the images' size or ``height`` × ``width`` (same fov)."""
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

    def _require_images(self) -> Tensor:
        if self.images is None:
            raise ValueError("this dataset was loaded without images (load_images=False)")
        return self.images


def background_color(background: str | Tensor, shape: Tuple[int, ...], device: torch.device | str) -> Tensor:
    """'white' / 'black' / an RGB tensor → a colour tensor broadcast to ``shape`` (last dim 3)."""
    if isinstance(background, Tensor):
        return background.to(device=device, dtype=torch.float32).expand(shape)
    if background == "white":
        return torch.ones(shape, device=device)
    if background == "black":
        return torch.zeros(shape, device=device)
    raise ValueError(f"background must be 'white', 'black' or an RGB tensor here, got {background!r}")


# --------------------------------------------------------------------------------------- loading
def _resolve_json(path: str | Path) -> Path:
    p = Path(path)
    if p.is_dir():
        candidate = p / "transforms.json"
        if not candidate.is_file():
            raise UsageError(f"no transforms.json in folder '{p}' (data.path must be a transforms.json or the folder holding it)")
        return candidate
    if not p.is_file():
        raise UsageError(f"'{p}' does not exist (data.path must be a NeRF-synthetic transforms.json or the folder holding it)")
    return p


def _image_path(json_path: Path, file_path: str) -> Path:
    base = json_path.parent / file_path
    if base.is_file() or base.suffix.lower() in (".png", ".jpg", ".jpeg", ".exr", ".webp"):
        return base
    return base.with_name(base.name + ".png")  # NeRF-synthetic writes 'train/r_0' for train/r_0.png


def read_image(path: Path) -> np.ndarray:
    """An RGB(A) image as float32 ``[H, W, 4]`` in [0, 1] (alpha 1 when absent)."""
    import imageio.v3 as iio

    try:
        img = np.asarray(iio.imread(path))
    except Exception as err:
        raise UsageError(f"could not read image '{path}': {str(err).splitlines()[0] if str(err) else type(err).__name__}") from None
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


def load_transforms(path: str | Path, *, load_images: bool = True) -> MultiviewDataset:
    """Read a NeRF-synthetic ``transforms.json`` (or the folder holding one).

    Raises :class:`UsageError` naming the file for: a missing file, invalid JSON, missing keys,
    a frame whose image is missing, unreadable or of a different size than the first, and a pose
    that is not a finite, invertible 4×4 matrix. With ``load_images=False`` only poses are read;
    the size comes from the json's ``w``/``h`` or else from the first image's header.
    """
    json_path = _resolve_json(path)
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
        if not isinstance(frame, dict) or "file_path" not in frame or "transform_matrix" not in frame:
            raise UsageError(f"'{json_path}': frame {i} needs 'file_path' and 'transform_matrix'")
        try:
            pose = np.asarray(frame["transform_matrix"], dtype=np.float64)
        except (TypeError, ValueError):
            raise UsageError(f"'{json_path}': frame {i} ('{frame['file_path']}') has a transform_matrix that is not a 4x4 array of numbers") from None
        if pose.shape == (3, 4):
            pose = np.concatenate([pose, [[0.0, 0.0, 0.0, 1.0]]], 0)
        if pose.shape != (4, 4):
            raise UsageError(f"'{json_path}': frame {i} ('{frame['file_path']}') has a transform_matrix of shape {pose.shape}, expected 4x4")
        if not np.all(np.isfinite(pose)):
            raise UsageError(f"'{json_path}': frame {i} ('{frame['file_path']}') has a non-finite transform_matrix")
        if abs(np.linalg.det(pose[:3, :3])) < 1e-6 or abs(np.linalg.det(pose)) < 1e-9:
            raise UsageError(f"'{json_path}': frame {i} ('{frame['file_path']}') has a non-invertible transform_matrix")
        poses.append(pose)
        paths.append(_image_path(json_path, str(frame["file_path"])))
        names.append(Path(str(frame["file_path"])).name)

    images = None
    height = width = None
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
        height, width = images.shape[1], images.shape[2]
    elif "w" in meta and "h" in meta:
        width, height = int(meta["w"]), int(meta["h"])
    else:
        if not paths[0].is_file():
            raise UsageError(f"'{json_path}': frame 0 image '{paths[0]}' does not exist, and no 'w'/'h' give the image size")
        height, width = read_image(paths[0]).shape[:2]

    if "camera_angle_x" in meta:
        try:
            fovx = math.degrees(float(meta["camera_angle_x"]))
        except (TypeError, ValueError):
            raise UsageError(f"'{json_path}': camera_angle_x must be a number (radians), got {meta['camera_angle_x']!r}") from None
    elif "fl_x" in meta:
        w_meta = float(meta.get("w", width))
        fovx = math.degrees(2 * math.atan(w_meta / (2 * float(meta["fl_x"]))))
    else:
        raise UsageError(f"'{json_path}' has no 'camera_angle_x' (horizontal field of view in radians)")
    if not (0 < fovx < 180):
        raise UsageError(f"'{json_path}': camera_angle_x must be in (0, pi) radians, got {math.radians(fovx)}")

    return MultiviewDataset(
        path=json_path,
        c2w=torch.from_numpy(np.stack(poses, 0)).float(),
        fovx_deg=fovx,
        height=int(height),
        width=int(width),
        file_paths=paths,
        images=images,
        names=names,
    )
