"""Camera conventions (docs/design.md §2), sampling, orbits and rays."""

from __future__ import annotations

import math

import pytest
import torch

from dreamperp.cameras import (
    FIXED_VIEW_NAMES,
    camera_rays,
    cameras_from_c2w,
    fixed_views,
    look_at,
    make_cameras,
    orbit_cameras,
    pixel_directions,
    pose_from_spherical,
    sample_cameras,
    sample_light_positions,
    wrap_azimuth,
)
from dreamperp.config import DataConfig
from dreamperp.plan import azimuth_range_at


def _one(elev: float, azim: float, radius: float = 2.0, fovy: float = 60.0, h: int = 8, w: int = 8):
    t = lambda v: torch.tensor([float(v)])  # noqa: E731
    return make_cameras(t(elev), t(azim), t(radius), t(fovy), h, w)


def test_front_camera_sits_on_plus_x_and_looks_at_origin():
    cam = _one(0.0, 0.0, radius=2.0)
    c2w = cam.c2w[0]
    assert torch.allclose(c2w[:3, 3], torch.tensor([2.0, 0.0, 0.0]), atol=1e-6)
    # OpenGL camera: looks down -z, so the camera's +z axis points away from the origin.
    assert torch.allclose(c2w[:3, 2], torch.tensor([1.0, 0.0, 0.0]), atol=1e-6)
    assert torch.allclose(c2w[:3, 1], torch.tensor([0.0, 0.0, 1.0]), atol=1e-6)  # image up = world z
    assert torch.allclose(c2w[:3, 0], torch.tensor([0.0, 1.0, 0.0]), atol=1e-6)  # right-handed
    assert torch.allclose(torch.linalg.det(c2w[:3, :3]), torch.tensor(1.0), atol=1e-6)


@pytest.mark.parametrize("elev,azim", [(0, 90), (30, 180), (-20, -45), (60, 135), (90, 10), (-90, 0)])
def test_spherical_position_and_orthonormal_pose(elev, azim):
    cam = _one(elev, azim, radius=1.5)
    e, a = math.radians(elev), math.radians(azim)
    expected = 1.5 * torch.tensor([math.cos(e) * math.cos(a), math.cos(e) * math.sin(a), math.sin(e)])
    c2w = cam.c2w[0]
    assert torch.allclose(c2w[:3, 3], expected, atol=1e-5)
    rot = c2w[:3, :3]
    assert torch.allclose(rot.T @ rot, torch.eye(3), atol=1e-5)
    assert torch.allclose(torch.linalg.det(rot), torch.tensor(1.0), atol=1e-5)
    # Looking at the origin: -z_cam is the direction from the camera to the origin.
    assert torch.allclose(-rot[:, 2], -expected / 1.5, atol=1e-5)
    # Image up never points down (the world z component of camera y is >= 0).
    assert rot[2, 1] >= -1e-6


def test_look_at_matches_spherical_pose():
    elev, azim, radius = torch.tensor([10.0, 45.0]), torch.tensor([30.0, -120.0]), torch.tensor([2.0, 1.2])
    c2w = pose_from_spherical(elev, azim, radius)
    assert torch.allclose(look_at(c2w[:, :3, 3]), c2w, atol=1e-5)
    straight_up = look_at(torch.tensor([[0.0, 0.0, 3.0]]))
    assert torch.isfinite(straight_up).all()
    assert torch.allclose(straight_up[0, :3, 2], torch.tensor([0.0, 0.0, 1.0]), atol=1e-6)


def test_wrap_azimuth_to_half_open_interval():
    a = torch.tensor([0.0, 180.0, -180.0, 190.0, -190.0, 360.0, 540.0, -359.0])
    assert torch.allclose(wrap_azimuth(a), torch.tensor([0.0, 180.0, 180.0, -170.0, 170.0, 0.0, 180.0, 1.0]))


def test_rays_are_unit_and_centre_pixel_points_at_origin():
    cams = make_cameras(torch.tensor([20.0, -10.0]), torch.tensor([40.0, 200.0]), torch.tensor([2.0, 1.6]), torch.tensor([50.0, 70.0]), 9, 9)
    rays_o, rays_d = camera_rays(cams)
    assert rays_o.shape == rays_d.shape == (2, 9, 9, 3)
    assert torch.allclose(rays_d.norm(dim=-1), torch.ones(2, 9, 9), atol=1e-6)
    centre = rays_d[:, 4, 4]
    to_origin = -cams.position / cams.position.norm(dim=-1, keepdim=True)
    assert torch.allclose(centre, to_origin, atol=1e-6)
    assert torch.allclose(rays_o, cams.position[:, None, None, :].expand_as(rays_o))


