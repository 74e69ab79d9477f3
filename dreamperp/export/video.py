"""Turntable video: evenly spaced azimuths around the object, panels side by side.

Cameras come from :func:`dreamperp.cameras.orbit_cameras` (azimuth ``360·i/n``, i = 0..n-1, so the
loop has no repeated 0°/360° frame) at ``data.eval_radius`` and ``data.eval_fov``. Each frame holds
one square panel per mode, left to right:

* ``rgb``: the albedo render on the run's evaluation background (see ``eval_background``);
* ``normal``: world normals mapped ``(n + 1) / 2``, composited on white by opacity;
* ``depth``: ``1 − (d − near) / (far − near)`` (near is bright) with the fixed range
  ``radius ∓ bound`` that holds every visible point, so the shading does not flicker between
  frames; black where empty;
* ``opacity``: grey levels.

MP4 is H.264 (libx264, yuv420p, so frame sizes must be even); GIF uses ffmpeg's two-pass palette.
Both go through imageio-ffmpeg, which writes every frame (Pillow's GIF writer would merge
identical consecutive frames). The file is written to a temporary name and renamed when complete.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from dreamperp.config import VIDEO_FORMATS, VIDEO_MODES
from dreamperp.errors import UsageError
from dreamperp.export.common import positive_int, scene_device
from dreamperp.files import atomic_output
from dreamperp.images import to_uint8
from dreamperp.multiview import eval_background

MAX_VIDEO_SIZE = 8192  # H.264's largest level allows 8192 pixels a side


def turntable_cameras(cfg: Any, frames: int, elevation: float, size: int, device: torch.device | str = "cpu"):
    """``frames`` orbit cameras (a CameraBatch) at ``elevation`` degrees, ``size``² pixels, with the
    run's evaluation radius and field of view."""
    from dreamperp.cameras import orbit_cameras

    return orbit_cameras(frames, float(elevation), float(cfg.data.eval_radius), float(cfg.data.eval_fov), size, size, device)


@torch.no_grad()
def render_views(scene: Any, cams: Any, bg_color: Optional[Tensor], *, need_normals: bool = True) -> Iterator[Dict[str, Tensor]]:
    """Render each camera of ``cams`` in turn (no grad, chunked) → dicts of ``[H, W, C]`` tensors on the CPU."""
    from dreamperp.cameras import camera_rays
    from dreamperp.scene.renderer import render_chunked

    for i in range(len(cams)):
        rays_o, rays_d = camera_rays(cams[i])
        out = render_chunked(scene, rays_o[0], rays_d[0], bg_color=bg_color, shading="albedo", need_normals=need_normals)
        yield {k: v.float().cpu() for k, v in out.items() if v.dim() == 3}


def compose_panels(out: Dict[str, Tensor], modes: Sequence[str], near: float, far: float) -> np.ndarray:
    """Side-by-side panels ``[H, W·len(modes), 3]`` uint8 from one view's render outputs."""
    opacity = out["opacity"].clamp(0, 1)
    panels = []
    for mode in modes:
        if mode == "rgb":
            img = out["rgb"]
        elif mode == "normal":
            img = (out["normal"] + 1) * 0.5 * opacity + (1 - opacity)
        elif mode == "depth":
            depth = 1 - (out["depth"] - near) / max(far - near, 1e-6)
            img = (depth.clamp(0, 1) * opacity).expand(-1, -1, 3)
        elif mode == "opacity":
            img = opacity.expand(-1, -1, 3)
        else:
            raise UsageError(f"unknown video mode {mode!r}: use any of {', '.join(VIDEO_MODES)}")
        panels.append(img)
    return to_uint8(torch.cat(panels, 1))


def parse_modes(modes: str | Sequence[str]) -> list[str]:
    """'rgb,normal' or ['rgb', 'normal'] → a checked list; UsageError naming --modes otherwise."""
    items = [m.strip() for m in modes.split(",")] if isinstance(modes, str) else [str(m).strip() for m in modes]
    items = [m for m in items if m]
    if not items:
        raise UsageError(f"--modes needs at least one of {', '.join(VIDEO_MODES)}")
    for m in items:
        if m not in VIDEO_MODES:
            raise UsageError(f"--modes: unknown mode {m!r}; use a comma-separated list of {', '.join(VIDEO_MODES)}")
    if len(set(items)) != len(items):
        raise UsageError(f"--modes: each mode at most once, got {','.join(items)}")
    return items


