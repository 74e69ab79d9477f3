"""The surface the renders show (docs/design.md §14): analytic density fields whose rendered surface
is known give it, with no inner shell; the rasterizer the fidelity check uses agrees with an exact
ray cast; the fidelity of an analytic scene's export meets the targets."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh
from test_export import AnalyticField, analytic_scene, small_config
from torch import nn

from dreamperp.cameras import camera_rays, orbit_cameras
from dreamperp.export.mesh import export_mesh
from dreamperp.export.raster import face_areas, pinhole_project, rasterize, visible_faces
from dreamperp.export.surface import extract_surface, fit_level


class RadialField(AnalyticField):
    """Density from a function of the position, with the field contract (features are the points)."""

    def __init__(self, sigma_of) -> None:  # noqa: ANN001 - a callable (x [N, 3]) -> [N]
        super().__init__()
        self.sigma_of = sigma_of

    def get_density(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.sigma_of(x), x


def scene_of(sigma_of) -> nn.Module:  # noqa: ANN001
    scene = analytic_scene()
    scene.field = RadialField(sigma_of)
    return scene


def soft_step(s: torch.Tensor, width: float = 0.01) -> torch.Tensor:
    return torch.sigmoid(s / width)


OUTER = 0.6


def hollow_shell(x: torch.Tensor) -> torch.Tensor:
    """σ = 100 for 0.4 < r < 0.6 and inside a small sphere r < 0.15 floating in the hollow; 0 elsewhere."""
    r = x.norm(dim=-1)
    shell = soft_step(OUTER - r) * soft_step(r - 0.4)
    core = soft_step(0.15 - r)
    return 100.0 * torch.maximum(shell, core)


def noisy_solid(x: torch.Tensor) -> torch.Tensor:
    """A solid ball of σ = 100 whose inside (r < 0.45) is riddled with pockets of σ = 0."""
    r = x.norm(dim=-1)
    pockets = (torch.sin(23 * x[:, 0]) * torch.sin(19 * x[:, 1]) * torch.sin(29 * x[:, 2]) > 0.3) & (r < 0.45)
    return 100.0 * soft_step(OUTER - r) * (~pockets).float()


def test_hollow_shell_and_noisy_solid_give_only_the_outer_sphere() -> None:
    for field in (hollow_shell, noisy_solid):
        surf = extract_surface(scene_of(field), 1.0, 64)
        radii = np.linalg.norm(surf.vertices, axis=1)
        # σ = 100 makes a ray half opaque ln 2 / 100 = 0.007 inside r = 0.6; a grid step is 2/63
        assert np.abs(radii - OUTER).max() < 2.0 / 63, (field.__name__, radii.min(), radii.max())
        mesh = trimesh.Trimesh(surf.vertices, surf.faces, process=False)
        mesh.merge_vertices()
        assert mesh.is_watertight and len(mesh.split(only_watertight=False)) == 1  # no inner shell, no core
        # a solid ball (an inner shell would subtract its volume); the surface within 0.02 of r = 0.6
        # gives the volume within 10 % (measured: 0.983, r = 0.617)
        assert mesh.volume == pytest.approx(4 / 3 * math.pi * OUTER**3, rel=0.1)


def test_thin_plate_is_kept() -> None:
    # A plate 0.06 thick (two grid steps at 64³) of σ = 200 in z, radius 0.5 in x, y: rays along z get
    # opaque within it, so the renders show it and so must the mesh.
    def plate(x: torch.Tensor) -> torch.Tensor:
        return 200.0 * soft_step(0.03 - x[:, 2].abs(), 0.005) * soft_step(0.5 - x[:, :2].norm(dim=-1), 0.005)

    surf = extract_surface(scene_of(plate), 1.0, 64)
    v = surf.vertices
    assert np.abs(v[:, 2]).max() < 0.03 + 2.0 / 63
    assert np.linalg.norm(v[:, :2], axis=1).max() == pytest.approx(0.5, abs=2.0 / 63)
    assert surf.level < 200.0


def test_fit_level_puts_a_sharp_sphere_where_rays_get_half_opaque() -> None:
    # σ = 50·sigmoid((R − r)/0.01): the level-L sphere has radius R + 0.01·logit(L/50); renders are half
    # opaque about ln 2 / 50 = 0.014 inside R. The fitted level's sphere must be within 0.02 of R.
    fit = fit_level(analytic_scene(((((0.0, 0.0, 0.0)), 0.45),)), 1.0)
    radius = 0.45 + 0.01 * math.log(fit.level / (50.0 - fit.level))
    assert abs(radius - 0.45) < 0.02, fit
    assert fit.rays > 1000 and fit.peak == pytest.approx(50.0, rel=1e-3)


# ------------------------------------------------------------------------------------ rasterizer
def ray_cast(mesh: trimesh.Trimesh, origins: np.ndarray, dirs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact nearest hit (Möller–Trumbore, float64, every ray against every face) → face id (−1) and distance."""
    tri = mesh.triangles
    e1, e2 = tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]
    pv = np.cross(dirs[:, None], e2[None])
    det = (e1[None] * pv).sum(-1)
    tv = origins[:, None] - tri[None, :, 0]
    u = (tv * pv).sum(-1) / det
    qv = np.cross(tv, e1[None])
    v = (dirs[:, None] * qv).sum(-1) / det
    t = (e2[None] * qv).sum(-1) / det
    t = np.where((u >= 0) & (v >= 0) & (u + v <= 1) & (t > 0), t, np.inf)
    face = t.argmin(1)
    dist = t.min(1)
    return np.where(np.isinf(dist), -1, face), dist


