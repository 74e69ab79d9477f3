"""The CUDA-only code paths, exercised on the CPU where their logic is pure PyTorch.

nerfacc's marching (``OccGridEstimator.sampling``) and packed scans are CUDA kernels; here they are
replaced by pure-PyTorch stand-ins that enforce the kernels' input contract (int64 ray indices,
float32 1-D contiguous values, samples sorted by ray), so the renderer's occgrid plumbing, the
occupancy update (nerfacc's own pure-PyTorch ``_update``), the state_dict, the tinycudann wrapper
and loading a GPU run for evaluation on the CPU are all checked without a GPU.
"""

from __future__ import annotations

from pathlib import Path

import nerfacc
import pytest
import torch
from nerfacc import OccGridEstimator
from torch import nn

from dreamperp.cameras import camera_rays, orbit_cameras
from dreamperp.config import Config, load_config
from dreamperp.errors import ConfigError, UsageError
from dreamperp.runs.checkpoint import load_run, save_checkpoint
from dreamperp.runs.folder import RunDir
from dreamperp.scene import Background, Field, Scene, render, render_chunked
from dreamperp.scene import scene as renderer_mod
from dreamperp.scene.encoding import HashGridEncoding

_ORIGINAL_WEIGHTS = nerfacc.render_weight_from_density


def _tiny_cfg() -> Config:
    cfg = Config()
    cfg.scene.levels, cfg.scene.log2_table_size, cfg.scene.max_resolution = 4, 12, 64
    cfg.scene.hidden_dim, cfg.scene.num_layers = 16, 1
    cfg.render.num_samples, cfg.render.skip_weight, cfg.render.occ_resolution = 32, 0.0, 16
    cfg.device = "cpu"
    return cfg


def _packed_weights(t_starts, t_ends, sigmas, packed_info=None, ray_indices=None, n_rays=None, prefix_trans=None):
    """nerfacc.render_weight_from_density; the packed case in pure PyTorch under the CUDA kernels' checks."""
    if ray_indices is None:
        return _ORIGINAL_WEIGHTS(t_starts, t_ends, sigmas, packed_info, ray_indices, n_rays, prefix_trans)
    assert ray_indices.dtype == torch.int64 and ray_indices.dim() == 1  # pack_info/scan read int64
    for v in (t_starts, t_ends, sigmas):
        assert v.dtype == torch.float32 and v.shape == ray_indices.shape  # scan reads data_ptr<float>
    assert n_rays is not None
    if ray_indices.numel():
        assert bool((ray_indices[1:] >= ray_indices[:-1]).all())  # chunks must be contiguous
    sd = sigmas * (t_ends - t_starts)
    excl = torch.cumsum(sd, 0) - sd
    counts = torch.bincount(ray_indices, minlength=n_rays)
    starts = torch.cumsum(counts, 0) - counts
    trans = torch.exp(-(excl - excl[starts[ray_indices]]))  # exclusive sum within each ray
    alphas = 1.0 - torch.exp(-sd)
    return trans * alphas, trans, alphas


def _fake_sampling(num_samples: int, calls: list, empty: bool = False):
    """OccGridEstimator.sampling stand-in: the dense sampler's intervals, packed, every cell occupied."""

    def sampling(rays_o, rays_d, sigma_fn=None, alpha_fn=None, near_plane=0.0, far_plane=1e10, t_min=None, t_max=None,
                 render_step_size=1e-3, early_stop_eps=1e-4, alpha_thre=0.0, stratified=False, cone_angle=0.0):
        n = rays_o.shape[0]
        for r in (rays_o, rays_d):
            assert r.shape == (n, 3) and r.dtype == torch.float32 and r.is_contiguous()
        assert t_min.shape == (n,) and t_max.shape == (n,) and t_min.dtype == torch.float32
        calls.append({"stratified": stratified, "step": render_step_size, "alpha_thre": alpha_thre})
        near = torch.clamp(torch.full_like(t_min, near_plane), min=t_min)
        far = torch.clamp(torch.full_like(t_max, far_plane), max=t_max)
        rays = (far > near).nonzero().squeeze(1)
        if empty:
            rays = rays[:0]
        edges = near[rays, None] + (far - near)[rays, None] * torch.linspace(0.0, 1.0, num_samples + 1)
        t0, t1 = edges[:, :-1].reshape(-1), edges[:, 1:].reshape(-1)
        ray_indices = rays.repeat_interleave(num_samples)
        if sigma_fn is not None and t0.numel():
            sigmas = sigma_fn(t0, t1, ray_indices)
            assert sigmas.shape == t0.shape and sigmas.dtype == torch.float32
        return ray_indices, t0, t1

    return sampling


