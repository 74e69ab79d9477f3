"""One optimisation step of a run: the scene, its optimizer and the loss source (docs/design.md §1, §7).

One step, text mode (``data.type: text``)::

    sample_cameras → camera_rays → render (shading by step) → rgb [B,H,W,3] → [B,3,H,W]
    → prior(rgb, azimuth, elevation, step, state) (Perp-Neg + SEGA; the guidance state, SEGA
    momentum, goes in and comes back) + weighted regularisers → backward → Adam step → occupancy update

Multiview mode (``data.type: multiview``): random rays of the dataset → render on the dataset
background → photometric MSE (``loss.lambda_rgb``) + opacity-vs-alpha MSE (``loss.lambda_alpha``).

Determinism: all randomness comes from torch's global RNG inside :meth:`Trainer.train_step`;
every schedule is a function of the step index; validation and export run under
``torch.random.fork_rng`` so they draw nothing from the training stream; checkpoints are written
after a complete step with every RNG state. So on the same CPU with the same thread count a run
that is killed and resumed ends with exactly the parameters of an uninterrupted run (another CPU
model or thread count rounds fp32 differently and gives a slightly different run).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch

from dreamperp.config import Config, TrainerConfig, to_yaml
from dreamperp.device import resolve_device
from dreamperp.files import atomic_write_bytes
from dreamperp.guidance.score import finite_state, fresh_state, restored_state, saved_state
from dreamperp.images import labeled_grid, png_bytes, to_uint8
from dreamperp.plan import StepPlan, choose_shading, plan_step, render_size
from dreamperp.runs.checkpoint import rng_state, set_rng_state
from dreamperp.scene.objectives import photometric, regularisers, weighted_sum


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA), numpy and python ``random``."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def new_grad_scaler(device_type: str, init_scale: float) -> torch.amp.GradScaler:
    """A GradScaler for ``device_type`` starting at ``init_scale`` (torch's other defaults: halve on
    an overflow, double after 2000 clean steps). ``"cpu"`` stands in for ``"cuda"`` in tests."""
    return torch.amp.GradScaler(device_type, init_scale=float(init_scale))


def grad_scaler_for(tc: TrainerConfig, device: torch.device, prior_dtype: Any) -> Optional[torch.amp.GradScaler]:
    """The run's GradScaler: with ``trainer.grad_scaler`` when the prior runs in float16 on CUDA,
    starting at ``trainer.grad_scaler_init``; else None (fp32/bf16 gradients need no scaling)."""
    if tc.grad_scaler and device.type == "cuda" and prior_dtype == torch.float16:
        return new_grad_scaler(device.type, tc.grad_scaler_init)
    return None


# ------------------------------------------------------------------------------------------ trainer
class Trainer:
    """Scene, optimizer and the loss source (prior or dataset) of one run, plus its counters.

    ``step`` counts completed steps; :meth:`train_step` performs step ``self.step`` and increments it.
    """

    def __init__(self, cfg: Config, device: Any = None, *, prior: Any = None, dataset: Any = None):
        from dreamperp.scene import Scene

        self.cfg = cfg
        self.device = resolve_device(device if device is not None else cfg.device)
        seed_everything(cfg.seed)
        self.scene = Scene.from_config(cfg, device=self.device)
        self.scene.train()
        tr = cfg.trainer
        self.optimizer = torch.optim.Adam(
            self.scene.param_groups(tr.lr_grid, tr.lr_mlp), betas=(float(tr.betas[0]), float(tr.betas[1])), eps=tr.eps
        )
        self.params = [p for g in self.optimizer.param_groups for p in g["params"]]
        self.mode = cfg.data.type
        self.prior = None
        self.dataset = None
        if self.mode == "text":
            if prior is None:
                from dreamperp.guidance.prior import load_prior

                prior = load_prior(cfg.guidance, cfg.prompt, cfg.negative_prompt, self.device)
            self.prior = prior
        else:
            if dataset is None:
                dataset = load_dataset(cfg)
            self.dataset = dataset
        self.scaler = (
            grad_scaler_for(tr, self.device, getattr(self.prior, "dtype", None)) if self.prior is not None else None
        )
        self.step = 0
        self.skipped_steps = 0  # bad steps: non-finite loss or gradient, no update
        self.scaler_skips = 0  # steps the GradScaler skipped (fp16 overflow at a scale > 1), no update
        self.bad_in_row = 0
        # The guidance state (SEGA momentum): passed into the guidance and taken back every step,
        # saved as the checkpoint's "prior" entry. None without a prior.
        self.guidance_state: Optional[Dict[str, Any]] = None
        if self.prior is not None:
            self.guidance_state = fresh_state()

    @classmethod
    def resume(cls, cfg: Config, state: Dict[str, Any], device: Any = None, **kwargs: Any) -> "Trainer":
        """A trainer continuing from checkpoint ``state``: its scene built with the hash-grid back end
        the checkpoint holds (:func:`dreamperp.scene.pin_encoding`), then every state restored.
        ``trainer.cfg`` stays ``cfg`` (the run's config), so its checkpoints say what the first ones say."""
        from dreamperp.scene import pin_encoding

        dev = resolve_device(device if device is not None else cfg.device)
        trainer = cls(pin_encoding(cfg, state["scene"], dev), dev, **kwargs)
        trainer.cfg = cfg  # the back end only matters when the scene is built; the keys record it
        trainer.load_state_dict(state)
        return trainer

    # --------------------------------------------------------------------------------- state
    def state_dict(self) -> Dict[str, Any]:
        """Everything needed to continue bit-exactly (RNG states captured now)."""
        return {
            "step": self.step,
            "config": to_yaml(self.cfg),
            "scene": self.scene.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "prior": saved_state(self.guidance_state) if self.prior is not None else None,
            "rng": rng_state(),
            "trainer": {
                "skipped_steps": self.skipped_steps,
                "scaler_skips": self.scaler_skips,
                "bad_in_row": self.bad_in_row,
            },
        }

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.scene.load_state_dict(state["scene"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        if self.prior is not None:
            self.guidance_state = restored_state(state.get("prior"), self.device)
        counters = state.get("trainer") or {}
        self.skipped_steps = int(counters.get("skipped_steps", 0))
        self.scaler_skips = int(counters.get("scaler_skips", 0))
        self.bad_in_row = int(counters.get("bad_in_row", 0))
        self.step = int(state["step"])
        set_rng_state(state["rng"])

    # ------------------------------------------------------------------------------ schedules
    def resolution(self, step: int) -> Tuple[int, int]:
        """(height, width) of training renders at ``step`` (the step plan's)."""
        return render_size(self.cfg.data, step)

    # ---------------------------------------------------------------------------------- steps
    def text_losses(self, plan: StepPlan) -> Tuple[torch.Tensor, Dict[str, Any]]:
        """SDS + regularisers for one batch of random views. Returns (loss, metrics as tensors/values)."""
        from dreamperp.cameras import (
            camera_rays,
            sample_cameras,
            sample_light_positions,
        )
        from dreamperp.scene import render_rays

        cfg, step = self.cfg, plan.step
        h, w = plan.height, plan.width
        cams = sample_cameras(
            cfg.data,
            cfg.data.batch_size,
            h,
            w,
            self.device,
            azimuth_range=plan.azimuth_range,
            front_share=plan.front_share,
        )
        rays_o, rays_d = camera_rays(cams)
        shading = "albedo" if plan.albedo_only else choose_shading(step, cfg.render)
        light = sample_light_positions(cams, cfg.render.light_distance_range) if shading != "albedo" else None
        out = render_rays(
            self.scene, rays_o, rays_d, shading=shading, light_pos=light, train=True, need_normals=plan.need_normals,
            need_distortion=plan.weights["distortion"] > 0,
        )
        regs = regularisers(out)
        images = out["rgb"].permute(0, 3, 1, 2)  # [B, 3, H, W]
        assert self.prior is not None
        # CPU angles let the prior drop negative views whose weight is zero for the whole batch.
        out = self.prior(images, cams.azimuth_deg.cpu(), cams.elevation_deg.cpu(), step=step, state=self.guidance_state)
        loss_sds, self.guidance_state = out["loss_sds"], out["state"]
        terms = {"loss_sds": loss_sds, **regs}
        loss = weighted_sum({"loss_sds": loss_sds}, plan.weights) + weighted_sum(regs, plan.weights, skip_zero=True)
        metrics: Dict[str, Any] = dict(terms)
        metrics["t"] = out["t"].float().mean()
        metrics["t_max"] = out.get("t_max")
        metrics["sds_grad_norm"] = out.get("grad_norm")
        metrics["shading"] = shading
        metrics["resolution"] = [h, w]
        # For loop hooks (the viewer), not the log: where this step looked from; fov_deg is vertical.
        metrics["_cameras"] = {
            "azimuth_deg": cams.azimuth_deg.detach(),
            "elevation_deg": cams.elevation_deg.detach(),
            "c2w": cams.c2w.detach(),
            "fov_deg": cams.fovy_deg.detach(),
        }
        return loss, metrics

    def multiview_losses(self, plan: StepPlan) -> Tuple[torch.Tensor, Dict[str, Any]]:
        """Photometric MSE on random dataset rays + opacity-vs-alpha MSE."""
        from dreamperp.scene import render_rays

        cfg, lc = self.cfg, self.cfg.loss
        assert self.dataset is not None
        batch = self.dataset.sample_rays(cfg.data.rays_per_step, background=cfg.data.background, device=self.device)
        out = render_rays(
            self.scene,
            batch.rays_o,
            batch.rays_d,
            shading="albedo",
            bg_color=batch.bg_color,
            train=True,
            need_normals=lc.lambda_orient > 0,
            need_distortion=plan.weights["distortion"] > 0,
        )
        regs = regularisers(out)
        terms = photometric(out, batch.rgb, batch.alpha)  # targets are already composited on bg_color
        loss = weighted_sum(terms, plan.weights) + weighted_sum(regs, plan.weights, skip_zero=True)
        psnr = -10.0 * torch.log10(terms["loss_rgb"].detach().clamp_min(1e-10))
        logged = {name: value for name, value in regs.items() if plan.weights.get(name[len("loss_") :])}
        return loss, {**terms, **logged, "psnr": psnr}

    def train_step(self) -> Dict[str, Any]:
        """Run step ``self.step``: loss, backward, and an optimizer update unless the loss or a
        gradient is non-finite. Returns its metrics.

        A step without an update is a *scaler skip* (``scaler_skips``) when the GradScaler's scale
        went down on it with a finite loss from a scale above 1: the routine fp16 overflow that
        finds the scale. Any other is a *bad step* (``skipped_steps``; ``trainer.max_bad_steps`` in
        a row stop the run). Only steps without an update read the scale on the host; the others
        keep the one host sync of the finite check.
        """
        step = self.step
        plan = plan_step(self.cfg, step)  # everything the config decides about this step
        self.scene.train()
        losses = self.text_losses if self.mode == "text" else self.multiview_losses
        loss, metrics = losses(plan)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            loss.backward()
        grads = [p.grad for p in self.params if p.grad is not None]
        grad_norm = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros((), device=self.device)  # public API
        finite_loss = torch.isfinite(loss.detach())
        skipped = not bool(finite_loss & torch.isfinite(grad_norm))  # one host sync per step
        if not skipped:
            if self.scaler is not None:
                self.scaler.step(self.optimizer)
            else:
                self.optimizer.step()
            self.bad_in_row = 0
        scale_before = self.scaler.get_scale() if self.scaler is not None and skipped else None
        if self.scaler is not None:
            self.scaler.update()  # halves the scale when unscale_ found inf/NaN gradients
        if skipped:
            dropped = (
                self.scaler is not None
                and scale_before is not None
                and scale_before > 1.0
                and self.scaler.get_scale() < scale_before
            )
            if dropped and bool(finite_loss):  # an overflow the scale explains
                self.scaler_skips += 1
            else:
                self.skipped_steps += 1
                self.bad_in_row += 1
            if self.guidance_state is not None:  # drop SEGA momentum that may have picked up the bad values
                self.guidance_state = finite_state(self.guidance_state)
        self.optimizer.zero_grad(set_to_none=True)
        if plan.refresh_occupancy:
            self.scene.update_occupancy(step)
        self.step = step + 1
        metrics.update(loss=loss.detach(), grad_norm=grad_norm.detach(), skipped=skipped)
        return metrics

    # ---------------------------------------------------------------------------- validation
    def validation_grid(self) -> np.ndarray:
        """uint8 image: columns front, side, back, overhead; rows rgb | normals | opacity (with labels)."""
        from dreamperp.cameras import FIXED_VIEW_NAMES
        from dreamperp.train.validation import render_fixed_views

        out = render_fixed_views(self.scene, self.cfg, self.cfg.trainer.val_size, self.device)
        opacity = out["opacity"].clamp(0, 1)
        normal = (out["normal"] * 0.5 + 0.5) * opacity + (1.0 - opacity)  # white where empty
        rows = [out["rgb"].clamp(0, 1), normal.clamp(0, 1), opacity.expand(-1, -1, -1, 3)]
        tiles = to_uint8(torch.stack(rows))  # [3, 4, S, S, 3]
        return labeled_grid(tiles, FIXED_VIEW_NAMES, ["rgb", "normal", "opacity"])

    def write_validation(self, path: Path) -> Path:
        """The validation grid as a PNG at ``path`` (atomically)."""
        return atomic_write_bytes(path, png_bytes(self.validation_grid()))


def load_dataset(cfg: Config) -> Any:
    """The multiview training set of ``cfg.data.path`` (UsageError naming the file when it is bad)."""
    from dreamperp.multiview import load_transforms

    return load_transforms(cfg.data.path)
