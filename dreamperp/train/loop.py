"""The training loop of a run folder (docs/design.md §7): metrics, progress, validation, checkpoints, signals.

Exit codes of :meth:`TrainLoop.fit` (and so of ``dreamperp train``): 0 finished (or nothing left
to do); 1 stopped after ``trainer.max_bad_steps`` consecutive non-finite steps, or out of memory
(a checkpoint is saved in the first case); 130 / 143 stopped by SIGINT (Ctrl-C) / SIGTERM after
finishing the current step and saving a checkpoint (128 + signal number, the shell convention, so
schedulers can tell an interrupted run from a finished one). A second Ctrl-C while stopping aborts
at once. Usage errors (exit code 2) are raised before the loop starts.

:class:`LoopHook` objects watch or steer a run from inside the loop (the browser viewer is one):
every method runs in the training thread, between steps, so a hook can read the scene, pause the
run or save a checkpoint without locks. A hook must not change the trained state or draw from the
training RNG streams (render under :func:`dreamperp.device.no_rng_side_effects`).
"""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence

import torch

from dreamperp.config import Config
from dreamperp.errors import DreamperpError, is_out_of_memory
from dreamperp.runs.checkpoint import save_checkpoint
from dreamperp.runs.folder import MetricsLogger, RunDir
from dreamperp.signals import StopSignals
from dreamperp.train.trainer import Trainer


def say(message: str) -> None:
    print(f"dreamperp train: {message}", file=sys.stderr, flush=True)


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


class StopRequest(StopSignals):
    """Asks the loop to stop after the current step; a second SIGINT while stopping raises
    KeyboardInterrupt (abort now)."""

    def on_signal(self, signum: int, first: bool) -> None:
        if not first and signum == signal.SIGINT:
            raise KeyboardInterrupt


# ------------------------------------------------------------------------------------------ hooks
class LoopHook:
    """Watches or steers a run from inside its loop; every method runs in the training thread."""

    def on_start(self, loop: "TrainLoop") -> None:
        """Before the first step of this call to :meth:`TrainLoop.fit`."""

    def before_step(self, loop: "TrainLoop") -> None:
        """Before each step; may block (pause: return early once ``loop.stopping``) or call ``loop.save()``."""

    def after_step(self, loop: "TrainLoop", metrics: dict) -> None:
        """After each step (and its logging, validation and checkpoint), with the step's metrics,
        private ``_`` keys included (e.g. ``_cameras``)."""

    def on_end(self, loop: "TrainLoop", code: int) -> None:
        """Once when :meth:`TrainLoop.fit` ends: its exit code (1 when it raised, 130 for an abort)."""


# ------------------------------------------------------------------------------------------- loop
class TrainLoop:
    """Runs a :class:`Trainer` in a run folder: metrics, progress, validation, checkpoints, signals."""

    def __init__(self, trainer: Trainer, run: RunDir, *, log: Callable[[str], None] = say, hooks: Sequence[LoopHook] = ()):
        self.trainer = trainer
        self.run = run
        self.cfg = trainer.cfg
        self.log = log
        self.hooks = tuple(hooks)
        self._stop: Optional[StopRequest] = None

    @property
    def stopping(self) -> bool:
        """True once SIGINT/SIGTERM asked the run to stop (a pausing hook returns then)."""
        return self._stop is not None and self._stop.signum is not None

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
            if value is None or key.startswith("_"):  # private keys are for hooks, not the log
                continue
            if isinstance(value, torch.Tensor):
                value = value.detach().float().item() if value.numel() == 1 else value.detach().float().cpu().tolist()
            rec[key] = value
        rec["it_s"] = round(it_s, 3)
        rec["skipped_steps"] = t.skipped_steps
        if t.scaler is not None:  # read on logging steps only: get_scale() syncs with the device
            rec["scaler_skips"] = t.scaler_skips
            rec["grad_scale"] = t.scaler.get_scale()
        rec["lr_grid"] = next((g["lr"] for g in t.optimizer.param_groups if g.get("name") == "grid"), None)  # by name, not position
        return rec

    def fit(self) -> int:
        """Train to ``trainer.max_steps``. Returns the exit code (0, or 128+signal when interrupted)."""
        code = 1  # what the hooks hear when training raises
        try:
            code = self._fit()
        except KeyboardInterrupt:
            code = 130
            raise
        finally:
            for hook in self.hooks:
                hook.on_end(self, code)
        return code

    def _fit(self) -> int:
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
        stop = self._stop = StopRequest()
        with MetricsLogger(self.run.metrics_path, tensorboard=tc.tensorboard) as metrics_log, stop:
            try:
                for hook in self.hooks:
                    hook.on_start(self)
                while t.step < max_steps and stop.signum is None:
                    for hook in self.hooks:
                        hook.before_step(self)
                    if stop.signum is not None:  # a signal while a hook paused the run
                        break
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
                    for hook in self.hooks:
                        hook.after_step(self, metrics)
            finally:
                if pbar is not None:
                    pbar.close()
            # Still under the signal handlers: a SIGTERM now cannot cut the final save short.
            path = self.save()
            if stop.signum is not None:
                self.log(f"stopped by {stop.name} at step {t.step}; saved {path}; resume with: dreamperp train --resume {self.run.root}")
                return 128 + int(stop.signum)
            val = self.validate()
        scaler = f", {t.scaler_skips} grad-scaler skips" if t.scaler is not None else ""
        self.log(f"finished {t.step} steps ({t.skipped_steps} skipped{scaler}); checkpoint {path}; validation {val}")
        return 0