def _scenes(monkeypatch, empty: bool = False):
    cfg = _tiny_cfg()
    torch.manual_seed(0)
    field = Field(cfg.scene)
    bg = Background("mlp")
    b = cfg.scene.bound
    est = OccGridEstimator(roi_aabb=[-b, -b, -b, b, b, b], resolution=cfg.render.occ_resolution, levels=1)
    occ = Scene(field, bg, bound=b, render_cfg=cfg.render, estimator=est)
    dense = Scene(field, bg, bound=b, render_cfg=cfg.render)
    calls: list = []
    monkeypatch.setattr(est, "sampling", _fake_sampling(cfg.render.num_samples, calls, empty))
    monkeypatch.setattr(nerfacc, "render_weight_from_density", _packed_weights)
    return occ, dense, calls


def test_occgrid_path_matches_dense_path_given_the_same_samples(monkeypatch):
    occ, dense, calls = _scenes(monkeypatch)
    assert occ.sampler == "occgrid" and bool(occ.estimator.binaries.all())  # fresh grid: all occupied
    cams = orbit_cameras(2, 20.0, 1.8, 50.0, 6, 6)
    o, d = camera_rays(cams)
    light = cams.c2w[:, :3, 3] * 1.2
    occ.eval()
    a = render_chunked(occ, o, d, shading="lambertian", light_pos=light, chunk=40, need_distortion=True)
    b = render_chunked(dense, o, d, shading="lambertian", light_pos=light, chunk=40, need_distortion=True)
    assert calls and not any(c["stratified"] for c in calls)  # evaluation marches without jitter
    # Same samples, different batch shapes through the MLP: fp32 rounding differs by ~1e-6 relative,
    # and finite-difference normals (and the orientation term built on them) amplify it by
    # 1/(2·fd_eps·|∇σ|); see test_render_chunked_matches_unchunked_eval_render.
    for key in ("rgb", "opacity", "depth", "normal", "orient", "sparsity", "opacity_entropy", "distortion", "distortion_map"):
        tol = 1e-3 if key in ("normal", "orient") else 1e-5
        assert a[key].shape == b[key].shape
        assert torch.allclose(a[key], b[key], rtol=1e-5, atol=tol), key
    assert float(a["opacity"].max()) > 0.5  # the blob is actually hit

    occ.train()
    out = render(occ, o, d, shading="textureless", light_pos=light, train=True)
    assert calls[-1]["stratified"] and calls[-1]["step"] == occ.render_cfg.render_step_size
    (out["rgb"].mean() + out["orient"] + out["opacity_entropy"]).backward()
    assert occ.field.encoding.grid.embeddings.grad.abs().sum() > 0
    assert all(p.grad is not None for p in occ.field.density_net.parameters())


def test_no_samples_at_all_renders_the_background_and_backpropagates(monkeypatch):
    occ, _, _ = _scenes(monkeypatch, empty=True)
    o, d = camera_rays(orbit_cameras(1, 0.0, 1.8, 50.0, 4, 4))
    out = render(occ, o, d, shading="lambertian", train=True)
    assert float(out["opacity"].detach().abs().max()) == 0.0 and float(out["depth"].detach().abs().max()) == 0.0
    assert torch.allclose(out["rgb"], occ.background(d, train=True))
    out["rgb"].mean().backward()  # the background MLP still learns
    assert any(p.grad is not None for p in occ.background.parameters())


