#!/usr/bin/env python
"""Build a small NeRF-synthetic style dataset of an analytic, coloured, asymmetric object.

    python tools/make_synthetic_dataset.py OUT_DIR [--train 40] [--test 10] [--size 64] [--seed 0]

writes ``OUT_DIR/train/transforms.json`` and ``OUT_DIR/test/transforms.json`` with RGBA PNGs next
to them (``r_000.png`` ...), ``camera_angle_x`` and ``transform_matrix`` in the Blender/OpenGL camera
convention of docs/design.md §2 (z-up world; camera x right, y up, looking down −z).

The object, inside the unit sphere: a two-tone sphere, a small blue sphere, a green box and a red
plinth, with flat (view-independent) colours, so a radiance field with albedo only can represent it
exactly. Rendering is exact ray/shape intersection in numpy, 4×4 supersampled per pixel: alpha is
the covered fraction, RGB the mean colour of the covered samples (straight, not premultiplied).
Cameras look at the origin from radius 2.5 with a 40° horizontal field of view; training views are
random (seeded) over elevations −20°..75°, test views sit between them at elevations 5°..45°.

This file deliberately does not import dreamperp: it is an independent check of the conventions.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import List, Tuple

import numpy as np

RADIUS = 2.5
FOVX = math.radians(40.0)
SUPERSAMPLE = 4

# (centre, radius, colour) and, for the big sphere, a second colour above z = centre_z + split.
SPHERES = [
    ((0.0, 0.0, -0.05), 0.33, (0.95, 0.55, 0.10)),
    ((0.22, 0.30, 0.38), 0.17, (0.15, 0.35, 0.90)),
]
BIG_SPHERE_TOP = (0.95, 0.85, 0.20)
# (min corner, max corner, colour)
BOXES = [
    ((-0.42, -0.32, -0.15), (-0.18, 0.05, 0.45), (0.20, 0.72, 0.30)),
    ((-0.45, -0.45, -0.52), (0.45, 0.45, -0.38), (0.80, 0.18, 0.25)),
]


def look_at_c2w(elevation_deg: float, azimuth_deg: float, radius: float = RADIUS) -> np.ndarray:
    """4x4 camera-to-world (OpenGL camera) for a camera on the sphere looking at the origin, z up."""
    e, a = math.radians(elevation_deg), math.radians(azimuth_deg)
    back = np.array([math.cos(e) * math.cos(a), math.cos(e) * math.sin(a), math.sin(e)])
    right = np.cross([0.0, 0.0, 1.0], back)
    right /= np.linalg.norm(right)
    up = np.cross(back, right)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, up, back, back * radius
    return c2w


def rays(c2w: np.ndarray, size: int, ss: int = SUPERSAMPLE) -> Tuple[np.ndarray, np.ndarray]:
    """Origins and unit directions ``[size, size, ss*ss, 3]`` on a regular ss×ss sub-pixel grid."""
    focal = 0.5 * size / math.tan(0.5 * FOVX)
    sub = (np.arange(ss) + 0.5) / ss
    j = np.arange(size)[None, :, None, None] + sub[None, None, None, :]  # columns
    i = np.arange(size)[:, None, None, None] + sub[None, None, :, None]  # rows
    x = np.broadcast_to((j - 0.5 * size) / focal, (size, size, ss, ss))
    y = np.broadcast_to(-(i - 0.5 * size) / focal, (size, size, ss, ss))
    d_cam = np.stack([x, y, -np.ones_like(x)], -1).reshape(size, size, ss * ss, 3)
    d = d_cam @ c2w[:3, :3].T
    d /= np.linalg.norm(d, axis=-1, keepdims=True)
    o = np.broadcast_to(c2w[:3, 3], d.shape)
    return o, d


def trace(o: np.ndarray, d: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Nearest hit of every ray with the object → (hit mask [...], colour [..., 3])."""
    best = np.full(o.shape[:-1], np.inf)
    color = np.zeros(o.shape)
    for k, (c, r, col) in enumerate(SPHERES):
        oc = o - np.asarray(c)
        b = (oc * d).sum(-1)
        disc = b * b - ((oc * oc).sum(-1) - r * r)
        t = -b - np.sqrt(np.maximum(disc, 0))
        hit = (disc > 0) & (t > 0) & (t < best)
        best = np.where(hit, t, best)
        this = np.broadcast_to(np.asarray(col, dtype=float), o.shape)
        if k == 0:  # two-tone: the cap above the centre is yellow
            z = (o + d * t[..., None])[..., 2]
            this = np.where((z > c[2] + 0.1)[..., None], np.asarray(BIG_SPHERE_TOP), this)
        color = np.where(hit[..., None], this, color)
    for lo, hi, col in BOXES:
        with np.errstate(divide="ignore", invalid="ignore"):
            t0 = (np.asarray(lo) - o) / d
            t1 = (np.asarray(hi) - o) / d
        tmin = np.nanmax(np.minimum(t0, t1), -1)
        tmax = np.nanmin(np.maximum(t0, t1), -1)
        hit = (tmax >= tmin) & (tmin > 0) & (tmin < best)
        best = np.where(hit, tmin, best)
        color = np.where(hit[..., None], np.asarray(col, dtype=float), color)
    return np.isfinite(best), color