def test_ray_image_orientation_and_vertical_fov():
    cam = _one(0.0, 0.0, radius=3.0, fovy=90.0, h=4, w=6)  # at +x looking at -x; right = +y, up = +z
    _, d = camera_rays(cam)
    assert d[0, 0, 0, 2] > 0 and d[0, -1, 0, 2] < 0  # row 0 is the top of the image
    assert d[0, 0, 0, 1] < 0 and d[0, 0, -1, 1] > 0  # column 0 is the left
    # focal = 0.5·H / tan(fovy/2) = 2 px; pixel centre of row 0 is 1.5 px above the centre.
    assert torch.allclose(d[0, 0, :, 2] / -d[0, 0, :, 0], torch.full((6,), 0.75), atol=1e-6)
    assert torch.allclose(d[0, :, 0, 1] / -d[0, :, 0, 0], torch.full((4,), -1.25), atol=1e-6)


def test_pixel_directions_match_camera_rays():
    cams = _one(15.0, 70.0, h=5, w=7)
    _, d = camera_rays(cams)
    rows, cols = torch.tensor([0, 4, 2]), torch.tensor([6, 0, 3])
    picked = pixel_directions(cams, torch.zeros(3, dtype=torch.long), rows, cols)
    assert torch.allclose(picked, d[0, rows, cols], atol=1e-6)


def test_orbit_spacing_starts_at_front_without_repeat():
    cams = orbit_cameras(8, elevation_deg=15.0, radius=2.0, fovy_deg=50.0, height=8, width=8)
    assert len(cams) == 8
    expected = wrap_azimuth(torch.arange(8) * 45.0)
    assert torch.allclose(cams.azimuth_deg, expected)
    assert float(cams.azimuth_deg[0]) == 0.0
    assert len(set(round(float(a) % 360, 4) for a in cams.azimuth_deg)) == 8
    assert torch.allclose(cams.elevation_deg, torch.full((8,), 15.0))
    assert torch.allclose(cams.position.norm(dim=-1), torch.full((8,), 2.0), atol=1e-5)


def test_sample_cameras_stratified_and_in_range():
    data = DataConfig()
    data.elevation_range, data.radius_range, data.fov_range = [-10.0, 45.0], [1.5, 2.0], [40.0, 70.0]
    torch.manual_seed(0)
    for _ in range(20):
        cams = sample_cameras(data, 4, 16, 16)
        az = cams.azimuth_deg
        # Camera i draws from the i-th quarter of (-180, 180].
        for i in range(4):
            lo, hi = -180 + 90 * i, -180 + 90 * (i + 1)
            assert lo - 1e-4 <= float(az[i]) <= hi + 1e-4 or (i == 0 and float(az[i]) == 180.0)
        assert ((cams.elevation_deg >= -10) & (cams.elevation_deg <= 45)).all()
        assert ((cams.radius >= 1.5) & (cams.radius <= 2.0)).all()
        assert ((cams.fovy_deg >= 40) & (cams.fovy_deg <= 70)).all()
        assert torch.allclose(cams.position.norm(dim=-1), cams.radius, atol=1e-5)
    assert cams.height == 16 and cams.width == 16


def test_front_share_redraws_that_share_in_the_front_sector():
    """data.front_share 0.5 at ±45° after the front-first steps: P(|a| < 45°) = 0.5 + 0.5·90/360 =
    0.625 and P(|a| > 90°) = 0.5·0.5 = 0.25; during the front-first steps only the schedule acts; 0 is
    the default's draw exactly; clipped to azimuth_range, and a range without the front is unchanged."""
    n = 20000  # binomial std of a share near 0.6: sqrt(0.625·0.375/n) = 0.0034; the bounds are 5 std
    data = DataConfig(front_first_steps=[100, 300], front_first_deg=10.0, front_share=0.5)
    az = sample_cameras(data, n, 8, 8, generator=torch.Generator().manual_seed(0), step=300).azimuth_deg
    assert abs(float((az.abs() < 45).float().mean()) - 0.625) < 0.017
    assert abs(float((az.abs() > 90).float().mean()) - 0.25) < 0.016
    during = sample_cameras(data, 1000, 8, 8, generator=torch.Generator().manual_seed(1), step=200).azimuth_deg
    lo, hi = azimuth_range_at(data, 200)
    assert ((during >= lo - 1e-4) & (during <= hi + 1e-4)).all()
    assert abs(float((during.abs() < 45).float().mean()) - 90 / (hi - lo)) < 0.08  # uniform over the range: no front share yet
    a = sample_cameras(DataConfig(), 64, 8, 8, generator=torch.Generator().manual_seed(2), step=5).azimuth_deg
    b = sample_cameras(DataConfig(front_share=0.0), 64, 8, 8, generator=torch.Generator().manual_seed(2), step=5).azimuth_deg
    assert torch.equal(a, b)
    half = DataConfig(azimuth_range=[0.0, 180.0], front_share=1.0)
    az = sample_cameras(half, 1000, 8, 8, generator=torch.Generator().manual_seed(3)).azimuth_deg
    assert ((az >= -1e-4) & (az <= 45 + 1e-4)).all() and float(az.max()) > 40
    away = DataConfig(azimuth_range=[90.0, 180.0], front_share=1.0)
    az = sample_cameras(away, 1000, 8, 8, generator=torch.Generator().manual_seed(4)).azimuth_deg
    assert ((az.abs() >= 90 - 1e-4) & (az.abs() <= 180 + 1e-4)).all()