def test_occupancy_update_state_dict_and_train_mode(monkeypatch):
    occ, dense, _ = _scenes(monkeypatch)
    est = occ.estimator
    occ.eval()
    occ.update_occupancy(0)  # evaluation never touches the grid (nerfacc raises outside training)
    assert bool(est.binaries.all()) and float(est.occs.abs().sum()) == 0.0
    occ.train()
    occ.update_occupancy(1)  # not a multiple of occ_update_every
    assert bool(est.binaries.all())
    occ.update_occupancy(0)
    res = occ.render_cfg.occ_resolution
    assert est.binaries.shape == (1, res, res, res) and est.binaries.dtype == torch.bool
    assert bool(est.binaries[0, res // 2, res // 2, res // 2])  # the blob's centre is occupied
    assert not bool(est.binaries[0, 0, 0, 0])  # the box's corner is empty
    assert 0 < int(est.binaries.sum()) < res**3

    state = occ.state_dict()
    assert {"estimator.binaries", "estimator.occs"} <= set(state)
    fresh = Scene(Field(_tiny_cfg().scene), Background("mlp"), bound=1.0, render_cfg=occ.render_cfg,
                  estimator=OccGridEstimator(roi_aabb=[-1.0] * 3 + [1.0] * 3, resolution=res))
    fresh.load_state_dict(state)
    assert torch.equal(fresh.estimator.binaries, est.binaries)
    dense.load_state_dict(state)  # a GPU (occgrid) checkpoint loads into a dense scene
    fresh.load_state_dict(dense.state_dict())  # and a dense one into an occgrid scene, grid kept
    assert torch.equal(fresh.estimator.binaries, est.binaries)


def test_estimator_choice_follows_nerfacc_cuda_availability(monkeypatch):
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    monkeypatch.setattr(renderer_mod, "nerfacc_cuda_status", lambda: (True, ""))
    assert renderer_mod.resolve_estimator("auto", cuda) == "occgrid"
    assert renderer_mod.resolve_estimator("auto", cpu) == "dense"
    monkeypatch.setattr(renderer_mod, "nerfacc_cuda_status", lambda: (False, "nerfacc's CUDA extension is unavailable (no nvcc)"))
    assert renderer_mod.resolve_estimator("auto", cuda) == "dense"
    with pytest.raises(UsageError, match="nvcc"):
        renderer_mod.resolve_estimator("occgrid", cuda)
    assert renderer_mod.resolve_estimator("dense", cuda) == "dense"


class _FakeTcnn(nn.Module):
    """Stands in for tinycudann.Encoding: half output, records its inputs."""

    def __init__(self, out_dim: int):
        super().__init__()
        self.out_dim, self.seen = out_dim, []
        self.params = nn.Parameter(torch.zeros(8))

    def forward(self, x):
        self.seen.append(x)
        return (x.sum(-1, keepdim=True).expand(-1, self.out_dim) + self.params[0]).half()


def test_tcnn_wrapper_clamps_inputs_casts_to_float_and_skips_empty_batches():
    enc = HashGridEncoding(levels=2, features_per_level=2, log2_table_size=8, base_resolution=4, max_resolution=8, backend="torch")
    fake = _FakeTcnn(enc.output_dim)
    enc.backend, enc.grid = "tcnn", fake
    out = enc(torch.tensor([[-0.25, 0.5, 1.5]]))
    assert out.dtype == torch.float32 and out.shape == (1, 4)
    assert float(fake.seen[0].min()) == 0.0 and float(fake.seen[0].max()) == 1.0
    empty = enc(torch.zeros(0, 3))
    assert empty.shape == (0, 4) and empty.dtype == torch.float32 and len(fake.seen) == 1


def test_gpu_run_with_pinned_cuda_back_ends_evaluates_on_cpu(tmp_path: Path):
    overrides = [f"output_dir={tmp_path}", "prompt=a chair", "guidance.model=tiny", "render.estimator=occgrid",
                 "scene.levels=4", "scene.log2_table_size=12", "scene.max_resolution=64", "scene.hidden_dim=16",
                 "scene.num_layers=1", "render.occ_resolution=16"]
    cfg = load_config(None, overrides)
    run = RunDir.create(cfg)
    # What a GPU run saves: the field plus the occupancy grid, with every tensor mapped to the CPU.
    field = Field(cfg.scene)
    est = OccGridEstimator(roi_aabb=[-1.0] * 3 + [1.0] * 3, resolution=16)
    gpu_scene = Scene(field, Background(cfg.scene.background), bound=1.0, render_cfg=cfg.render, estimator=est)
    save_checkpoint(run.ckpt_dir, {"step": 3, "scene": gpu_scene.state_dict()}, keep=1)
    loaded = load_run(run.root, device="cpu")
    assert loaded.scene.sampler == "dense" and loaded.step == 3
    assert loaded.cfg.render.estimator == "occgrid"  # the run's own config is reported unchanged
    o, d = camera_rays(orbit_cameras(1, 15.0, 1.8, 50.0, 4, 4))
    assert render_chunked(loaded.scene, o, d)["rgb"].shape == (1, 4, 4, 3)


def test_alpha_thre_reaches_the_occupancy_grid_sampler(monkeypatch):
    occ, _, calls = _scenes(monkeypatch)
    o, d = camera_rays(orbit_cameras(1, 15.0, 1.8, 50.0, 4, 4))
    assert occ.render_cfg.alpha_thre == 0.01  # the default, as threestudio's
    render(occ, o, d, train=True)
    assert calls[-1]["alpha_thre"] == 0.01
    occ.render_cfg.alpha_thre = 0.05
    occ.eval()
    render_chunked(occ, o, d)
    assert calls[-1]["alpha_thre"] == 0.05
    cfg = load_config(None, ["prompt=a chair", "render.alpha_thre=0"])
    assert cfg.render.alpha_thre == 0.0  # 0 keeps every sample
    with pytest.raises(ConfigError, match="render.alpha_thre"):
        load_config(None, ["prompt=a chair", "render.alpha_thre=1"])