def test_rasterizer_matches_an_exact_ray_cast() -> None:
    mesh = trimesh.creation.icosphere(subdivisions=2, radius=0.5)
    mesh.vertices += [0.1, -0.05, 0.05]
    mesh.vertices[:, 2] *= 1.3  # not a sphere: an ellipsoid with flat faces
    cams = orbit_cameras(3, 20.0, 2.5, 40.0, 32, 32)
    v, f = torch.tensor(mesh.vertices), torch.tensor(mesh.faces)
    for i in range(len(cams)):
        xy, z = pinhole_project(v, cams.c2w[i].double(), float(cams.focal[i]), 32, 32)
        r = rasterize(xy, z, f, 32, 32, perspective=True)
        o, d = camera_rays(cams[i])
        o, d = o[0].reshape(-1, 3).double().numpy(), d[0].reshape(-1, 3).double().numpy()
        face, dist = ray_cast(mesh, o, d)
        got = r.face.reshape(-1).numpy()
        assert (got >= 0).sum() > 200
        np.testing.assert_array_equal(got, face)  # no pixel centre lies on an edge here
        point = np.einsum("nk,nkd->nd", r.bary.reshape(-1, 3).double().numpy(), mesh.vertices[mesh.faces[np.maximum(got, 0)]])
        np.testing.assert_allclose(np.linalg.norm(point - o, axis=1)[got >= 0], dist[got >= 0], atol=1e-5)


def test_visible_faces_drop_an_inner_shell() -> None:
    outer = trimesh.creation.icosphere(subdivisions=3, radius=0.6)
    inner = trimesh.creation.icosphere(subdivisions=3, radius=0.3)
    both = trimesh.util.concatenate([outer, inner])
    seen = visible_faces(torch.tensor(both.vertices), torch.tensor(both.faces), 1.0, views=24, size=128).numpy()
    n = len(outer.faces)
    assert seen[:n].all() and not seen[n:].any()
    area = face_areas(torch.tensor(both.vertices), torch.tensor(both.faces)).numpy()
    assert area[seen].sum() / area.sum() == pytest.approx(0.8, abs=0.01)  # 0.6² / (0.6² + 0.3²)