def test_front_first_range_holds_then_widens_linearly():
    """data.front_first_steps [100, 300], ±30°: ±30 until step 100, half width 30 + 150·(s − 100)/200
    after (105° at step 200), the full range from 300; clipped to azimuth_range; off by default."""
    data = DataConfig(front_first_steps=[100, 300], front_first_deg=30.0)
    assert azimuth_range_at(data, 0) == azimuth_range_at(data, 100) == (-30.0, 30.0)
    assert azimuth_range_at(data, 200) == (-105.0, 105.0)
    assert azimuth_range_at(data, 250) == (-142.5, 142.5)
    assert azimuth_range_at(data, 300) == azimuth_range_at(data, 10**6) == azimuth_range_at(data, None) == (-180.0, 180.0)
    assert azimuth_range_at(DataConfig(), 0) == (-180.0, 180.0)
    assert azimuth_range_at(DataConfig(front_first_steps=[0, 100]), 50) == (-105.0, 105.0)  # no hold: widens from step 0
    clipped = DataConfig(azimuth_range=[-10.0, 180.0], front_first_steps=[100, 300])
    assert azimuth_range_at(clipped, 0) == (-10.0, 30.0)
    away = DataConfig(azimuth_range=[90.0, 180.0], front_first_steps=[100, 300])
    assert azimuth_range_at(away, 0) == (90.0, 180.0)  # a range without the front is left as it is
    torch.manual_seed(0)
    for step in (0, 99, 200):
        az = sample_cameras(data, 4, 8, 8, step=step).azimuth_deg
        lo, hi = azimuth_range_at(data, step)
        assert ((az >= lo - 1e-4) & (az <= hi + 1e-4)).all()
        assert float(az.min()) < lo + (hi - lo) / 4 + 1e-4  # still stratified: camera 0 in the first quarter
    torch.manual_seed(1)
    a = sample_cameras(DataConfig(), 3, 8, 8)
    torch.manual_seed(1)
    b = sample_cameras(data, 3, 8, 8, step=400)
    assert torch.equal(a.c2w, b.c2w)  # past the schedule, the same draws as without it


def test_sample_cameras_uses_global_rng_and_generator():
    data = DataConfig()
    torch.manual_seed(3)
    a = sample_cameras(data, 3, 8, 8)
    torch.manual_seed(3)
    b = sample_cameras(data, 3, 8, 8)
    assert torch.equal(a.c2w, b.c2w)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(sample_cameras(data, 2, 8, 8, generator=g1).c2w, sample_cameras(data, 2, 8, 8, generator=g2).c2w)


def test_fixed_views_front_side_back_overhead():
    data = DataConfig()
    cams = fixed_views(data, 8, 8)
    assert FIXED_VIEW_NAMES == ("front", "side", "back", "overhead")
    assert torch.allclose(cams.azimuth_deg, torch.tensor([0.0, 90.0, 180.0, 0.0]))
    assert float(cams.elevation_deg[3]) > 60.0  # above Perp-Neg's overhead threshold
    assert torch.allclose(cams.elevation_deg[:3], torch.full((3,), data.eval_elevation))
    assert torch.allclose(cams.radius, torch.full((4,), data.eval_radius))
    assert torch.allclose(cams.fovy_deg, torch.full((4,), data.eval_fov))


def test_cameras_from_c2w_recovers_angles_and_fov():
    src = make_cameras(torch.tensor([25.0, -5.0]), torch.tensor([-100.0, 30.0]), torch.tensor([1.7, 2.2]), torch.tensor([45.0, 45.0]), 20, 40)
    fovx = math.degrees(2 * math.atan(math.tan(math.radians(45.0) / 2) * 40 / 20))
    cams = cameras_from_c2w(src.c2w, 20, 40, fovx_deg=fovx)
    assert torch.allclose(cams.fovy_deg, src.fovy_deg, atol=1e-4)
    assert torch.allclose(cams.azimuth_deg, src.azimuth_deg, atol=1e-4)
    assert torch.allclose(cams.elevation_deg, src.elevation_deg, atol=1e-4)
    assert torch.allclose(cams.radius, src.radius, atol=1e-5)
    with pytest.raises(ValueError):
        cameras_from_c2w(src.c2w, 20, 40)


def test_camera_batch_indexing_and_light_sampling():
    cams = orbit_cameras(4, 10.0, 2.0, 50.0, 8, 8)
    sub = cams[1]
    assert len(sub) == 1 and torch.allclose(sub.c2w[0], cams.c2w[1])
    assert len(cams[torch.tensor([0, 2])]) == 2
    torch.manual_seed(0)
    lights = sample_light_positions(cams, [0.8, 1.5])
    dist = lights.norm(dim=-1) / cams.radius
    assert lights.shape == (4, 3) and ((dist >= 0.8 - 1e-5) & (dist <= 1.5 + 1e-5)).all()
    # Lights stay on the camera's side of the object.
    assert ((lights * cams.position).sum(-1) > 0).float().mean() >= 0.75
