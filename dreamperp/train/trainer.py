"""Text-to-3D and multi-view training loop (``dreamperp train``).

One step, text mode (``data.type: text``)::

    sample_cameras → camera_rays → render (shading by step) → rgb [B,H,W,3] → [B,3,H,W]
    → prior.sds (Perp-Neg + SEGA) + weighted regularisers → backward → Adam step → occupancy update

Multiview mode (``data.type: multiview``): random rays of the dataset → render on the dataset
background → photometric MSE (``loss.lambda_rgb``) + opacity-vs-alpha MSE (``loss.lambda_alpha``).

Determinism: all randomness comes from torch's global RNG inside :meth:`Trainer.train_step`;
every schedule is a function of the step index; validation and export run under
``torch.random.fork_rng`` so they draw nothing from the training stream; checkpoints are written
after a complete step with every RNG state. So on the CPU a run that is killed and resumed ends
with exactly the parameters of an uninterrupted run.

Exit codes of ``dreamperp train``: 0 finished (or nothing left to do); 1 stopped after
``trainer.max_bad_steps`` consecutive non-finite steps, or out of memory (a checkpoint is saved
in the first case); 2 a usage/config error (nothing written for a new run); 130 / 143 stopped by
SIGINT (Ctrl-C) / SIGTERM after finishing the current step and saving a checkpoint
(128 + signal number, the shell convention, so schedulers can tell an interrupted run from a
finished one). A second Ctrl-C while stopping aborts at once.
"""

from __future__ import annotations

import argparse
import io
import random
import signal
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch

from dreamperp.config import Config, load_config
from dreamperp.errors import DreamperpError, UsageError, is_out_of_memory
from dreamperp.train.checkpoint import (
    remove_stale_temp_files,
    resume_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from dreamperp.train.run import MetricsLogger, RunDir, atomic_write_bytes, truncate_metrics

# Keys that may be overridden when resuming; anything else would make the resumed run a different run.
RESUME_OVERRIDABLE = ("trainer.max_steps",)


def _say(message: str) -> None:
    print(f"dreamperp train: {message}", file=sys.stderr, flush=True)


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA), numpy and python ``random``."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def oom_message(cfg: Config, step: int) -> str:
    """What to change when a step runs out of memory."""
    d, r = cfg.data, cfg.render
    size = f"{d.width}x{d.height}" + (f", {d.upscale_width}x{d.upscale_height} from step {d.upscale_step}" if d.upscale_step >= 0 else "")
    if d.type == "multiview":
        keys = f"data.rays_per_step (now {d.rays_per_step}), render.num_samples (now {r.num_samples}), render.chunk (now {r.chunk})"
    else:
        keys = (
            f"data.width/data.height (now {size}), render.num_samples (now {r.num_samples}), "
            f"data.batch_size (now {d.batch_size}), guidance.dtype=float16 (now {cfg.guidance.dtype}), "
            f"render.chunk (now {r.chunk}, validation)"
        )
    return f"out of memory at step {step}; reduce {keys}, or free the device"


class StopRequest:
    """SIGINT/SIGTERM handlers that ask the loop to stop after the current step.

    A second SIGINT while stopping raises KeyboardInterrupt (abort now). Only installable from the
    main thread; elsewhere it is inert.
    """

    def __init__(self) -> None:
        self.signum: Optional[int] = None
        self._previous: Dict[int, Any] = {}

    def _handler(self, signum: int, frame: Any) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else ""