# ------------------------------------------------------------------------------------- fidelity
def test_export_of_an_analytic_scene_meets_the_fidelity_targets(tmp_path: Path) -> None:
    # A dense sphere with a sharp edge, like a reconstruction's. A soft one (σ = 50, edge width 0.03)
    # cannot pass: rays grazing it get half opaque out to r ≈ 0.55 while rays hitting it head-on do
    # at r ≈ 0.47, so no surface matches both (measured IoU 0.82; docs/design.md §14).
    cfg = small_config(resolution=96, faces=4000, texture_size=256)
    cfg.data.eval_radius, cfg.data.eval_fov = 2.0, 45.0
    export_mesh(analytic_scene((((0.1, 0.0, 0.0), 0.45),), sigma=500.0, width=0.005), cfg, tmp_path, ["glb"], progress=False)
    record = json.loads((tmp_path / "fidelity.json").read_text())
    assert len(record["views"]) == 8 and record["targets"]["met"], record
    assert min(v["iou"] for v in record["views"]) >= 0.9
    assert min(v["psnr"] for v in record["views"]) >= 25.0
    assert record["depth_error_mean"] < 0.03
    assert record["unseen_faces_removed"] < 0.01 and record["seen_area"] > 0.99 and record["level_fit"]["level"] > 0


ROOT = Path(__file__).resolve().parents[1]


def test_short_toy_run_exports_a_faithful_mesh_and_says_so_last(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """`dreamperp train configs/toy.yaml` for a few steps with the shipped toy prior: the export at
    the end writes fidelity.json and prints its line after everything else."""
    from dreamperp.cli import main
    from dreamperp.toy.assets import assets_root

    if not (assets_root() / "toy-prior" / "model_index.json").is_file():
        pytest.skip("the shipped toy prior (dreamperp/toy/weights/toy-prior) is missing")
    out = tmp_path / "out"
    code = main([
        "train", str(ROOT / "dreamperp" / "configs" / "toy.yaml"), f"output_dir={out}", "trainer.max_steps=40", "trainer.val_every=40",
        "trainer.checkpoint_every=40", "trainer.progress=false", "trainer.tensorboard=false", "trainer.val_size=32",
        "export.resolution=64", "export.faces=5000", "export.texture_size=256", "export.video_frames=2", "export.video_size=32",
    ])
    assert code == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("dreamperp train: fidelity (mesh vs scene, 8 views"), err[-3:]
    (run,) = [p for p in (out / "toy").iterdir() if p.is_dir()]
    record = json.loads((run / "export" / "fidelity.json").read_text())
    # After 40 steps the field is still a hazy blob: rays grazing it get half opaque far outside the
    # depth where head-on rays do, so no opaque surface matches it well (its PSNR ceiling is 13-17 dB).
    # Measured: IoU 0.70-0.77 per view, PSNR 2.5-4.4 dB under the ceiling. The targets (IoU >= 0.9,
    # PSNR >= 25 dB) are for trained runs: docs/benchmarks.md, "Mesh export" (the quick start: IoU >= 0.957).
    ious = [v["iou"] for v in record["views"]]
    assert len(ious) == 8 and min(ious) >= 0.65, ious
    gaps = [v["psnr_ceiling"] - v["psnr"] for v in record["views"]]
    assert max(gaps) < 5.5, [(round(v["psnr"], 1), round(v["psnr_ceiling"], 1)) for v in record["views"]]
    assert record["seen_area"] >= 0.95 and record["level_fit"]["level"] > 0


def test_fidelity_line_warns_only_when_an_outline_differs() -> None:
    from dreamperp.export.fidelity import TARGET_IOU, Fidelity, fidelity_line

    def fid(iou_min: float) -> Fidelity:
        return Fidelity(views=[{}] * 8, size=96, iou_mean=0.95, iou_min=iou_min, psnr_mean=20.0, psnr_min=18.0,
                        depth_error_mean=0.05, psnr_ceiling_min=22.9)

    good, bad = fidelity_line(fid(TARGET_IOU)), fidelity_line(fid(TARGET_IOU - 0.01))
    assert good.startswith("fidelity (mesh vs scene, 8 views 96x96): silhouette IoU 0.950 (worst 0.900), PSNR 20.0 dB")
    assert "warning" not in good and "\n" not in bad
    assert "warning: in some view the mesh's outline differs" in bad and "--threshold X" in bad