def _writer(path: Path, width: int, height: int, fps: int, fmt: str):
    import imageio_ffmpeg

    if fmt == "mp4":
        # macro_block_size=2: keep the exact (even) size; the default 16 would rescale the frames.
        params = dict(codec="libx264", pix_fmt_out="yuv420p", quality=8, macro_block_size=2, output_params=["-movflags", "+faststart"])
    else:
        palette = "split[a][b];[a]palettegen=stats_mode=full[p];[b][p]paletteuse=dither=sierra2_4a"
        params = dict(codec="gif", pix_fmt_out="pal8", macro_block_size=1, output_params=["-filter_complex", palette, "-loop", "0"])
    writer = imageio_ffmpeg.write_frames(str(path), (width, height), fps=fps, ffmpeg_log_level="error", **params)
    writer.send(None)  # start ffmpeg
    return writer


def write_turntable(
    scene: Any,
    cfg: Any,
    out_path: str | Path,
    frames: Optional[int] = None,
    fps: Optional[int] = None,
    elevation: Optional[float] = None,
    size: Optional[int] = None,
    modes: Optional[str | Sequence[str]] = None,
    format: Optional[str] = None,
    *,
    progress: bool = True,
) -> Path:
    """Render a turntable of ``scene`` and write it to ``out_path`` (atomically); returns the path.

    ``cfg`` is the run's Config (evaluation radius/fov, background, and the ``cfg.export.video_*``
    defaults for every argument left None). ``format`` defaults to the suffix of ``out_path`` when
    it is .mp4/.gif, else ``export.video_format``. The video has exactly ``frames`` frames of
    ``size × (size · len(modes))`` pixels.
    """
    ex = cfg.export
    frames = positive_int(ex.video_frames if frames is None else frames, "--frames")
    fps = positive_int(ex.video_fps if fps is None else fps, "--fps")
    size = positive_int(ex.video_size if size is None else size, "--size", minimum=2)
    elevation = float(ex.video_elevation if elevation is None else elevation)
    if not -90.0 <= elevation <= 90.0:
        raise UsageError(f"--elevation must be within [-90, 90] degrees, got {elevation}")
    mode_list = parse_modes(ex.video_modes if modes is None else modes)
    out_path = Path(out_path)
    suffix = out_path.suffix.lower().lstrip(".")
    fmt = format or (suffix if suffix in VIDEO_FORMATS else ex.video_format)
    if fmt not in VIDEO_FORMATS:
        raise UsageError(f"--format must be one of {', '.join(VIDEO_FORMATS)}, got {fmt!r}")
    if size > MAX_VIDEO_SIZE:
        raise UsageError(f"--size {size} is larger than {MAX_VIDEO_SIZE}, more than video encoders and players handle; use a smaller --size")
    if fmt == "mp4" and size % 2:
        raise UsageError(f"--size must be even for mp4 (H.264 yuv420p halves the colour resolution), got {size}; use {size + 1} or --format gif")

    device = scene_device(scene)
    cams = turntable_cameras(cfg, frames, elevation, size, device)
    bg = eval_background(cfg, device)
    radius, bound = float(cfg.data.eval_radius), float(cfg.scene.bound)
    near, far = max(radius - bound, 0.0), radius + bound
    need_normals = "normal" in mode_list
    views = render_views(scene, cams, bg, need_normals=need_normals)
    if progress:
        from tqdm import tqdm

        views = tqdm(views, total=frames, desc="turntable", unit="frame", dynamic_ncols=True)
    with atomic_output(out_path) as tmp:
        writer = _writer(tmp, size * len(mode_list), size, fps, fmt)
        try:
            for out in views:
                writer.send(np.ascontiguousarray(compose_panels(out, mode_list, near, far)))
        finally:
            views.close()  # end the progress bar's line, so an error message starts on its own
            writer.close()
    return out_path
