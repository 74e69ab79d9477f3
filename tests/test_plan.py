"""The step plan: every schedule of a run at step N, from one function (docs/design.md §7)."""

from __future__ import annotations

import torch

from dreamperp.config import load_config
from dreamperp.plan import annealed, plan_step, sega_phases
from dreamperp.scene.objectives import weighted_sum


def test_plan_collects_every_schedule_with_hand_checked_values() -> None:
    cfg = load_config(None, [
        "prompt=x", "data.front_first_steps=[10,20]", "data.front_first_deg=30", "data.front_share=0.25",
        "data.upscale_step=15", "render.albedo_warmup_steps=5", "loss.ramp_steps=10", "loss.lambda_orient=0.5",
        "guidance.t_max=0.9", "guidance.t_max_final=0.5", "guidance.t_anneal_steps=20", "render.occ_update_every=4",
        "guidance.sega.concepts=[{prompt: a, warmup: 3, cooldown: 12}]",
    ])
    p0, p15, p20 = plan_step(cfg, 0), plan_step(cfg, 15), plan_step(cfg, 20)
    assert p0.azimuth_range == (-30.0, 30.0) and p0.front_share == 0.0 and (p0.height, p0.width) == (64, 64)
    assert p15.azimuth_range == (-105.0, 105.0)  # 30 + (180 - 30) * 5/10
    assert p20.azimuth_range == (-180.0, 180.0) and p20.front_share == 0.25 and (p20.height, p20.width) == (128, 128)
    assert p0.albedo_only and not p15.albedo_only
    assert p0.weights["orient"] == 0.0 and not p0.need_normals
    assert plan_step(cfg, 5).weights["orient"] == 0.25 and p15.weights["orient"] == 0.5
    assert abs(plan_step(cfg, 10).t_max - 0.7) < 1e-12 and p20.t_max == 0.5
    assert [p.sega_warm for p in (p0, p15)] == [(False,), (True,)] and [p.sega_cooled for p in (p0, p15)] == [(False,), (True,)]
    assert [plan_step(cfg, s).refresh_occupancy for s in range(5)] == [True, False, False, False, True]


def test_schedule_pieces() -> None:
    assert annealed(0.98, 0.5, 0, 7) == 0.98 and annealed(0.98, None, 10, 7) == 0.98 and annealed(1.0, 0.0, 4, 1) == 0.75

    class C:
        def __init__(self, warmup: int, cooldown: int | None) -> None:
            self.warmup, self.cooldown = warmup, cooldown

    assert sega_phases([C(2, None), C(0, 1)], 1) == ((False, True), (False, True))


def test_weighted_sum_by_name() -> None:
    losses = {"loss_a": torch.tensor(2.0), "loss_b": torch.tensor(float("nan")), "loss_c": torch.tensor(3.0)}
    assert float(weighted_sum(losses, {"a": 0.5, "b": 0.0, "c": 2.0}, skip_zero=True)) == 7.0  # 1 + 6; b off, its NaN not spread
    assert weighted_sum({"loss_a": torch.tensor(1.0)}, {}) == 0.0  # logged, not optimised


def test_train_step_returns_the_cameras_it_trained_on() -> None:
    """The private ``_cameras`` metric (not written to metrics.jsonl): the batch's angles and poses."""
    from pathlib import Path

    from dreamperp.train.trainer import Trainer

    toy = Path(__file__).resolve().parents[1] / "dreamperp" / "configs" / "toy.yaml"
    cfg = load_config(toy, ["data.batch_size=2", "data.width=16", "data.height=16", "render.num_samples=8", "scene.levels=2"])
    metrics = Trainer(cfg, "cpu").train_step()
    cams = metrics["_cameras"]
    assert cams["c2w"].shape == (2, 4, 4) and cams["azimuth_deg"].shape == cams["elevation_deg"].shape == cams["fov_deg"].shape == (2,)
    # the camera centre is the c2w translation, at the sampled angles: z = r·sin(elevation)
    radius = cams["c2w"][:, :3, 3].norm(dim=-1)
    assert torch.allclose(cams["c2w"][:, 2, 3], radius * torch.sin(torch.deg2rad(cams["elevation_deg"])), atol=1e-5)
    assert not any(t.requires_grad for t in cams.values())


def test_run_views_are_the_validation_grids_rgb_row(tmp_path) -> None:
    """The batch contact sheet's tiles (train.validation.run_views, rendered from the run's newest
    checkpoint) are exactly the rgb tiles of the run's validation grid at that step."""
    from pathlib import Path

    from dreamperp.images import to_uint8
    from dreamperp.runs.checkpoint import save_checkpoint
    from dreamperp.runs.folder import RunDir
    from dreamperp.train.trainer import Trainer
    from dreamperp.train.validation import render_fixed_views, run_views

    toy = Path(__file__).resolve().parents[1] / "dreamperp" / "configs" / "toy.yaml"
    cfg = load_config(toy, [f"output_dir={tmp_path}", "data.width=16", "data.height=16", "render.num_samples=8", "scene.levels=2",
                            "trainer.val_size=16"])
    trainer = Trainer(cfg, "cpu")
    trainer.train_step()
    run = RunDir.create(cfg)
    assert run_views(run.root) is None  # no checkpoint yet
    save_checkpoint(run.ckpt_dir, trainer.state_dict(), keep=1)
    grid_rgb = to_uint8(render_fixed_views(trainer.scene, cfg, 16, torch.device("cpu"))["rgb"].clamp(0, 1))
    views = run_views(run.root)
    assert views is not None and views.shape == (4, 16, 16, 3) and views.dtype == grid_rgb.dtype
    assert (views.astype(int) - grid_rgb.astype(int)).__abs__().max() <= 1  # same renders (a rounding step at most)
