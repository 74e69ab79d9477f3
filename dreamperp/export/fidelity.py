"""Export fidelity: the finished mesh against the scene it came from, seen from the same views
(docs/design.md §14).

Views: 8 pinhole cameras at the run's evaluation distance and field of view, on two rings: azimuths
0°, 90°, 180°, 270° at ``data.eval_elevation`` and 45°, 135°, 225°, 315° at 30° higher (at most
80°), :data:`FIDELITY_SIZE`² pixels. The scene is rendered with its own renderer (``render_chunked``,
albedo, evaluation sampling) on the run's evaluation background; the mesh is rasterized
(:mod:`dreamperp.export.raster`) with its baked texture (bilinear) or vertex colours, unlit, on the
same background. Per view:

* silhouette IoU of ``scene opacity > ½`` against the pixels the mesh covers;
* PSNR of the RGB images, ``10·log10(1 / MSE)`` over all pixels and channels (floats in [0, 1]);
* depth error: mean |scene depth − mesh depth| (distance along the ray, scene units) over the
  pixels where both are opaque;
* the PSNR ceiling: what an opaque surface with the scene's own colour would score
  (:func:`opaque_ceiling`) — a scene with semi-transparent edges keeps such a mesh below it.

:func:`fidelity_line` is the one line ``dreamperp export`` and ``dreamperp train`` print, and the
whole record goes to ``export/fidelity.json``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch
from torch import Tensor

from dreamperp.export.common import scene_device

FIDELITY_SIZE = 96
FIDELITY_RING_DEG = 30.0
TARGET_IOU = 0.9
TARGET_PSNR = 25.0


@dataclass
class Fidelity:
    """Per-view figures (lists in view order) and their summaries; see the module docstring."""

    views: List[Dict[str, float]]
    size: int
    iou_mean: float
    iou_min: float
    psnr_mean: float
    psnr_min: float
    depth_error_mean: float
    psnr_ceiling_min: float
    extra: Dict[str, Any] = field(default_factory=dict)

    def meets_targets(self) -> bool:
        return self.iou_min >= TARGET_IOU and self.psnr_min >= TARGET_PSNR

    def to_dict(self) -> Dict[str, Any]:
        out = asdict(self)
        out["targets"] = {"iou_min": TARGET_IOU, "psnr_min": TARGET_PSNR, "met": self.meets_targets()}
        return out


def fidelity_cameras(cfg: Any, size: int = FIDELITY_SIZE, device: torch.device | str = "cpu"):
    """The 8 views of the module docstring as a CameraBatch."""
    from dreamperp.cameras import make_cameras

    e0 = float(cfg.data.eval_elevation)
    e1 = min(e0 + FIDELITY_RING_DEG, 80.0)
    elevation = torch.tensor([e0] * 4 + [e1] * 4)
    azimuth = torch.tensor([0.0, 90.0, 180.0, 270.0, 45.0, 135.0, 225.0, 315.0])
    n = len(azimuth)
    radius = torch.full((n,), float(cfg.data.eval_radius))
    fov = torch.full((n,), float(cfg.data.eval_fov))
    return make_cameras(elevation, azimuth, radius, fov, size, size).to(device)


@torch.no_grad()
def render_scene(scene: Any, cfg: Any, cams: Any) -> Dict[str, Tensor]:
    """The scene from ``cams`` → ``rgb [K, H, W, 3]``, ``opacity [K, H, W]``, ``depth [K, H, W]``,
    ``background [K, H, W, 3]`` (CPU float32), rays ``origin``/``direction [K, H, W, 3]``."""
    from dreamperp.cameras import camera_rays
    from dreamperp.multiview import eval_background
    from dreamperp.scene.renderer import render_chunked

    device = scene_device(scene)
    rays_o, rays_d = camera_rays(cams.to(device))
    bg_color = eval_background(cfg, device)
    background = bg_color.expand(rays_d.shape) if bg_color is not None else scene.background(rays_d, train=False)
    out = render_chunked(scene, rays_o, rays_d, bg_color=background, shading="albedo", need_normals=False)
    return {
        "rgb": out["rgb"].float().cpu(),
        "opacity": out["opacity"][..., 0].float().cpu(),
        "depth": out["depth"][..., 0].float().cpu(),
        "background": background.float().cpu(),
        "origin": rays_o.float().cpu(),
        "direction": rays_d.float().cpu(),
    }


@torch.no_grad()
def render_mesh(mesh: Any, cams: Any, background: Tensor) -> Dict[str, Tensor]:
    """A z-up trimesh (texture or vertex colours) from ``cams`` → ``rgb [K, H, W, 3]`` on
    ``background [K, H, W, 3]``, ``hit [K, H, W]`` bool, ``depth [K, H, W]`` (distance along the ray)."""
    import trimesh

    from dreamperp.export.raster import pinhole_project, rasterize

    cams = cams.to("cpu")
    v = torch.from_numpy(np.asarray(mesh.vertices, dtype=np.float64))
    f = torch.from_numpy(np.asarray(mesh.faces, dtype=np.int64))
    textured = isinstance(mesh.visual, trimesh.visual.TextureVisuals) and mesh.visual.uv is not None
    if textured:
        uv = torch.from_numpy(np.asarray(mesh.visual.uv, dtype=np.float32))
        material = mesh.visual.material
        image = getattr(material, "baseColorTexture", None) or getattr(material, "image", None)
        texture = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
    else:
        colours = torch.from_numpy(np.asarray(mesh.visual.vertex_colors, dtype=np.float32)[:, :3] / 255.0)
    rgbs, hits, depths = [], [], []
    for k in range(len(cams)):
        h, w = cams.height, cams.width
        c2w = cams.c2w[k].double()
        xy, z = pinhole_project(v, c2w, float(cams.focal[k]), h, w)
        r = rasterize(xy, z, f, h, w, perspective=True)
        hit = r.face >= 0
        corners = f[r.face.clamp_min(0)]  # [H, W, 3]
        point = torch.einsum("hwk,hwkd->hwd", r.bary.double(), v[corners])
        depth = (point - c2w[:3, 3]).norm(dim=-1).float()
        if textured:
            puv = torch.einsum("hwk,hwkd->hwd", r.bary, uv[corners])
            grid = torch.stack([2 * puv[..., 0] - 1, 1 - 2 * puv[..., 1]], -1)[None]
            colour = torch.nn.functional.grid_sample(texture, grid, mode="bilinear", padding_mode="border", align_corners=False)[0].permute(1, 2, 0)
        else:
            colour = torch.einsum("hwk,hwkd->hwd", r.bary, colours[corners])
        rgbs.append(torch.where(hit[..., None], colour, background[k]))
        hits.append(hit)
        depths.append(torch.where(hit, depth, torch.zeros_like(depth)))
    return {"rgb": torch.stack(rgbs), "hit": torch.stack(hits), "depth": torch.stack(depths)}


def opaque_ceiling(scene_views: Dict[str, Tensor], k: int) -> float:
    """PSNR on view ``k`` of an opaque surface with the scene's own colour: that colour un-blended
    from the background where the opacity > ½, background elsewhere. Where the scene's edges are
    semi-transparent (soft fields) this is below the target: only a texture with the background
    blended into it could score higher."""
    op = scene_views["opacity"][k][..., None].double()
    rgb, bg = scene_views["rgb"][k].double(), scene_views["background"][k].double()
    fg = ((rgb - (1 - op) * bg) / op.clamp_min(1e-3)).clamp(0, 1)
    mse = float(((torch.where(op > 0.5, fg, bg) - rgb) ** 2).mean())
    return 10.0 * math.log10(1.0 / max(mse, 1e-10))


def compare(scene_views: Dict[str, Tensor], mesh_views: Dict[str, Tensor], size: int) -> Fidelity:
    """Per-view IoU, PSNR and depth error (module docstring) → :class:`Fidelity`."""
    views = []
    for k in range(len(scene_views["rgb"])):
        shown = scene_views["opacity"][k] > 0.5
        hit = mesh_views["hit"][k]
        union = int((shown | hit).sum())
        iou = int((shown & hit).sum()) / union if union else 1.0
        mse = float(((scene_views["rgb"][k].double() - mesh_views["rgb"][k].double()) ** 2).mean())
        psnr = 10.0 * math.log10(1.0 / max(mse, 1e-10))
        both = shown & hit
        depth = float((scene_views["depth"][k] - mesh_views["depth"][k])[both].abs().mean()) if bool(both.any()) else float("nan")
        views.append({"iou": iou, "psnr": psnr, "depth_error": depth, "psnr_ceiling": opaque_ceiling(scene_views, k)})
    iou = [v["iou"] for v in views]
    psnr = [v["psnr"] for v in views]
    depth = [v["depth_error"] for v in views if not math.isnan(v["depth_error"])]
    return Fidelity(
        views=views,
        size=size,
        iou_mean=float(np.mean(iou)),
        iou_min=float(np.min(iou)),
        psnr_mean=float(np.mean(psnr)),
        psnr_min=float(np.min(psnr)),
        depth_error_mean=float(np.mean(depth)) if depth else float("nan"),
        psnr_ceiling_min=float(min(v["psnr_ceiling"] for v in views)),
    )


@torch.no_grad()
def check_fidelity(scene: Any, cfg: Any, mesh: Any, size: int = FIDELITY_SIZE, scene_views: Optional[Dict[str, Tensor]] = None) -> Fidelity:
    """Render ``scene`` and the finished ``mesh`` (z-up trimesh) from :func:`fidelity_cameras` and compare."""
    cams = fidelity_cameras(cfg, size)
    scene_views = scene_views if scene_views is not None else render_scene(scene, cfg, cams)
    return compare(scene_views, render_mesh(mesh, cams, scene_views["background"]), size)


def fidelity_line(fid: Fidelity) -> str:
    """The one-line summary printed at the end of an export; it warns when some view's silhouette
    differs from the scene's (IoU below the target), the one figure every scene can meet."""
    warning = "" if fid.iou_min >= TARGET_IOU else (
        f"; warning: in some view the mesh's outline differs from the scene's (IoU < {TARGET_IOU}): "
        "see export/fidelity.json, or try another level with dreamperp export RUN_DIR --threshold X"
    )
    return (
        f"fidelity (mesh vs scene, {len(fid.views)} views {fid.size}x{fid.size}): silhouette IoU {fid.iou_mean:.3f} (worst {fid.iou_min:.3f}), "
        f"PSNR {fid.psnr_mean:.1f} dB (worst {fid.psnr_min:.1f}; an opaque surface in the scene's colours: {fid.psnr_ceiling_min:.1f}), "
        f"depth error {fid.depth_error_mean:.4f}{warning}"
    )


def read_fidelity(run_dir: str | Path) -> Dict[str, Optional[float]]:
    """The summary of ``RUN/export/fidelity.json`` (``mesh_iou_min``, ``mesh_psnr_min``, ``mesh_psnr_ceiling``:
    None when the run has none, e.g. an export that failed or never ran), for benchmark tables."""
    import json

    try:
        record = json.loads((Path(run_dir) / "export" / "fidelity.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        record = {}
    return {"mesh_iou_min": record.get("iou_min"), "mesh_psnr_min": record.get("psnr_min"), "mesh_psnr_ceiling": record.get("psnr_ceiling_min")}