def render_rgba(c2w: np.ndarray, size: int) -> np.ndarray:
    """RGBA uint8 ``[size, size, 4]``: straight colour, alpha = covered fraction of the pixel."""
    o, d = rays(c2w, size)
    hit, color = trace(o, d)
    alpha = hit.mean(-1)
    rgb = (color * hit[..., None]).sum(-2) / np.maximum(hit.sum(-1), 1)[..., None]
    rgba = np.concatenate([rgb, alpha[..., None]], -1)
    return np.round(np.clip(rgba, 0, 1) * 255).astype(np.uint8)


def camera_angles(n_train: int, n_test: int, seed: int) -> Tuple[List[Tuple[float, float]], List[Tuple[float, float]]]:
    """(elevation, azimuth) in degrees: random training views, evenly spread held-out views."""
    rng = np.random.default_rng(seed)
    s_lo, s_hi = math.sin(math.radians(-20)), math.sin(math.radians(75))
    train = [(math.degrees(math.asin(rng.uniform(s_lo, s_hi))), float(rng.uniform(-180, 180))) for _ in range(n_train)]
    test = [(5.0 + 40.0 * (k % 5) / 4, -180.0 + 360.0 * (k + 0.5) / max(n_test, 1)) for k in range(n_test)]
    return train, test


def write_split(folder: Path, angles: List[Tuple[float, float]], size: int) -> Path:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    frames = []
    for k, (elev, azim) in enumerate(angles):
        c2w = look_at_c2w(elev, azim)
        name = f"r_{k:03d}.png"
        Image.fromarray(render_rgba(c2w, size), "RGBA").save(folder / name)
        frames.append({"file_path": f"./{name}", "transform_matrix": c2w.tolist()})
    path = folder / "transforms.json"
    path.write_text(json.dumps({"camera_angle_x": FOVX, "frames": frames}, indent=2))
    return path


def make_dataset(out_dir: str | Path, n_train: int = 40, n_test: int = 10, size: int = 64, seed: int = 0) -> Tuple[Path, Path]:
    """Write the train and test splits; returns the two transforms.json paths."""
    out = Path(out_dir)
    train, test = camera_angles(n_train, n_test, seed)
    return write_split(out / "train", train, size), write_split(out / "test", test, size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("out_dir")
    parser.add_argument("--train", type=int, default=40, help="training views (default 40)")
    parser.add_argument("--test", type=int, default=10, help="held-out views (default 10)")
    parser.add_argument("--size", type=int, default=64, help="image size in pixels (default 64)")
    parser.add_argument("--seed", type=int, default=0, help="camera seed (default 0)")
    args = parser.parse_args()
    for p in make_dataset(args.out_dir, args.train, args.test, args.size, args.seed):
        print(p)


if __name__ == "__main__":
    main()
