"""What the viewer draws, free of any server: browser cameras, scene renders, view colours, the
Perp-Neg weights at a camera, and the render time budget (docs/viewer.md).

Browser cameras come from viser in the OpenCV convention (x right, y down, looking down +z); the
scene's cameras are OpenGL (x right, y up, looking down −z; docs/design.md §2), so the y and z
axes flip on the way in. The world is z-up in both.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch

from dreamperp.cameras import camera_rays, cameras_from_c2w
from dreamperp.config import VIEW_NAMES
from dreamperp.device import no_rng_side_effects
from dreamperp.export.video import compose_panels
from dreamperp.guidance.views import nearest_view_mix, perpneg_params, perpneg_weights
from dreamperp.multiview import eval_background

RENDER_MODES = ("rgb", "normal", "depth", "opacity")
#: Frustum colours (RGB 0-255) of the views SDS conditions on, in VIEW_NAMES order.
VIEW_COLOURS = np.array([[230, 75, 60], [60, 150, 235], [245, 195, 40], [90, 190, 90]], dtype=np.float64)
PLAIN_COLOUR = (128, 128, 128)  # cameras of a run without view-dependent prompts


@dataclass(frozen=True)
class ViewCamera:
    """A browser camera: OpenGL camera-to-world ``c2w`` [4, 4] (float64), vertical fov in degrees,
    aspect = width / height."""

    c2w: np.ndarray
    fovy_deg: float
    aspect: float

    def key(self) -> Tuple[float, ...]:
        """Rounded pose and fov: equal keys render the same image (so jitter does not re-render)."""
        return tuple(np.round(self.c2w[:3, :].ravel(), 4)) + (round(self.fovy_deg, 3), round(self.aspect, 3))

    @property
    def azimuth_elevation(self) -> Tuple[float, float]:
        """Azimuth in (−180, 180] and elevation of the camera centre, degrees (docs/design.md §2)."""
        x, y, z = (float(v) for v in self.c2w[:3, 3])
        r = math.sqrt(x * x + y * y + z * z)
        az = math.degrees(math.atan2(y, x))
        az = 180.0 if az == -180.0 else az
        return az, math.degrees(math.asin(max(-1.0, min(1.0, z / r)))) if r > 0 else 0.0


def quaternion_matrix(wxyz: Any) -> np.ndarray:
    """Rotation matrix [3, 3] of a (w, x, y, z) quaternion (normalised here)."""
    w, x, y, z = np.asarray(wxyz, dtype=np.float64) / np.linalg.norm(np.asarray(wxyz, dtype=np.float64))
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
        ]
    )


def matrix_quaternion(rot: np.ndarray) -> np.ndarray:
    """(w, x, y, z) of a rotation matrix [3, 3] (Shepperd's method: the largest component first)."""
    m = np.asarray(rot, dtype=np.float64)
    t = np.trace(m)
    if t > 0:
        s = 2.0 * math.sqrt(t + 1.0)
        q = [0.25 * s, (m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s]
    elif m[0, 0] > m[1, 1] and m[0, 0] > m[2, 2]:
        s = 2.0 * math.sqrt(1.0 + m[0, 0] - m[1, 1] - m[2, 2])
        q = [(m[2, 1] - m[1, 2]) / s, 0.25 * s, (m[0, 1] + m[1, 0]) / s, (m[0, 2] + m[2, 0]) / s]
    elif m[1, 1] > m[2, 2]:
        s = 2.0 * math.sqrt(1.0 + m[1, 1] - m[0, 0] - m[2, 2])
        q = [(m[0, 2] - m[2, 0]) / s, (m[0, 1] + m[1, 0]) / s, 0.25 * s, (m[1, 2] + m[2, 1]) / s]
    else:
        s = 2.0 * math.sqrt(1.0 + m[2, 2] - m[0, 0] - m[1, 1])
        q = [(m[1, 0] - m[0, 1]) / s, (m[0, 2] + m[2, 0]) / s, (m[1, 2] + m[2, 1]) / s, 0.25 * s]
    q = np.array(q)
    return q / np.linalg.norm(q) * (1.0 if q[0] >= 0 else -1.0)


OPENCV_FROM_OPENGL = np.diag([1.0, -1.0, -1.0])  # flips camera y and z: the same for both directions


def camera_from_viser(wxyz: Any, position: Any, fov_rad: float, aspect: float) -> ViewCamera:
    """A :class:`ViewCamera` from viser's camera state (OpenCV orientation ``wxyz``, ``position``,
    vertical ``fov_rad``, ``aspect`` = width / height)."""
    c2w = np.eye(4)
    c2w[:3, :3] = quaternion_matrix(wxyz) @ OPENCV_FROM_OPENGL
    c2w[:3, 3] = np.asarray(position, dtype=np.float64)
    return ViewCamera(c2w=c2w, fovy_deg=math.degrees(float(fov_rad)), aspect=max(float(aspect), 1e-3))


def viser_pose(c2w: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """viser's (OpenCV) ``(wxyz, position)`` of an OpenGL camera-to-world [4, 4]."""
    c2w = np.asarray(c2w, dtype=np.float64)
    return matrix_quaternion(c2w[:3, :3] @ OPENCV_FROM_OPENGL), c2w[:3, 3].copy()


def image_size(resolution: int, aspect: float) -> Tuple[int, int]:
    """(height, width) with the longer side ``resolution`` pixels and the given aspect ratio."""
    resolution = max(int(resolution), 2)
    if aspect >= 1.0:
        return max(2, round(resolution / aspect)), resolution
    return resolution, max(2, round(resolution * aspect))


def render_view(scene: Any, cfg: Any, cam: ViewCamera, mode: str, resolution: int) -> np.ndarray:
    """The scene from ``cam`` as uint8 [H, W, 3] (``mode`` one of RENDER_MODES), rendered without
    gradients, in eval mode and under :func:`no_rng_side_effects`: the trained state and the
    training RNG streams are exactly as before."""
    device = next(scene.parameters()).device
    h, w = image_size(resolution, cam.aspect)
    c2w = torch.as_tensor(cam.c2w, dtype=torch.float32, device=device)[None]
    cams = cameras_from_c2w(c2w, h, w, fovy_deg=cam.fovy_deg)
    rays_o, rays_d = camera_rays(cams)
    distance, bound = float(np.linalg.norm(cam.c2w[:3, 3])), float(cfg.scene.bound) * math.sqrt(3.0)
    near, far = max(distance - bound, 0.0), distance + bound
    was_training = scene.training
    scene.eval()
    try:
        with no_rng_side_effects(device):
            from dreamperp.scene import render_chunked

            bg = eval_background(cfg, device)
            out = render_chunked(scene, rays_o[0], rays_d[0], shading="albedo", bg_color=bg, need_normals=mode == "normal")
    finally:
        scene.train(was_training)
    views: Dict[str, torch.Tensor] = {k: v.float().cpu() for k, v in out.items() if v.dim() == 3}
    return compose_panels(views, [mode], near, far)


# ------------------------------------------------------------------------------------ guidance
def view_conditioning(guidance_cfg: Any, azimuth_deg: torch.Tensor, elevation_deg: torch.Tensor) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """``(pos_mix [B, 4], neg_weights [B, 4])`` SDS conditions cameras on under ``guidance_cfg``:
    the Perp-Neg schedule, the nearest view prompt, or ``(None, None)`` for the plain prompt."""
    pn = guidance_cfg.perp_neg
    if pn.enabled:
        return perpneg_weights(azimuth_deg, elevation_deg, **perpneg_params(pn))
    if guidance_cfg.view_dependent:
        return nearest_view_mix(azimuth_deg, elevation_deg, pn.overhead_threshold)
    return None, None


def view_colours(pos_mix: Optional[torch.Tensor], n: int) -> np.ndarray:
    """RGB uint8 [n, 3]: each camera's positive view mix blended over VIEW_COLOURS (grey without one)."""
    if pos_mix is None:
        return np.tile(np.array(PLAIN_COLOUR, dtype=np.uint8), (n, 1))
    return np.clip(np.rint(pos_mix.double().cpu().numpy() @ VIEW_COLOURS), 0, 255).astype(np.uint8)


def guidance_table(guidance_cfg: Any, azimuth_deg: float, elevation_deg: float) -> str:
    """Markdown: what SDS asks for from this azimuth/elevation (positive mix, negative weights)."""
    az, el = torch.tensor([azimuth_deg]), torch.tensor([elevation_deg])
    pos, neg = view_conditioning(guidance_cfg, az, el)
    head = f"azimuth {azimuth_deg:+.0f}°, elevation {elevation_deg:+.0f}°"
    if pos is None:
        return f"{head}: plain prompt (no view conditioning)"
    kind = "Perp-Neg " + guidance_cfg.perp_neg.schedule if guidance_cfg.perp_neg.enabled else "view prompt"
    rows = ["| view | positive | negative |", "|---|---|---|"]
    for i, name in enumerate(VIEW_NAMES):
        rows.append(f"| {name} | {float(pos[0, i]):.2f} | {float(neg[0, i]):.2f} |")
    return f"{head} ({kind})\n\n" + "\n".join(rows)


# -------------------------------------------------------------------------------------- budget
class RenderBudget:
    """When may the training thread render for the viewer? At most ``share`` of the training time.

    Every second of training earns ``share`` seconds of render credit (capped at ``cap_s``, so an
    idle stretch cannot pay for a burst); a render is allowed when its estimated time (seconds per
    pixel, learnt from the renders so far) fits the credit, and what it really took is charged.
    Over a run, render time <= share x training time + cap_s + the longest render.
    """

    def __init__(self, share: float = 0.2, cap_s: float = 1.0, clock=time.perf_counter):
        self.share, self.cap_s, self.clock = float(share), float(cap_s), clock
        self.credit_s = 0.0
        self.s_per_pixel: Optional[float] = None

    def earn(self, train_seconds: float) -> None:
        self.credit_s = min(self.credit_s + self.share * max(train_seconds, 0.0), self.cap_s)

    def estimate(self, pixels: int) -> float:
        return 0.0 if self.s_per_pixel is None else self.s_per_pixel * pixels

    def allows(self, pixels: int) -> bool:
        """A full credit allows a render that costs more than the cap (else it would never come)."""
        return self.credit_s > 0 and (self.estimate(pixels) <= self.credit_s or self.credit_s >= self.cap_s)

    def charge(self, seconds: float, pixels: int) -> None:
        """Pay for a render of ``pixels`` that took ``seconds``; update the per-pixel estimate."""
        self.credit_s -= seconds
        rate = seconds / max(pixels, 1)
        self.s_per_pixel = rate if self.s_per_pixel is None else 0.7 * self.s_per_pixel + 0.3 * rate
