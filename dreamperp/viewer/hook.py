"""``dreamperp train --viewer``: the viewer as a loop hook (docs/viewer.md).

Everything that touches the scene runs in the training thread, between steps: renders for the
browser (within a :class:`~dreamperp.viewer.render.RenderBudget` of the step time, under
``no_rng_side_effects``, in eval mode), the pause, and the save/export clicks. So a run with the
viewer computes exactly what it computes without it.
"""

from __future__ import annotations

import collections
import math
import random
import time
from typing import Any, Callable, Deque, Dict, Optional, Tuple

import numpy as np

from dreamperp.device import no_rng_side_effects
from dreamperp.runs.folder import RunDir
from dreamperp.train.loop import LoopHook, TrainLoop, say
from dreamperp.train.trainer import Trainer
from dreamperp.viewer.page import Page
from dreamperp.viewer.render import RenderBudget, view_colours, view_conditioning
from dreamperp.viewer.server import start_server, stop_server

RENDER_SHARE = 0.2  # of the training time; the plots and cameras take the rest of the 25% allowance
SDS_STEPS_SHOWN = 16  # the cameras of this many last steps are drawn
PAUSE_POLL_S = 0.05


def _format_seconds(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


class ViewerHook(LoopHook):
    """Serves the viewer page while the loop trains; stops the server when the loop ends."""

    def __init__(self, server: Any, url: str, page: Page, *, log: Callable[[str], None] = say, budget: Optional[RenderBudget] = None):
        self.server, self.url, self.page, self.log = server, url, page, log
        self.budget = budget or RenderBudget(RENDER_SHARE)
        self.sds_cameras: Deque[Tuple[np.ndarray, np.ndarray, np.ndarray]] = collections.deque(maxlen=SDS_STEPS_SHOWN)
        self.pending_cameras: Deque[Dict[str, Any]] = collections.deque(maxlen=SDS_STEPS_SHOWN)
        self.step_started = time.perf_counter()
        self.rate_window: Deque[Tuple[float, int]] = collections.deque(maxlen=50)
        self.closed = False
        self.rng: Optional[Tuple[Any, Any]] = None  # Python's and numpy's global RNG states after the last step

    @classmethod
    def start(cls, trainer: Trainer, run: RunDir, *, host: str, port: int, log: Callable[[str], None] = say) -> "ViewerHook":
        """Start the server (the URL is logged) and build the page for this run."""
        server, url = start_server(host, port, log)
        try:
            page = Page(server, trainer.cfg, run.root, controls=True, max_steps=trainer.cfg.trainer.max_steps)
        except BaseException:
            stop_server(server)
            raise
        return cls(server, url, page, log=log)

    # -------------------------------------------------------------------------------- hooks
    def on_start(self, loop: TrainLoop) -> None:
        t = loop.trainer
        if t.dataset is not None:  # multiview: the training images' cameras, drawn once
            cams = t.dataset.cameras()
            colours = np.tile(np.array([[40, 40, 40]], np.uint8), (len(cams), 1))
            self.page.set_cameras([(cams.c2w.double().cpu().numpy(), cams.fovy_deg.double().cpu().numpy(), colours)])
        self._status(loop)
        self.page.publish(force=True)
        self._keep_rng()
        self.step_started = time.perf_counter()

    def _keep_rng(self) -> None:
        self.rng = (random.getstate(), np.random.get_state())

    def _restore_rng(self) -> None:
        """Undo any draw from Python's or numpy's global RNG since the last step: the server's
        threads (and libraries they call) may draw from them, and the checkpoints record both."""
        if self.rng is not None:
            random.setstate(self.rng[0])
            np.random.set_state(self.rng[1])

    def before_step(self, loop: TrainLoop) -> None:
        self._restore_rng()
        self._handle_requests(loop)
        if self.page.paused:
            self.log(f"viewer: paused at step {loop.trainer.step} (Resume on {self.url}, or Ctrl-C to stop)")
            self._status(loop)
            self.page.publish(force=True)
            while self.page.paused and not loop.stopping:
                self._handle_requests(loop)
                self.page.render_pending(loop.trainer.scene, loop.trainer.step)  # no budget: nothing trains
                self.page.publish()
                time.sleep(PAUSE_POLL_S)
            if not loop.stopping:
                self.log(f"viewer: resumed at step {loop.trainer.step}")
            self._status(loop)
            self.page.publish(force=True)
        self._restore_rng()
        self.step_started = time.perf_counter()

    def after_step(self, loop: TrainLoop, metrics: Dict[str, Any]) -> None:
        now = time.perf_counter()
        self._keep_rng()
        self.budget.earn(now - self.step_started)
        t = loop.trainer
        self.rate_window.append((now, t.step))
        cams = metrics.get("_cameras")
        if cams is not None:
            self.pending_cameras.append(cams)  # tensors stay where they are until they are drawn
        if t.step % loop.cfg.trainer.log_every == 0 or t.step == loop.cfg.trainer.max_steps:
            self.page.record(t.step, {**metrics, "it_s": self._rate()})
        if not self.page.has_clients:
            return
        start = time.perf_counter()
        if now - self.page.last_publish >= 0.5:
            self._status(loop)
            self._flush_cameras(loop)
            self.page.publish(now)
        self.budget.credit_s -= time.perf_counter() - start  # sending counts against the same allowance
        self.page.render_pending(t.scene, t.step, self.budget)

    def on_end(self, loop: TrainLoop, code: int) -> None:
        self.close()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            stop_server(self.server)

    # ------------------------------------------------------------------------------ helpers
    def _rate(self) -> float:
        if len(self.rate_window) < 2:
            return math.nan
        (t0, s0), (t1, s1) = self.rate_window[0], self.rate_window[-1]
        return (s1 - s0) / max(t1 - t0, 1e-9)

    def _status(self, loop: TrainLoop) -> None:
        t, max_steps = loop.trainer, loop.cfg.trainer.max_steps
        rate = self._rate()
        left = (max_steps - t.step) / rate if rate and math.isfinite(rate) and rate > 0 else math.nan
        self.page.set_status(f"**step {t.step} / {max_steps}** · {rate:.2f} it/s · {_format_seconds(left)} left")

    def _flush_cameras(self, loop: TrainLoop) -> None:
        while self.pending_cameras:
            cams = self.pending_cameras.popleft()
            az, el = cams["azimuth_deg"].detach().float().cpu(), cams["elevation_deg"].detach().float().cpu()
            pos_mix, _ = view_conditioning(loop.cfg.guidance, az, el)
            c2w = cams["c2w"].detach().double().cpu().numpy()
            self.sds_cameras.append((c2w, cams["fov_deg"].detach().double().cpu().numpy(), view_colours(pos_mix, c2w.shape[0])))
        if self.sds_cameras:
            self.page.set_cameras(list(self.sds_cameras))

    def _handle_requests(self, loop: TrainLoop) -> None:
        for what in sorted(self.page.take_requests()):
            if what == "save":
                path = loop.save()
                self.log(f"viewer: saved {path}")
                self.page.say(f"saved {path.name}")
            elif what == "export":
                self.page.say("exporting the mesh…")
                self.page.publish(force=True)
                self.page.say(self._export(loop))

    def _export(self, loop: TrainLoop) -> str:
        """What ``dreamperp export RUN_DIR`` writes, from the scene of the last step; training goes on after."""
        from dreamperp.export.mesh import export_mesh

        t = loop.trainer
        was_training = t.scene.training
        t.scene.eval()
        try:
            with no_rng_side_effects(t.device):
                paths = export_mesh(t.scene, loop.cfg, loop.run.export_dir, progress=False, log=self.log)
        except Exception as err:  # an empty field early in a run, say: report it, keep training
            self.log(f"viewer: export at step {t.step} failed ({type(err).__name__}: {err})")
            return f"export failed: {err}"
        finally:
            t.scene.train(was_training)
        for path in paths:
            self.log(f"viewer: wrote {path}")
        return f"step {t.step}: wrote " + ", ".join(p.name for p in paths)
