"""The viewer page on a viser server, shared by ``train --viewer`` and ``dreamperp view`` (docs/viewer.md):
the panel (status, controls, render settings, guidance, plots, validation, exported mesh, turntable)
over the parts in :mod:`~dreamperp.viewer.clients` (renders per browser),
:mod:`~dreamperp.viewer.cameras` (frusta) and :mod:`~dreamperp.viewer.plots` (metric charts).

Threads: viser calls the callbacks (camera moves, clicks) from its own threads; they only record
what the browser asked for, under a lock. Every render, and every read of the scene, happens in
the thread that owns the scene (the training thread, or ``view``'s main loop) through
:meth:`Page.render_pending` and :meth:`Page.publish`.
"""

from __future__ import annotations

import math
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple

import numpy as np

from dreamperp.viewer.cameras import Frusta, camera_legend, set_initial_camera
from dreamperp.viewer.clients import ClientRenders
from dreamperp.viewer.plots import MetricPlots
from dreamperp.viewer.render import RENDER_MODES, RenderBudget, guidance_table

PUBLISH_S = 0.5  # plots, status, cameras and validation are sent at most this often
DEFAULT_RESOLUTION = 256
# The GLB export is y-up (glTF); the scene is z-up: +90° about x brings the mesh back.
Y_UP_TO_Z_UP_WXYZ = (math.sqrt(0.5), math.sqrt(0.5), 0.0, 0.0)


@dataclass
class Requests:
    """Clicks of the controls, waiting for the training thread."""

    paused: bool = False
    save: bool = False
    export: bool = False
    pending: Set[str] = field(default_factory=set)


