"""Renderer: analytic opacity of a constant-density sphere, shading, regularisers, chunking, Scene."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dreamperp.cameras import camera_rays, orbit_cameras
from dreamperp.config import Config, RenderConfig
from dreamperp.errors import UsageError
from dreamperp.plan import choose_shading
from dreamperp.scene import (
    Background,
    Field,
    FieldBase,
    Scene,
    ray_sphere,
    render,
    render_chunked,
)


class ConstantSphere(FieldBase):
    """Stand-in field: density ``sigma`` inside radius ``radius`` and 0 outside, exact normals."""

    def __init__(self, radius: float, sigma: float, color=(1.0, 0.0, 0.0), inward: bool = False):
        super().__init__()
        self.radius, self.sigma, self.inward = radius, sigma, inward
        self.register_buffer("color", torch.tensor(color))
        self.dummy = nn.Parameter(torch.zeros(()))

    def get_density(self, x):
        return torch.where(x.norm(dim=-1) < self.radius, self.sigma, 0.0) + 0 * self.dummy, x

    def get_outputs(self, x, h):
        return {"albedo": self.color.expand(h.shape[0], 3)}

    def get_normals(self, x):
        n = F.normalize(x, dim=-1)
        return -n if self.inward else n


def sphere_scene(radius=0.6, sigma=1.0, num_samples=8192, bg=(0.0, 0.0, 0.0), **field_kw) -> Scene:
    cfg = RenderConfig()
    cfg.num_samples, cfg.skip_weight, cfg.ambient_ratio = num_samples, 0.0, 0.1
    return Scene(ConstantSphere(radius, sigma, **field_kw), Background("solid", bg), bound=1.0, render_cfg=cfg)


def side_rays(offsets):
    """Rays from x = -3 along +x, at heights ``offsets`` above the centre."""
    n = len(offsets)
    o = torch.stack([torch.full((n,), -3.0), torch.zeros(n), torch.tensor(offsets, dtype=torch.float32)], -1)
    d = torch.tensor([[1.0, 0.0, 0.0]]).expand(n, 3)
    return o, d.contiguous()


@pytest.mark.parametrize("train", [False, True])
def test_constant_density_sphere_opacity_is_analytic(train):
    radius, sigma = 0.6, 1.0
    offsets = [0.0, 0.15, 0.3, 0.45, 0.55, 0.59, 0.7]
    scene = sphere_scene(radius, sigma)
    o, d = side_rays(offsets)
    torch.manual_seed(0)
    with torch.no_grad():
        out = render(scene, o, d, train=train, need_normals=False)
    for i, b in enumerate(offsets):
        chord = 2 * math.sqrt(max(radius**2 - b**2, 0.0))
        expected = 1 - math.exp(-sigma * chord)
        assert abs(float(out["opacity"][i, 0]) - expected) < 1e-3, (b, float(out["opacity"][i, 0]), expected)
    # Red albedo on a black background: rgb = opacity · red.
    assert torch.allclose(out["rgb"][:, 0], out["opacity"][:, 0], atol=1e-6)
    assert torch.allclose(out["rgb"][:, 1:], torch.zeros(len(offsets), 2), atol=1e-6)


def test_opaque_sphere_depth_normal_and_orientation():
    scene = sphere_scene(radius=0.6, sigma=2000.0)
    o, d = side_rays([0.0, 0.3])
    out = render(scene, o, d, train=False)
    assert torch.allclose(out["opacity"], torch.ones(2, 1), atol=1e-4)
    surface = torch.tensor([3.0 - 0.6, 3.0 - math.sqrt(0.6**2 - 0.3**2)])
    assert torch.allclose(out["depth"][:, 0], surface, atol=2e-3)
    expected_n = torch.tensor([[-1.0, 0.0, 0.0], [-math.sqrt(1 - 0.25), 0.0, 0.5]])
    assert torch.allclose(out["normal"], expected_n, atol=5e-3)
    assert float(out["orient"]) < 1e-6  # outward normals face the camera
    inward = render(sphere_scene(radius=0.6, sigma=2000.0, inward=True), o, d, train=False)
    assert float(inward["orient"]) > 0.5


@torch.no_grad()
def test_shading_modes_with_point_light():
    scene = sphere_scene(radius=0.6, sigma=2000.0, color=(0.5, 0.25, 1.0))
    o, d = side_rays([0.0, 0.5])
    light = torch.tensor([-5.0, 0.0, 0.0])  # straight behind the camera
    albedo = render(scene, o, d, shading="albedo", train=False)
    lamb = render(scene, o, d, shading="lambertian", light_pos=light, train=False)
    tex = render(scene, o, d, shading="textureless", light_pos=light, train=False)
    assert torch.allclose(albedo["rgb"][0], torch.tensor([0.5, 0.25, 1.0]), atol=1e-3)
    # Centre pixel faces the light: full diffuse.
    assert torch.allclose(lamb["rgb"][0], torch.tensor([0.5, 0.25, 1.0]), atol=5e-3)
    assert torch.allclose(tex["rgb"][0], torch.ones(3), atol=5e-3)
    # Grazing pixel: darker, never below ambient, textureless is grey.
    assert (lamb["rgb"][1] < lamb["rgb"][0]).all()
    assert float(tex["rgb"][1, 0]) >= 0.1 - 1e-4
    assert torch.allclose(tex["rgb"][1], tex["rgb"][1, :1].expand(3), atol=1e-6)
    with pytest.raises(ValueError):
        render(scene, o, d, shading="phong")


def test_background_and_misses():
    scene = sphere_scene(radius=0.6, sigma=2000.0, bg=(0.2, 0.4, 0.6))
    o, d = side_rays([0.0, 0.99, 1.5])  # hit, inside the bound but missing the object, outside the bound
    out = render(scene, o, d, train=False)
    assert torch.allclose(out["rgb"][1:], torch.tensor([[0.2, 0.4, 0.6]] * 2), atol=1e-6)
    assert torch.allclose(out["opacity"][1:], torch.zeros(2, 1))
    assert torch.allclose(out["normal"][2], torch.zeros(3))
    override = render(scene, o, d, bg_color=torch.tensor([1.0, 0.0, 0.0]), train=False)
    assert torch.allclose(override["rgb"][2], torch.tensor([1.0, 0.0, 0.0]))


def test_ray_sphere_intersections():
    o = torch.tensor([[-3.0, 0.0, 0.0], [0.0, 0.0, 0.0], [-3.0, 2.0, 0.0]])
    d = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    near, far, hit = ray_sphere(o, d, 1.0)
    assert hit.tolist() == [True, True, False]
    assert torch.allclose(near[:2], torch.tensor([2.0, 0.0])) and torch.allclose(far[:2], torch.tensor([4.0, 1.0]))


def _tiny_cfg(**overrides) -> Config:
    cfg = Config()
    cfg.scene.levels, cfg.scene.log2_table_size, cfg.scene.max_resolution = 4, 12, 64
    cfg.scene.hidden_dim, cfg.scene.num_layers = 16, 1
    cfg.render.num_samples = 24
    cfg.device = "cpu"
    for key, value in overrides.items():
        section, name = key.split("__")
        setattr(getattr(cfg, section), name, value)
    return cfg


def test_scene_from_config_gradients_state_dict_and_groups():
    torch.manual_seed(0)
    scene = Scene.from_config(_tiny_cfg())
    assert scene.sampler == "dense" and scene.estimator is None
    cams = orbit_cameras(2, 10.0, 1.8, 50.0, 8, 8)
    o, d = camera_rays(cams)
    out = render(scene, o, d, shading="lambertian", light_pos=cams.position)
    assert out["rgb"].shape == (2, 8, 8, 3) and out["normal"].shape == (2, 8, 8, 3) and out["depth"].shape == (2, 8, 8, 1)
    assert float(out["opacity"].detach().max()) > 0.5  # the blob is there from the start
    for key in ("orient", "sparsity", "opacity_entropy"):
        assert out[key].dim() == 0 and torch.isfinite(out[key])
    loss = out["rgb"].mean() + out["orient"] + out["opacity_entropy"]
    loss.backward()
    groups = scene.param_groups(1e-2, 1e-3)
    assert [g["name"] for g in groups] == ["grid", "mlp"]
    assert {id(p) for g in groups for p in g["params"]} == {id(p) for p in scene.parameters()}
    for g in groups:
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in g["params"]), g["name"]
    # The state dict is the whole scene: a fresh scene loaded from it renders the same image.
    other = Scene.from_config(_tiny_cfg())
    other.load_state_dict(scene.state_dict())
    a = render_chunked(scene, o, d)
    b = render_chunked(other, o, d)
    assert torch.allclose(a["rgb"], b["rgb"])
    scene.update_occupancy(0)  # no-op on the dense path


def test_render_chunked_matches_unchunked_eval_render():
    torch.manual_seed(0)
    scene = Scene.from_config(_tiny_cfg())
    cams = orbit_cameras(1, 20.0, 1.8, 50.0, 8, 8)
    o, d = camera_rays(cams)
    with torch.no_grad():
        ref = render(scene, o, d, shading="textureless", light_pos=cams.position, train=False)
    out = render_chunked(scene, o, d, chunk=7, shading="textureless", light_pos=cams.position)
    # Chunks change the MLP's GEMM shapes, so fp32 densities differ by ~1e-6 relative on some CPUs.
    # Composited values stay within ~1e-5; finite-difference normals divide that error by
    # 2·fd_eps·|∇σ| (0.02 · ~20 here), hence their looser bound.
    for key, tol in (("rgb", 1e-5), ("opacity", 1e-5), ("depth", 1e-5), ("normal", 1e-3)):
        assert out[key].shape == ref[key].shape
        assert torch.allclose(out[key], ref[key], rtol=1e-5, atol=tol), key
    for key in ("sparsity", "opacity_entropy", "orient"):
        assert torch.allclose(out[key], ref[key], atol=1e-5), key
    assert not out["rgb"].requires_grad


def test_random_background_per_view_and_solid_at_eval():
    scene = Scene.from_config(_tiny_cfg(scene__background="random"))
    o, d = camera_rays(orbit_cameras(2, 0.0, 5.0, 20.0, 8, 8))  # far away: most rays see background
    torch.manual_seed(1)
    out = render(scene, o, d)
    corner = out["rgb"][:, 0, 0]
    assert torch.allclose(out["rgb"][:, 0, 0], out["rgb"][:, -1, -1], atol=1e-5)  # one colour per view
    assert not torch.allclose(corner[0], corner[1])
    ev = render_chunked(scene, o, d)
    assert torch.allclose(ev["rgb"][:, 0, 0], torch.ones(2, 3), atol=1e-5)  # background_color at eval


def test_field_blob_and_normals():
    cfg = _tiny_cfg()
    field = Field(cfg.scene)
    with torch.no_grad():  # switch the MLP off: only the blob bias is left
        field.density_net[-1].weight.zero_()
        field.density_net[-1].bias.zero_()
    pts = torch.tensor([[0.0, 0.0, 0.0], [0.3, 0.0, 0.0], [0.0, 0.7, 0.0], [0.0, 0.0, 0.95]])
    sigma = field.density(pts).detach()
    assert (sigma[:-1] > sigma[1:]).all() and float(sigma[0]) > 9.0 and float(sigma[-1]) < 1e-3
    x = torch.tensor([[0.2, 0.1, -0.1], [-0.1, 0.25, 0.05]])
    radial = F.normalize(x, dim=-1)
    assert torch.allclose(field.normal(x), radial, atol=1e-3)
    field.normals_mode = "analytic"
    assert torch.allclose(field.normal(x), radial, atol=1e-4)
    d, a = field.density(x), field.albedo(x)
    assert d.shape == (2,) and a.shape == (2, 3) and ((a >= 0) & (a <= 1)).all()


def test_choose_shading_schedule():
    cfg = RenderConfig()
    cfg.albedo_warmup_steps, cfg.textureless_prob = 10, 0.5
    assert choose_shading(3, cfg) == "albedo"
    torch.manual_seed(0)
    picks = [choose_shading(20, cfg) for _ in range(200)]
    assert set(picks) == {"textureless", "lambertian"} and 60 < picks.count("textureless") < 140


def test_occgrid_on_cpu_is_a_usage_error():
    with pytest.raises(UsageError, match="occgrid"):
        Scene.from_config(_tiny_cfg(render__estimator="occgrid"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (nerfacc marching kernels)")
def test_occgrid_and_dense_paths_agree_on_cuda():
    torch.manual_seed(0)
    cfg = _tiny_cfg(render__estimator="auto", render__render_step_size=0.002, render__num_samples=1024, render__skip_weight=0.0)
    cfg.device = "cuda"
    scene = Scene.from_config(cfg)
    assert scene.sampler == "occgrid"
    dense = Scene(scene.field, scene.background, bound=scene.bound, render_cfg=scene.render_cfg)
    cams = orbit_cameras(2, 15.0, 1.8, 50.0, 16, 16, device="cuda")
    o, d = camera_rays(cams)
    a = render_chunked(scene, o, d, shading="lambertian", light_pos=cams.position)
    b = render_chunked(dense, o, d, shading="lambertian", light_pos=cams.position)
    assert (a["opacity"] - b["opacity"]).abs().max() < 0.02
    assert (a["rgb"] - b["rgb"]).abs().mean() < 5e-3
    # A training step on the occgrid path updates the grid and back-propagates.
    scene.train()
    scene.update_occupancy(0)
    out = render(scene, o, d, shading="albedo")
    out["rgb"].mean().backward()
    assert any(p.grad is not None for p in scene.field.parameters())


# ------------------------------------------------------------------------------------ distortion
def test_distortion_hand_numbers():
    from dreamperp.scene.objectives import distortion

    t0 = torch.tensor([[0.0, 1.0, 2.0]], dtype=torch.float64)
    # One interval holds all the weight: only the ⅓·w²·δ term, 1/3.
    assert distortion(torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64), t0, t0 + 1).item() == pytest.approx(1 / 3)
    # Halves in neighbouring intervals: 2·½·½·1 + ⅓·(¼ + ¼) = 2/3.
    assert distortion(torch.tensor([[0.5, 0.5, 0.0]], dtype=torch.float64), t0, t0 + 1).item() == pytest.approx(2 / 3)
    # ¼ and ¾ two intervals apart: 2·¼·¾·2 + ⅓·(1/16 + 9/16) = 0.75 + 0.208333.
    value = distortion(torch.tensor([[0.25, 0.0, 0.75]], dtype=torch.float64), t0, t0 + 1).item()
    assert value == pytest.approx(0.75 + 10 / 48)


def test_distortion_matches_the_double_sum():
    from dreamperp.scene.objectives import distortion

    g = torch.Generator().manual_seed(0)
    edges = torch.rand(5, 17, generator=g, dtype=torch.float64).cumsum(-1)
    t0, t1 = edges[:, :-1], edges[:, 1:]
    w = torch.rand(5, 16, generator=g, dtype=torch.float64) / 16
    m = (t0 + t1) / 2
    brute = (w[:, :, None] * w[:, None, :] * (m[:, :, None] - m[:, None, :]).abs()).sum((1, 2))
    brute = brute + (w**2 * (t1 - t0)).sum(-1) / 3
    assert torch.allclose(distortion(w, t0, t1), brute, rtol=1e-12, atol=0)


def test_render_distortion_of_a_soft_and_a_sharp_sphere():
    # Constant density σ = 1 over the central chord L = 1.2 of a sphere of radius 0.6: with many
    # samples the loss is the continuous ∫∫ w(s)·w(t)·|s − t| with w(s) = σ·exp(−σ·s) on [0, L],
    # 2·(∫ s·e^−s − ∫ e^−s + ∫ e^−2s) = 2·(1 − e^−L·(1 + L) − (1 − e^−L) + (1 − e^−2L)/2).
    length = 1.2
    expected = 2 * (1 - math.exp(-length) * (1 + length) - (1 - math.exp(-length)) + (1 - math.exp(-2 * length)) / 2)
    o, d = side_rays([0.0, 0.9])
    with torch.no_grad():
        soft = render(sphere_scene(radius=0.6, sigma=1.0), o, d, train=False, need_normals=False, need_distortion=True)
        sharp = render(sphere_scene(radius=0.6, sigma=2000.0, num_samples=64), o, d, train=False, need_normals=False, need_distortion=True)
        plain = render(sphere_scene(radius=0.6, sigma=1.0), o, d, train=False, need_normals=False)
    assert "distortion_map" not in plain and "distortion" not in plain  # computed only when asked
    assert float(soft["distortion_map"][0, 0]) == pytest.approx(expected, abs=1e-3)
    assert float(soft["distortion_map"][1, 0]) == 0.0  # a ray that misses the object
    # An opaque surface puts the weight in one interval of the 64 over the chord of 2: ⅓·δ.
    assert float(sharp["distortion_map"][0, 0]) == pytest.approx(2 / 64 / 3, rel=1e-3)
    assert float(soft["distortion"]) == pytest.approx(expected / 2, abs=1e-3)  # mean over the two rays


def test_distortion_of_packed_samples_matches_batched():
    from dreamperp.scene.objectives import distortion

    g = torch.Generator().manual_seed(0)
    edges = torch.rand(4, 9, generator=g, dtype=torch.float64).cumsum(-1)
    w = torch.rand(4, 8, generator=g, dtype=torch.float64) / 8
    counts = torch.tensor([8, 3, 0, 5])  # rays keep a prefix of their samples; ray 2 has none
    keep = torch.arange(8)[None, :] < counts[:, None]
    ray = torch.arange(4)[:, None].expand(4, 8)[keep]
    packed = distortion(w[keep], edges[:, :-1][keep], edges[:, 1:][keep], ray, 4)
    batched = distortion(w * keep, edges[:, :-1], edges[:, 1:])  # a zero weight adds nothing
    assert packed.shape == (4,) and packed[2] == 0
    assert torch.allclose(packed, batched, rtol=1e-12, atol=0)
