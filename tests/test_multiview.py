"""Loading NeRF-synthetic transforms.json datasets and sampling training rays from them."""

from __future__ import annotations

import json
import math
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from dreamperp.cameras import make_cameras
from dreamperp.errors import UsageError
from dreamperp.multiview import load_transforms

H, W = 6, 8


def write_dataset(root: Path, n: int = 3, *, ext_in_json: bool = False) -> tuple[Path, list[np.ndarray], torch.Tensor]:
    """n RGBA images of H×W with poses on a ring, NeRF-synthetic layout (train/r_i.png)."""
    (root / "train").mkdir(parents=True, exist_ok=True)
    cams = make_cameras(torch.full((n,), 20.0), torch.arange(n) * (360.0 / n), torch.full((n,), 4.0), torch.full((n,), 40.0), H, W)
    rng = np.random.default_rng(0)
    frames, images = [], []
    for i in range(n):
        img = rng.integers(0, 256, size=(H, W, 4), dtype=np.uint8)
        iio.imwrite(root / "train" / f"r_{i}.png", img)
        images.append(img)
        frames.append({"file_path": f"./train/r_{i}" + (".png" if ext_in_json else ""), "rotation": 0.0, "transform_matrix": cams.c2w[i].tolist()})
    fovx = 2 * math.atan(math.tan(math.radians(40.0) / 2) * W / H)
    (root / "transforms.json").write_text(json.dumps({"camera_angle_x": fovx, "aabb_scale": 4, "frames": frames}))
    return root / "transforms.json", images, cams.c2w


@pytest.mark.parametrize("ext_in_json", [False, True])
def test_load_images_poses_and_fov(tmp_path, ext_in_json):
    path, images, c2w = write_dataset(tmp_path, ext_in_json=ext_in_json)
    ds = load_transforms(tmp_path)  # the folder works as well as the file
    assert ds.path == path and len(ds) == 3
    assert ds.images.shape == (3, H, W, 4) and ds.images.dtype == torch.float32
    assert torch.allclose(ds.images[1], torch.from_numpy(images[1]).float() / 255)
    assert torch.allclose(ds.c2w, c2w, atol=1e-6)
    assert abs(ds.fovy_deg - 40.0) < 1e-4
    cams = ds.cameras()
    assert torch.allclose(cams.fovy_deg, torch.full((3,), 40.0), atol=1e-4)
    assert torch.allclose(cams.elevation_deg, torch.full((3,), 20.0), atol=1e-4)
    assert ds.names == ["r_0", "r_1", "r_2"] if not ext_in_json else ds.names == ["r_0.png", "r_1.png", "r_2.png"]
    white = ds.composited("white")
    a = ds.images[..., 3:]
    assert torch.allclose(white, ds.images[..., :3] * a + (1 - a))


def test_poses_only_and_blender_camera_convention(tmp_path):
    path, _, _ = write_dataset(tmp_path, n=2)
    meta = json.loads(path.read_text())
    # A Blender camera with identity rotation at (0, 0, 4) looks straight down -z at the origin.
    meta["frames"][0]["transform_matrix"] = [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 4], [0, 0, 0, 1]]
    path.write_text(json.dumps(meta))
    ds = load_transforms(path, load_images=False)
    assert ds.images is None and (ds.height, ds.width) == (H, W)
    from dreamperp.cameras import camera_rays

    _, d = camera_rays(ds.cameras(height=4, width=4))
    centre = d[0, 1:3, 1:3].mean((0, 1))
    assert torch.allclose(torch.nn.functional.normalize(centre, dim=0), torch.tensor([0.0, 0.0, -1.0]), atol=1e-6)
    assert d[0, 0, 0, 1] > 0 and d[0, 0, 0, 0] < 0  # top-left pixel: up (+y) and left (-x)


def test_sample_rays_targets_and_backgrounds(tmp_path):
    write_dataset(tmp_path)
    ds = load_transforms(tmp_path)
    torch.manual_seed(0)
    batch = ds.sample_rays(500, background="black")
    assert batch.rays_o.shape == batch.rays_d.shape == batch.rgb.shape == (500, 3) and batch.alpha.shape == (500, 1)
    assert torch.allclose(batch.rays_d.norm(dim=-1), torch.ones(500), atol=1e-6)
    # Recover each ray's pixel by projecting a point along it into every camera; its target must match.
    cams = ds.cameras()
    for k in range(0, 500, 50):
        view = int(((cams.position - batch.rays_o[k]).norm(dim=-1)).argmin())
        p_cam = cams.c2w[view, :3, :3].T @ batch.rays_d[k]
        f = float(cams.focal[view])
        col = f * p_cam[0] / -p_cam[2] + W / 2 - 0.5
        row = -f * p_cam[1] / -p_cam[2] + H / 2 - 0.5
        r, c = round(float(row)), round(float(col))
        assert abs(float(row) - r) < 1e-3 and abs(float(col) - c) < 1e-3
        rgba = ds.images[view, r, c]
        assert torch.allclose(batch.rgb[k], rgba[:3] * rgba[3], atol=1e-6)
        assert torch.allclose(batch.alpha[k], rgba[3:], atol=1e-6)
    white = ds.sample_rays(50, background="white")
    assert torch.allclose(white.bg_color, torch.ones(50, 3))
    rnd = ds.sample_rays(50, background="random")
    assert rnd.bg_color.std() > 0.1
    expected = rnd.bg_color * (1 - rnd.alpha)
    assert (rnd.rgb >= expected - 1e-6).all()


def _expect_usage_error(path, *needles: str):
    with pytest.raises(UsageError) as info:
        load_transforms(path)
    msg = str(info.value)
    assert "\n" not in msg
    for needle in needles:
        assert needle in msg, msg


def test_missing_transforms_json(tmp_path):
    _expect_usage_error(tmp_path, "transforms.json", str(tmp_path))
    _expect_usage_error(tmp_path / "nope.json", "nope.json")


def test_invalid_json(tmp_path):
    path, _, _ = write_dataset(tmp_path)
    path.write_text('{"camera_angle_x": 0.7, "frames": [')
    _expect_usage_error(path, str(path), "not valid JSON")


def test_missing_image(tmp_path):
    path, _, _ = write_dataset(tmp_path)
    (tmp_path / "train" / "r_1.png").unlink()
    _expect_usage_error(path, str(path), "r_1.png", "does not exist")


def test_image_of_wrong_size(tmp_path):
    path, _, _ = write_dataset(tmp_path)
    iio.imwrite(tmp_path / "train" / "r_2.png", np.zeros((H + 2, W, 4), dtype=np.uint8))
    _expect_usage_error(path, "r_2.png", "same size")


@pytest.mark.parametrize(
    "matrix,needle",
    [
        ([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 1]], "non-invertible"),
        ([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, float("nan")], [0, 0, 0, 1]], "non-finite"),
        ([[1, 0, 0], [0, 1, 0]], "4x4"),
    ],
)
def test_bad_pose(tmp_path, matrix, needle):
    path, _, _ = write_dataset(tmp_path)
    meta = json.loads(path.read_text())
    meta["frames"][1]["transform_matrix"] = matrix
    path.write_text(json.dumps(meta))
    _expect_usage_error(path, str(path), "frame 1", needle)


def test_missing_camera_angle(tmp_path):
    path, _, _ = write_dataset(tmp_path)
    meta = json.loads(path.read_text())
    del meta["camera_angle_x"]
    path.write_text(json.dumps(meta))
    _expect_usage_error(path, str(path), "camera_angle_x")