class Page:
    """GUI and scene of the viewer. ``controls``: pause/save/export buttons (training only)."""

    def __init__(self, server: Any, cfg: Any, run_root: Path, *, controls: bool, max_steps: Optional[int] = None):
        self.server, self.cfg, self.run_root = server, cfg, Path(run_root)
        self.max_steps = max_steps
        self.lock = threading.Lock()  # guards self.requests
        self.requests = Requests()
        self.status_line = ""
        self.note = ""
        self.val_path: Optional[Path] = None
        self.last_publish = -math.inf
        self.mesh = None
        self._build(controls)
        self.renders = ClientRenders(server, cfg, self.mode, self.resolution, on_connect=self._on_connect)

    # ------------------------------------------------------------------------------- layout
    def _build(self, controls: bool) -> None:
        s = self.server
        set_initial_camera(s, self.cfg)
        gui = s.gui
        self.status = gui.add_markdown("starting…")
        if controls:
            self.pause_button = gui.add_button("Pause", hint="Stop training after the current step (resume continues the same run)")
            self.save_button = gui.add_button("Save checkpoint now")
            self.export_button = gui.add_button("Export mesh now", hint="Writes export/ as `dreamperp export` does; training goes on after")
            self.pause_button.on_click(lambda _: self._toggle_pause())
            self.save_button.on_click(lambda _: self._request("save"))
            self.export_button.on_click(lambda _: self._request("export"))
        with gui.add_folder("Render"):
            self.mode = gui.add_dropdown("Mode", RENDER_MODES, initial_value="rgb")
            self.resolution = gui.add_slider("Resolution", min=64, max=1024, step=32, initial_value=DEFAULT_RESOLUTION,
                                             hint="Longer side of the render at rest (a moving camera gets a quarter)")
            self.show_cameras = gui.add_checkbox("Show cameras", initial_value=True)
            self.frusta = Frusta(s, self.cfg, self.show_cameras)
        with gui.add_folder("Guidance at your camera"):
            self.guidance = gui.add_markdown(camera_legend())
        with gui.add_folder("Metrics"):
            self.metrics = MetricPlots(s, gui.add_folder("Plots"))
        with gui.add_folder("Validation"):
            self.val_image = gui.add_image(np.full((8, 8, 3), 255, np.uint8), label="latest validation grid")

    # ----------------------------------------------------------------------------- controls
    def _on_connect(self) -> None:
        self.last_publish = -math.inf  # send the newest state to the newcomer

    def _toggle_pause(self) -> None:
        with self.lock:
            self.requests.paused = not self.requests.paused
            paused = self.requests.paused
        self.pause_button.label = "Resume" if paused else "Pause"

    def _request(self, what: str) -> None:
        with self.lock:
            self.requests.pending.add(what)

    def take_requests(self) -> Set[str]:
        """Save/export clicks since the last call."""
        with self.lock:
            pending, self.requests.pending = self.requests.pending, set()
        return pending

    @property
    def paused(self) -> bool:
        return self.requests.paused

    @property
    def has_clients(self) -> bool:
        return bool(self.renders.clients)

    # ------------------------------------------------------------------------------ records
    @property
    def history(self) -> Dict[str, List[float]]:
        """The plotted metrics per step (:class:`~dreamperp.viewer.plots.MetricPlots`)."""
        return self.metrics.history

    def record(self, step: int, metrics: Dict[str, Any]) -> None:
        """Add one logged step's scalar metrics to the plots."""
        self.metrics.record(step, metrics)

    def load_history(self, records: Sequence[Dict[str, Any]]) -> None:
        self.metrics.load(records)

    @property
    def camera_batches(self) -> List[Tuple[np.ndarray, np.ndarray, np.ndarray]]:
        return self.frusta.batches

    def set_cameras(self, batches: Sequence[Tuple[np.ndarray, np.ndarray, np.ndarray]]) -> None:
        """Frusta to draw: ``(c2w [B, 4, 4], fovy_deg [B], colours uint8 [B, 3])`` per batch."""
        self.frusta.set(batches)

    def set_status(self, line: str) -> None:
        self.status_line = line

    def say(self, note: str) -> None:
        """A line under the status (e.g. what the last click did)."""
        self.note = note
        self.last_publish = -math.inf

    # ------------------------------------------------------------------------------ sending
    def publish(self, now: Optional[float] = None, force: bool = False) -> None:
        """Send status, plots, cameras, guidance and the newest validation grid (at most every PUBLISH_S)."""
        now = time.perf_counter() if now is None else now
        if not force and now - self.last_publish < PUBLISH_S:
            return
        self.last_publish = now
        try:
            self._publish()
        except Exception as err:  # a browser that went away mid-send must not stop the run
            print(f"dreamperp: viewer: {type(err).__name__}: {err}", file=sys.stderr)

    def _publish(self) -> None:
        paused = " · **paused**" if self.paused else ""
        self.status.content = f"{self.status_line}{paused}" + (f"\n\n{self.note}" if self.note else "")
        cam = self.renders.guide_camera()
        if cam is not None:
            az, el = cam.azimuth_elevation
            self.guidance.content = guidance_table(self.cfg.guidance, az, el) + "\n\n" + camera_legend()
        self.metrics.send()
        self.frusta.send()
        self._send_validation()

    def _send_validation(self) -> None:
        grids = sorted((self.run_root / "val").glob("step-*.png"))
        if not grids or grids[-1] == self.val_path:
            return
        import imageio.v3 as iio

        try:
            image = np.asarray(iio.imread(grids[-1]))[..., :3]
        except Exception:  # being written by another process: next time
            return
        self.val_image.image = image
        self.val_image.label = f"validation, {grids[-1].stem}"
        self.val_path = grids[-1]

    # ----------------------------------------------------------------------------- renders
    def render_pending(self, scene: Any, version: Any, budget: Optional[RenderBudget] = None) -> float:
        """Render for every client whose view is out of date (within ``budget`` when given);
        returns the seconds spent."""
        return self.renders.render_pending(scene, version, budget)

    def clear_renders(self) -> None:
        """Forget what was sent, so every client renders again (e.g. the scene was switched back on)."""
        self.renders.clear()

    @property
    def render_count(self) -> int:
        return self.renders.count

    @property
    def render_seconds(self) -> float:
        return self.renders.seconds

    # ---------------------------------------------------------------------- finished runs
    def add_mesh(self, glb: Path) -> None:
        """The exported GLB, hidden until 'Show exported mesh' is ticked (which hides the render)."""
        with self.server.gui.add_folder("Exported mesh"):
            self.mesh_toggle = self.server.gui.add_checkbox("Show exported mesh", initial_value=False, hint=str(glb))
        self.mesh = self.server.scene.add_glb("/mesh", glb.read_bytes(), wxyz=Y_UP_TO_Z_UP_WXYZ, visible=False)
        self.mesh_toggle.on_update(lambda _: self._show_mesh(bool(self.mesh_toggle.value)))

    def _show_mesh(self, on: bool) -> None:
        self.mesh.visible = on
        self.renders.show_scene = not on
        if on:
            self.server.scene.set_background_image(None)
            for client in self.server.get_clients().values():
                client.scene.set_background_image(None)
        else:
            self.clear_renders()

    def add_turntable(self, video: Path) -> None:
        """The turntable video, played in the panel."""
        import base64

        mime = "video/mp4" if video.suffix == ".mp4" else "image/gif"
        data = base64.b64encode(video.read_bytes()).decode("ascii")
        body = (
            f"<video src='data:{mime};base64,{data}' autoplay loop muted playsinline style='width:100%'></video>"
            if mime == "video/mp4"
            else f"<img src='data:{mime};base64,{data}' style='width:100%'>"
        )
        with self.server.gui.add_folder("Turntable"):
            self.server.gui.add_html(body)