@contextmanager
def _no_rng_side_effects(device: torch.device) -> Iterator[None]:
    """Evaluation code may draw random numbers without shifting the training stream."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        yield


# ------------------------------------------------------------------------------------------ trainer
class Trainer:
    """Scene, optimizer and the loss source (prior or dataset) of one run, plus its counters.

    ``step`` counts completed steps; :meth:`train_step` performs step ``self.step`` and increments it.
    """

    def __init__(self, cfg: Config, device: Any = None, *, prior: Any = None, dataset: Any = None):
        from dreamperp.scene import Scene, resolve_device

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
                from dreamperp.guidance.prior import StableDiffusionPrior

                prior = StableDiffusionPrior(cfg.guidance, cfg.prompt, cfg.negative_prompt, self.device)
            self.prior = prior
        else:
            if dataset is None:
                dataset = load_dataset(cfg)
            self.dataset = dataset
        self.scaler = None
        if self.prior is not None and self.device.type == "cuda" and tr.grad_scaler and getattr(self.prior, "dtype", None) == torch.float16:
            self.scaler = torch.amp.GradScaler("cuda")
        self.step = 0
        self.skipped_steps = 0
        self.bad_in_row = 0

    # --------------------------------------------------------------------------------- state
    def state_dict(self) -> Dict[str, Any]:
        """Everything needed to continue bit-exactly (RNG states captured now)."""
        from dreamperp.config import to_yaml

        return {
            "step": self.step,
            "config": to_yaml(self.cfg),
            "scene": self.scene.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "prior": self.prior.state_dict() if self.prior is not None else None,
            "rng": rng_state(),
            "trainer": {"skipped_steps": self.skipped_steps, "bad_in_row": self.bad_in_row},
        }

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.scene.load_state_dict(state["scene"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        if self.prior is not None and state.get("prior") is not None:
            self.prior.load_state_dict(state["prior"])
        counters = state.get("trainer") or {}
        self.skipped_steps = int(counters.get("skipped_steps", 0))
        self.bad_in_row = int(counters.get("bad_in_row", 0))
        self.step = int(state["step"])
        set_rng_state(state["rng"])

    # ------------------------------------------------------------------------------ schedules
    def resolution(self, step: int) -> Tuple[int, int]:
        """(height, width) of training renders at ``step``."""
        d = self.cfg.data
        if d.upscale_step >= 0 and step >= d.upscale_step:
            return d.upscale_height, d.upscale_width
        return d.height, d.width

    def regulariser_scale(self, step: int) -> float:
        """Factor in [0, 1] on the regulariser weights: a linear ramp over ``loss.ramp_steps``."""
        ramp = self.cfg.loss.ramp_steps
        return 1.0 if ramp <= 0 else min(1.0, step / ramp)

    def regularisers(self, out: Dict[str, torch.Tensor], step: int) -> torch.Tensor | float:
        """Weighted orientation, sparsity and opacity-entropy terms of a render at ``step``."""
        lc, reg = self.cfg.loss, self.regulariser_scale(step)
        total: torch.Tensor | float = 0.0
        for name, weight in (("orient", lc.lambda_orient), ("sparsity", lc.lambda_sparsity), ("opacity_entropy", lc.lambda_opacity_entropy)):
            if weight > 0 and reg > 0:
                total = total + (weight * reg) * out[name]
        return total

    # ---------------------------------------------------------------------------------- steps
    def text_losses(self, step: int) -> Tuple[torch.Tensor, Dict[str, Any]]:
        """SDS + regularisers for one batch of random views. Returns (loss, metrics as tensors/values)."""
        from dreamperp.cameras import camera_rays, sample_cameras, sample_light_positions
        from dreamperp.scene import choose_shading, render

        cfg, lc = self.cfg, self.cfg.loss
        h, w = self.resolution(step)
        cams = sample_cameras(cfg.data, cfg.data.batch_size, h, w, self.device)
        rays_o, rays_d = camera_rays(cams)
        shading = choose_shading(step, cfg.render)
        light = sample_light_positions(cams, cfg.render.light_distance_range) if shading != "albedo" else None
        need_normals = lc.lambda_orient > 0 and self.regulariser_scale(step) > 0  # render adds them for lit shading
        out = render(self.scene, rays_o, rays_d, shading=shading, light_pos=light, train=True, need_normals=need_normals)
        images = out["rgb"].permute(0, 3, 1, 2)  # [B, 3, H, W]
        assert self.prior is not None
        # CPU angles let the prior drop negative views whose weight is zero for the whole batch.
        loss_sds, info = self.prior.sds(images, cams.azimuth_deg.cpu(), cams.elevation_deg.cpu(), step)
        terms = {
            "loss_sds": loss_sds,
            "loss_orient": out["orient"],
            "loss_sparsity": out["sparsity"],
            "loss_opacity_entropy": out["opacity_entropy"],
        }
        loss = lc.lambda_sds * loss_sds + self.regularisers(out, step)
        metrics: Dict[str, Any] = dict(terms)
        metrics["t"] = info["t"].float().mean()
        metrics["t_max"] = info.get("t_max")
        metrics["sds_grad_norm"] = info.get("grad_norm")
        metrics["shading"] = shading
        metrics["resolution"] = [h, w]
        return loss, metrics

    def multiview_losses(self, step: int) -> Tuple[torch.Tensor, Dict[str, Any]]:
        """Photometric MSE on random dataset rays + opacity-vs-alpha MSE."""
        from dreamperp.scene import render

        cfg, lc = self.cfg, self.cfg.loss
        assert self.dataset is not None
        batch = self.dataset.sample_rays(cfg.data.rays_per_step, background=cfg.data.background, device=self.device)
        out = render(
            self.scene, batch.rays_o, batch.rays_d, shading="albedo", bg_color=batch.bg_color, train=True, need_normals=lc.lambda_orient > 0
        )
        loss_rgb = torch.mean((out["rgb"] - batch.rgb) ** 2)  # targets are already composited on bg_color
        loss_alpha = torch.mean((out["opacity"] - batch.alpha) ** 2)
        loss = lc.lambda_rgb * loss_rgb + lc.lambda_alpha * loss_alpha + self.regularisers(out, step)
        psnr = -10.0 * torch.log10(loss_rgb.detach().clamp_min(1e-10))
        return loss, {"loss_rgb": loss_rgb, "loss_alpha": loss_alpha, "psnr": psnr}

    def train_step(self) -> Dict[str, Any]:
        """Run step ``self.step``: loss, backward, and an optimizer update unless the loss or a
        gradient is non-finite (then the step is skipped and counted). Returns its metrics."""
        step = self.step
        self.scene.train()
        losses = self.text_losses if self.mode == "text" else self.multiview_losses
        loss, metrics = losses(step)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            loss.backward()
        grads = [p.grad for p in self.params if p.grad is not None]
        grad_norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads))) if grads else torch.zeros((), device=self.device)
        if bool(torch.isfinite(loss.detach()) & torch.isfinite(grad_norm)):  # one host sync per step
            if self.scaler is not None:
                self.scaler.step(self.optimizer)
            else:
                self.optimizer.step()
            self.bad_in_row = 0
            skipped = False
        else:
            skipped = True
            self.skipped_steps += 1
            # With a grad scaler, an fp16 overflow is routine (the scale drops); only a bad loss
            # or an overflow at a scale that cannot explain it counts towards stopping.
            scaler_overflow = self.scaler is not None and bool(torch.isfinite(loss.detach())) and self.scaler.get_scale() > 1.0
            if not scaler_overflow:
                self.bad_in_row += 1
            self._sanitize_prior_state()
        if self.scaler is not None:
            self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scene.update_occupancy(step)
        self.step = step + 1
        metrics.update(loss=loss.detach(), grad_norm=grad_norm.detach(), skipped=skipped)
        return metrics

    def _sanitize_prior_state(self) -> None:
        """After a non-finite step, drop SEGA momentum that may have picked up the bad values."""
        if self.prior is None:
            return
        state = self.prior.state_dict()
        m = state.get("sega_momentum") if isinstance(state, dict) else None
        if m is not None and not bool(torch.isfinite(m).all()):
            self.prior.load_state_dict({**state, "sega_momentum": None})

    # ---------------------------------------------------------------------------- validation
    def validation_grid(self) -> np.ndarray:
        """uint8 image: columns front, side, back, overhead; rows rgb | normals | opacity (with labels)."""
        from dreamperp.cameras import FIXED_VIEW_NAMES, camera_rays, fixed_views
        from dreamperp.export.common import eval_background
        from dreamperp.scene import render_chunked

        size = self.cfg.trainer.val_size
        cams = fixed_views(self.cfg.data, size, size, self.device)
        rays_o, rays_d = camera_rays(cams)
        was_training = self.scene.training
        self.scene.eval()
        try:
            with _no_rng_side_effects(self.device):
                bg = eval_background(self.cfg, self.device)
                out = render_chunked(self.scene, rays_o, rays_d, shading="albedo", bg_color=bg, need_normals=True)
        finally:
            self.scene.train(was_training)
        opacity = out["opacity"].clamp(0, 1)
        normal = (out["normal"] * 0.5 + 0.5) * opacity + (1.0 - opacity)  # white where empty
        rows = [out["rgb"].clamp(0, 1), normal.clamp(0, 1), opacity.expand(-1, -1, -1, 3)]
        tiles = torch.stack(rows).cpu().numpy()  # [3, 4, S, S, 3]
        return compose_grid((tiles * 255.0 + 0.5).astype(np.uint8), list(FIXED_VIEW_NAMES), ["rgb", "normal", "opacity"])

    def write_validation(self, path: Path) -> Path:
        from PIL import Image

        grid = self.validation_grid()
        buf = io.BytesIO()
        Image.fromarray(grid).save(buf, format="PNG")
        atomic_write_bytes(path, buf.getvalue())
        return path


def compose_grid(tiles: np.ndarray, col_names: List[str], row_names: List[str], gap: int = 2) -> np.ndarray:
    """Tiles ``[R, C, S, S, 3]`` uint8 → one image with a header of column names and row names on the left."""
    from PIL import Image, ImageDraw

    r, c, s = tiles.shape[0], tiles.shape[1], tiles.shape[2]
    header, left = 14, 50
    height = header + r * s + (r - 1) * gap
    width = left + c * s + (c - 1) * gap
    img = Image.new("RGB", (width, height), (40, 40, 40))
    for i in range(r):
        for j in range(c):
            img.paste(Image.fromarray(tiles[i, j]), (left + j * (s + gap), header + i * (s + gap)))
    draw = ImageDraw.Draw(img)
    for j, name in enumerate(col_names):
        draw.text((left + j * (s + gap) + 2, 1), name[: max(1, s // 6)], fill=(230, 230, 230))
    for i, name in enumerate(row_names):
        draw.text((2, header + i * (s + gap) + max(0, s // 2 - 6)), name, fill=(230, 230, 230))
    return np.asarray(img)


def load_dataset(cfg: Config) -> Any:
    """The multiview training set of ``cfg.data.path`` (UsageError naming the file when it is bad)."""
    from dreamperp.multiview import load_transforms

    return load_transforms(cfg.data.path)


# ------------------------------------------------------------------------------------------- loop
class TrainLoop:
    """Runs a :class:`Trainer` in a run folder: metrics, progress, validation, checkpoints, signals."""

    def __init__(self, trainer: Trainer, run: RunDir, *, log: Callable[[str], None] = _say):
        self.trainer = trainer
        self.run = run
        self.cfg = trainer.cfg
        self.log = log

    def save(self) -> Path:
        """Checkpoint the state after the last complete step."""
        return save_checkpoint(self.run.ckpt_dir, self.trainer.state_dict(), keep=self.cfg.trainer.keep_checkpoints)

    def validate(self) -> Path:
        """Validation grid ``val/step-XXXXXX.png`` of the current step."""
        return self.trainer.write_validation(self.run.val_dir / f"step-{self.trainer.step:06d}.png")

    def _record(self, metrics: Dict[str, Any], it_s: float) -> Dict[str, Any]:
        t = self.trainer
        rec: Dict[str, Any] = {"step": t.step}
        for key, value in metrics.items():
            if value is None:
                continue
            if isinstance(value, torch.Tensor):
                value = value.detach().float().item() if value.numel() == 1 else value.detach().float().cpu().tolist()
            rec[key] = value
        rec["it_s"] = round(it_s, 3)
        rec["skipped_steps"] = t.skipped_steps
        rec["lr_grid"] = t.optimizer.param_groups[0]["lr"]
        return rec

    def fit(self) -> int:
        """Train to ``trainer.max_steps``. Returns the exit code (0, or 128+signal when interrupted)."""
        t, tc = self.trainer, self.cfg.trainer
        max_steps = tc.max_steps
        if t.step >= max_steps:
            self.log(f"run is already at step {t.step} >= trainer.max_steps={max_steps}; nothing to do (pass trainer.max_steps=N to train longer)")
            return 0
        pbar = None
        if tc.progress:
            from tqdm import tqdm

            pbar = tqdm(total=max_steps, initial=t.step, desc="train", unit="it", dynamic_ncols=True, file=sys.stderr)
        window_start, window_steps = time.perf_counter(), 0
        stop = StopRequest()
        with MetricsLogger(self.run.metrics_path, tensorboard=tc.tensorboard) as metrics_log, stop:
            try:
                while t.step < max_steps and stop.signum is None:
                    try:
                        metrics = t.train_step()
                    except Exception as err:
                        if is_out_of_memory(err):
                            raise DreamperpError(oom_message(self.cfg, t.step)) from None
                        raise
                    window_steps += 1
                    step = t.step
                    log_now = step % tc.log_every == 0 or step == max_steps
                    if pbar is not None:
                        pbar.update(1)
                        if log_now:
                            pbar.set_postfix(loss=f"{float(metrics['loss']):.4g}", skipped=t.skipped_steps, refresh=False)
                    if log_now:
                        now = time.perf_counter()
                        it_s = window_steps / max(now - window_start, 1e-9)
                        window_start, window_steps = now, 0
                        metrics_log.log(self._record(metrics, it_s))
                    if t.bad_in_row >= tc.max_bad_steps:
                        path = self.save()
                        raise DreamperpError(
                            f"stopped at step {step}: {t.bad_in_row} steps in a row had a non-finite loss or gradient "
                            f"(lower trainer.lr_grid/trainer.lr_mlp or guidance.scale, or set guidance.grad_clip); "
                            f"saved {path}; resume with: dreamperp train --resume {self.run.root}"
                        )
                    if step % tc.val_every == 0 and step != max_steps:
                        self.validate()
                    if step % tc.checkpoint_every == 0 and step != max_steps:
                        path = self.save()
                        if pbar is None:  # batch jobs: a sign of life in the log at every save
                            self.log(f"step {step}/{max_steps}: loss {float(metrics['loss']):.4g}, {t.skipped_steps} skipped; saved {path.name}")
            finally:
                if pbar is not None:
                    pbar.close()
            # Still under the signal handlers: a SIGTERM now cannot cut the final save short.
            path = self.save()
            if stop.signum is not None:
                self.log(f"stopped by {stop.name} at step {t.step}; saved {path}; resume with: dreamperp train --resume {self.run.root}")
                return 128 + int(stop.signum)
            val = self.validate()
        self.log(f"finished {t.step} steps ({t.skipped_steps} skipped); checkpoint {path}; validation {val}")
        if tc.video_at_end:
            self.export_at_end()
        return 0

    def export_at_end(self) -> None:
        """Mesh + turntable video into ``export/`` (helper E's exporters). A failure here is reported,
        not fatal: the training result is already saved."""
        t, ex, tc = self.trainer, self.cfg.export, self.cfg.trainer
        t.scene.eval()
        try:
            with _no_rng_side_effects(t.device):
                try:
                    from dreamperp.export.mesh import export_mesh

                    for path in export_mesh(t.scene, self.cfg, self.run.export_dir, progress=tc.progress):
                        self.log(f"wrote {path}")
                except Exception as err:  # the trained scene is saved; export can be redone with `dreamperp export`
                    self.log(f"warning: mesh export failed ({type(err).__name__}: {err}); retry with: dreamperp export {self.run.root}")
                try:
                    from dreamperp.export.video import write_turntable

                    out = self.run.export_dir / f"turntable.{ex.video_format}"
                    self.log(f"wrote {write_turntable(t.scene, self.cfg, out, progress=tc.progress)}")
                except Exception as err:
                    self.log(f"warning: video failed ({type(err).__name__}: {err}); retry with: dreamperp video {self.run.root}")
        finally:
            t.scene.train()


# ---------------------------------------------------------------------------------------- command
def _split_resume_args(args: argparse.Namespace) -> List[str]:
    """Overrides given with --resume (argparse may have put the first one in ``config``)."""
    overrides = list(args.overrides or [])
    if args.config:
        if "=" in args.config and not Path(args.config).is_file():
            overrides.insert(0, args.config)
        else:
            raise UsageError(f"give either a config file or --resume RUN_DIR, not both (got '{args.config}'); a resumed run uses its own config.yaml")
    for item in overrides:
        key = item.split("=", 1)[0].strip()
        if key not in RESUME_OVERRIDABLE:
            raise UsageError(
                f"with --resume only {', '.join(RESUME_OVERRIDABLE)} can be overridden, got '{item}' "
                f"(other changes would not continue the same run: start a new run instead)"
            )
    return overrides


def train_command(args: argparse.Namespace) -> int:
    """``dreamperp train CONFIG [key=value ...]`` or ``dreamperp train --resume RUN_DIR [--fallback] [trainer.max_steps=N]``."""
    if args.resume:
        overrides = _split_resume_args(args)
        run = RunDir.open(args.resume)
        with run.lock():
            cfg = run.load_config(overrides)
            ckpt_path, state = resume_checkpoint(run, fallback=bool(args.fallback))
            trainer = Trainer(cfg)
            trainer.load_state_dict(state)
            if overrides and trainer.step < cfg.trainer.max_steps:  # a limit already passed changes nothing
                run.write_config(cfg)
            truncate_metrics(run.metrics_path, trainer.step)
            _say(f"resuming {run.root} from {ckpt_path.name} (step {trainer.step} of {cfg.trainer.max_steps})")
            remove_stale_temp_files(run.ckpt_dir)
            return TrainLoop(trainer, run).fit()
    else:
        if args.fallback:
            raise UsageError("--fallback only applies together with --resume RUN_DIR")
        config, overrides = args.config, list(args.overrides or [])
        if config and "=" in config and not Path(config).is_file():
            config, overrides = None, [config, *overrides]  # `dreamperp train prompt=...` with schema defaults
        if config is None and not overrides:
            raise UsageError("give a config file (e.g. configs/tiny.yaml) or --resume RUN_DIR")
        cfg = load_config(config, overrides)
        # Build everything (model weights, dataset) before the run folder exists, so a bad model id
        # or dataset path leaves nothing behind.
        trainer = Trainer(cfg)
        run = RunDir.create(cfg)
        _say(f"run folder {run.root}")
        with run.lock():
            return TrainLoop(trainer, run).fit()
