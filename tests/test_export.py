"""Mesh export: known geometry in, right bounds / watertight / coloured / y-up GLB out; clear errors
for fields without a surface. Also home of the analytic stand-in scene used by the video and render tests."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence, Tuple

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import trimesh
from torch import nn

from dreamperp.cli import main
from dreamperp.config import Config, RenderConfig
from dreamperp.errors import UsageError
from dreamperp.export.mesh import export_mesh, extract_mesh
from dreamperp.export.surface import EmptyFieldError, keep_large_components
from dreamperp.scene.background import Background
from dreamperp.scene.base_field import FieldBase
from dreamperp.scene.scene import Scene


class AnalyticField(FieldBase):
    """Union of soft spheres with the field contract (its features are the points themselves).

    Density ``sigma · sigmoid((R − |x − c|) / width)`` (max over spheres), so the σ/2 level set is
    exactly the spheres; albedo is red for x > x of the first centre, blue below.
    """

    def __init__(self, spheres: Sequence[Tuple[Sequence[float], float]] = (((0.0, 0.0, 0.0), 0.5),), sigma: float = 50.0, width: float = 0.01):
        super().__init__()
        self.register_buffer("centers", torch.tensor([c for c, _ in spheres], dtype=torch.float32))
        self.register_buffer("radii", torch.tensor([r for _, r in spheres], dtype=torch.float32))
        self.sigma, self.width = sigma, width
        self.anchor = nn.Parameter(torch.zeros(1))  # so the scene has a device

    def _signed(self, x: torch.Tensor) -> torch.Tensor:
        return (self.radii - (x[:, None, :] - self.centers).norm(dim=-1)).max(-1).values  # > 0 inside

    def get_density(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        return self.sigma * torch.sigmoid(self._signed(x) / self.width), x

    def get_outputs(self, x: torch.Tensor, h: torch.Tensor) -> dict:
        a = torch.sigmoid((h[:, 0] - self.centers[0, 0]) / 0.05)
        return {"albedo": torch.stack([a, torch.full_like(a, 0.2), 1 - a], -1)}

    def get_normals(self, x: torch.Tensor) -> torch.Tensor:
        nearest = (x[:, None, :] - self.centers).norm(dim=-1).sub(self.radii).argmin(-1)
        return F.normalize(x - self.centers[nearest], dim=-1)


def analytic_scene(spheres=(((0.0, 0.0, 0.0), 0.5),), sigma: float = 50.0, bound: float = 1.0, width: float = 0.01) -> Scene:
    """A real :class:`Scene` (renderer, background) whose field is :class:`AnalyticField`."""
    return Scene(AnalyticField(spheres, sigma, width), Background("solid", (1.0, 1.0, 1.0)), bound=bound, render_cfg=RenderConfig(num_samples=48))


def small_config(**export) -> Config:
    cfg = Config()
    cfg.export.resolution = 48
    for k, v in export.items():
        setattr(cfg.export, k, v)
    return cfg


CENTER = (0.1, 0.2, 0.3)
RADIUS = 0.45


@pytest.fixture(scope="module")
def sphere_meshes(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    out = tmp_path_factory.mktemp("mesh")
    # vertex colours (--texture off); the textured path: tests/test_export_texture.py
    return export_mesh(analytic_scene(((CENTER, RADIUS),)), small_config(texture=False), out, ["glb", "obj", "ply"], progress=False)


def test_sphere_mesh_bounds_watertight_and_coloured(sphere_meshes: list[Path]) -> None:
    assert [p.name for p in sphere_meshes] == ["mesh.glb", "mesh.obj", "mesh.ply"]
    voxel = 2.0 / (48 - 1)
    for path in sphere_meshes[1:]:  # OBJ and PLY: z-up world frame
        mesh = trimesh.load(path, process=False)
        np.testing.assert_allclose(mesh.bounds[0], np.array(CENTER) - RADIUS, atol=voxel)
        np.testing.assert_allclose(mesh.bounds[1], np.array(CENTER) + RADIUS, atol=voxel)
        radii = np.linalg.norm(mesh.vertices - np.array(CENTER), axis=1)
        assert np.abs(radii - RADIUS).max() < voxel
        mesh.merge_vertices()
        assert mesh.is_watertight and mesh.volume > 0  # closed, normals pointing out
        assert mesh.visual.kind == "vertex"
        colors = np.asarray(mesh.visual.vertex_colors)[:, :3].astype(int)
        right = mesh.vertices[:, 0] > CENTER[0] + 0.15
        left = mesh.vertices[:, 0] < CENTER[0] - 0.15
        assert (colors[right, 0] > colors[right, 2] + 100).all()  # red where the albedo is red
        assert (colors[left, 2] > colors[left, 0] + 100).all()


def test_glb_loads_with_colours_and_is_y_up(sphere_meshes: list[Path]) -> None:
    scene = trimesh.load(sphere_meshes[0])
    (mesh,) = scene.geometry.values()
    assert mesh.visual.kind == "vertex" and len(mesh.visual.vertex_colors) == len(mesh.vertices)
    obj = trimesh.load(sphere_meshes[1], process=False)
    # glTF y-up: world (x, y, z) -> (x, z, -y)
    expected = obj.vertices[:, [0, 2, 1]] * np.array([1.0, 1.0, -1.0])
    np.testing.assert_allclose(np.sort(mesh.vertices, 0), np.sort(expected, 0), atol=1e-5)
    center = mesh.vertices.mean(0)
    np.testing.assert_allclose(center, [CENTER[0], CENTER[2], -CENTER[1]], atol=0.02)


def test_auto_threshold_and_small_pieces_removed() -> None:
    spheres = (((0.0, 0.0, 0.0), 0.45), ((0.7, 0.0, 0.0), 0.07))
    scene = analytic_scene(spheres)
    kept = extract_mesh(scene, 1.0, 48, None, 0.05)
    # read from the renders: the sigmoid edge (width 0.01) puts every level in (1, 49) within 0.04 of r
    assert 1.0 < kept.metadata["threshold"] < 49.0
    assert kept.vertices[:, 0].max() < 0.5  # the floater (fewer than 5% of the faces) is gone
    both = extract_mesh(scene, 1.0, 48, None, 0.0)
    assert both.vertices[:, 0].max() > 0.7
    assert len(both.split(only_watertight=False)) == 2


def test_weak_field_auto_threshold_is_below_the_peak() -> None:
    mesh = extract_mesh(analytic_scene(sigma=8.0), 1.0, 32, None, 0.05)
    assert 0.0 < mesh.metadata["threshold"] < 8.0
    assert np.abs(np.linalg.norm(mesh.vertices, axis=1) - 0.5).max() < 2 / 31


def test_keep_large_components_reindexes() -> None:
    v = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0], [5, 5, 5], [6, 5, 5], [5, 6, 5]], dtype=float)
    f = np.array([[0, 1, 2], [1, 3, 2], [4, 5, 6]])
    v2, f2 = keep_large_components(v, f, 0.6)
    assert len(v2) == 4 and f2.tolist() == [[0, 1, 2], [1, 3, 2]]


def test_empty_field_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(EmptyFieldError, match=r"empty.*--threshold"):
        export_mesh(analytic_scene(sigma=0.0), small_config(), tmp_path, progress=False)
    with pytest.raises(UsageError, match=r"threshold 80 .*largest value: 50.*--threshold"):
        export_mesh(analytic_scene(), small_config(), tmp_path, threshold=80.0, progress=False)
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_all_solid_field_is_a_clear_error(tmp_path: Path) -> None:
    solid = analytic_scene((((0.0, 0.0, 0.0), 5.0),))  # σ = 50 everywhere inside the bound
    with pytest.raises(EmptyFieldError, match=r"solid.*threshold auto = .*higher --threshold"):
        export_mesh(solid, small_config(), tmp_path, progress=False)
    with pytest.raises(EmptyFieldError, match=r"solid.*threshold 10 "):
        export_mesh(solid, small_config(), tmp_path, threshold="10", progress=False)
    assert not list(tmp_path.iterdir())


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="unknown mesh format"):
        export_mesh(analytic_scene(), small_config(), tmp_path, ["stl"])
    with pytest.raises(UsageError, match="--threshold"):
        export_mesh(analytic_scene(), small_config(), tmp_path, threshold="abc")
    with pytest.raises(UsageError, match="resolution"):
        export_mesh(analytic_scene(), small_config(), tmp_path, resolution=4)


def test_cli_bad_threshold_exit_code_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["export", str(tmp_path), "--threshold", "lots"]) == 2
    assert "--threshold" in capsys.readouterr().err


# ----------------------------------------------------------------------------- run folders, CLI
TINY_SCENE = [
    "device=cpu",
    "scene.encoding=torch",
    "scene.levels=4",
    "scene.log2_table_size=12",
    "scene.base_resolution=8",
    "scene.max_resolution=32",
    "scene.hidden_dim=16",
    "scene.num_layers=1",
    "scene.background=solid",
    "render.num_samples=32",
]


def make_run(root: Path, *overrides: str) -> Path:
    """A run folder as `dreamperp train` leaves it (config.yaml + one checkpoint) holding an
    untrained tiny scene: its density blob (σ ≈ 10 at the centre, radius 0.5) is the object."""
    from dreamperp.config import load_config
    from dreamperp.runs.checkpoint import save_checkpoint
    from dreamperp.runs.folder import RunDir

    cfg = load_config(None, [f"output_dir={root}", "name=test", "prompt=a ball", *TINY_SCENE, *overrides])
    run = RunDir.create(cfg)
    torch.manual_seed(0)
    scene = Scene.from_config(cfg, device="cpu")
    save_checkpoint(run.ckpt_dir, {"step": 7, "scene": scene.state_dict()}, keep=1)
    return run.root


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run(tmp_path_factory.mktemp("runs"))


def test_cli_export_writes_meshes(run_dir: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["export", str(run_dir), "--format", "glb", "--format", "ply", "--resolution", "32", "--texture-size", "64"]) == 0
    printed = capsys.readouterr().out.split()
    assert printed == [str(run_dir / "export" / "mesh.glb"), str(run_dir / "export" / "mesh.ply")]
    (mesh,) = trimesh.load(run_dir / "export" / "mesh.glb").geometry.values()
    assert mesh.visual.kind == "texture" and len(mesh.faces) > 100  # glb is textured by default
    assert trimesh.load(run_dir / "export" / "mesh.ply", process=False).visual.kind == "vertex"
    # the blob σ = softplus(mlp + 10·(1 − |x|/0.5)) is soft: the fitted level (the renders' surface,
    # docs/design.md §14) lies between its half-peak sphere (radius ≈ 0.25) and its outer haze;
    # measured 0.345
    radii = np.linalg.norm(mesh.vertices, axis=1)
    assert 0.28 < radii.mean() < 0.42


def test_cli_export_errors_exit_code_2(run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["export", str(run_dir), "--threshold", "1000", "--resolution", "16"]) == 2
    err = capsys.readouterr().err
    assert "threshold 1000" in err and "--threshold" in err and err.count("\n") == 1
    assert main(["export", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["export", str(run_dir), "--checkpoint", str(tmp_path / "nope.pt")]) == 2
    assert "nope.pt" in capsys.readouterr().err
