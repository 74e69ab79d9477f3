"""Image helpers shared by validation grids, 2D samples, videos and renders.

Float images are in [0, 1] (``[H, W, 3]`` or ``[N, H, W, 3]``, NumPy or torch); 8-bit images are
NumPy ``uint8``. There is one conversion, :func:`to_uint8`, used for every file dreamperp writes.
"""

from __future__ import annotations

import io
import math
from typing import Sequence

import numpy as np


def to_uint8(images) -> np.ndarray:  # noqa: ANN001 - a NumPy array or a torch tensor
    """Float [0, 1] → uint8 as ``round(clip(x, 0, 1) · 255)``, rounding half to even: the rule of
    diffusers' ``numpy_to_pil``, so 2D samples match diffusers' own pipelines pixel for pixel."""
    if hasattr(images, "detach"):
        images = images.detach().float().cpu().numpy()
    return np.round(np.clip(np.asarray(images, dtype=np.float32), 0.0, 1.0) * 255).astype(np.uint8)


def png_bytes(image: np.ndarray) -> bytes:
    """A uint8 ``[H, W, 3]`` (or ``[H, W]``) image encoded as PNG."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def make_grid(images: np.ndarray) -> np.ndarray:
    """``[N, H, W, 3]`` uint8 → one image with ceil(sqrt(N)) columns (blank cells black)."""
    n, h, w, c = images.shape
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = np.zeros((rows * h, cols * w, c), dtype=images.dtype)
    for k in range(n):
        r, q = divmod(k, cols)
        grid[r * h : (r + 1) * h, q * w : (q + 1) * w] = images[k]
    return grid


def labeled_grid(tiles: np.ndarray, col_names: Sequence[str], row_names: Sequence[str], gap: int = 2) -> np.ndarray:
    """Tiles ``[R, C, S, S, 3]`` uint8 → one image with a header of column names and row names on the left."""
    from PIL import Image, ImageDraw

    r, c, s = tiles.shape[0], tiles.shape[1], tiles.shape[2]
    header, left = 14, 50
    height = header + r * s + (r - 1) * gap
    width = left + c * s + (c - 1) * gap
    img = Image.new("RGB", (width, height), (40, 40, 40))
    for i in range(r):
        for j in range(c):
            img.paste(Image.fromarray(tiles[i, j]), (left + j * (s + gap), header + i * (s + gap)))
    draw = ImageDraw.Draw(img)
    for j, name in enumerate(col_names):
        draw.text((left + j * (s + gap) + 2, 1), name[: max(1, s // 6)], fill=(230, 230, 230))
    for i, name in enumerate(row_names):
        draw.text((2, header + i * (s + gap) + max(0, s // 2 - 6)), name, fill=(230, 230, 230))
    return np.asarray(img)
