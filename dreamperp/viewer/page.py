"""The viewer page on a viser server, shared by ``train --viewer`` and ``dreamperp view`` (docs/viewer.md).

Threads: viser calls the callbacks here (camera moves, clicks) from its own threads; they only
record what the browser asked for, under ``self.lock``. Every render, and every read of the
scene, happens in the thread that owns the scene (the training thread, or ``view``'s main loop)
through :meth:`Page.render_pending` and :meth:`Page.publish`.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import logging
import math
import random
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Set, Tuple

import numpy as np

from dreamperp.config import VIEW_NAMES
from dreamperp.errors import UsageError
from dreamperp.viewer import require_viser
from dreamperp.viewer.render import (
    RENDER_MODES,
    VIEW_COLOURS,
    RenderBudget,
    ViewCamera,
    camera_from_viser,
    guidance_table,
    image_size,
    render_view,
    viser_pose,
)

MOVING_S = 0.3  # a camera that moved this recently renders at preview resolution
REFRESH_S = 1.0  # a still camera re-renders a changed scene at most this often
PUBLISH_S = 0.5  # plots, status, cameras and validation are sent at most this often
MAX_POINTS = 2000  # plotted points per series (older points are thinned)
DEFAULT_RESOLUTION = 256
PLOT_GROUPS = (
    ("losses", lambda k: k == "loss" or k.startswith("loss_")),
    ("grad norm", lambda k: k in ("grad_norm", "sds_grad_norm")),
    ("t (diffusion timestep)", lambda k: k == "t"),
    ("PSNR", lambda k: k == "psnr"),
    ("it/s", lambda k: k == "it_s"),
)
SERIES_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")
# The GLB export is y-up (glTF); the scene is z-up: +90° about x brings the mesh back.
Y_UP_TO_Z_UP_WXYZ = (math.sqrt(0.5), math.sqrt(0.5), 0.0, 0.0)


# ---------------------------------------------------------------------------------------- server
def check_listen(host: str, port: int) -> None:
    """UsageError when ``host`` cannot be listened on at all (a port in use is fine: viser moves on)."""
    if not 0 <= int(port) <= 65535:
        raise UsageError(f"--viewer-port must be within 0..65535 (0: any free port), got {port}")
    try:
        infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
    except socket.gaierror as err:
        raise UsageError(f"--viewer-host '{host}' is not a host name or address of this machine ({err.strerror}); use 127.0.0.1 or 0.0.0.0") from None
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(address)
        except OSError as err:
            if err.errno not in (errno.EADDRINUSE, errno.EACCES):
                raise UsageError(f"--viewer-host '{host}': cannot listen there ({err.strerror}); use 127.0.0.1 or 0.0.0.0") from None


def _private_ping_random() -> None:
    """websockets draws its keepalive ping payloads from Python's global ``random``, which the
    checkpoints record: give it a generator of its own so a connected browser cannot change them."""
    import websockets.asyncio.connection as connection

    if getattr(connection, "random", random) is random:
        connection.random = random.Random()  # type: ignore[attr-defined]


class _OneLine(logging.Handler):
    """websockets' errors (a client sending garbage, say) as one line in the run's log, no traceback."""

    def __init__(self, log: Callable[[str], None]):
        super().__init__(logging.WARNING)
        self.log = log

    def emit(self, record: logging.LogRecord) -> None:
        exc = record.exc_info[1] if record.exc_info else None
        detail = f"{type(exc).__name__}: {exc}" if exc is not None else record.getMessage()
        self.log(f"viewer: dropped a browser connection ({detail})")


def _log_websocket_errors(log: Callable[[str], None]) -> None:
    logger = logging.getLogger("websockets")
    if not any(isinstance(h, _OneLine) for h in logger.handlers):
        logger.addHandler(_OneLine(log))
        logger.propagate = False


def start_server(host: str, port: int, log: Callable[[str], None]) -> Tuple[Any, str]:
    """A viser server on ``host:port`` (the next free port when it is taken, said in the log);
    returns ``(server, url)``. The URL is logged once."""
    viser = require_viser()
    check_listen(host, port)
    _private_ping_random()
    _log_websocket_errors(log)
    with contextlib.redirect_stdout(io.StringIO()), same_python_random():  # viser's banner (rich draws link ids from `random`)
        server = viser.ViserServer(host=host, port=int(port), label="dreamperp", verbose=False)
    actual = int(server.get_port())
    shown = "127.0.0.1" if host in ("0.0.0.0", "", "::") else (f"[{host}]" if ":" in host else host)
    url = f"http://{shown}:{actual}"
    if port and actual != int(port):
        log(f"viewer: port {port} is in use; the viewer is on the next free port, {url}")
    else:
        log(f"viewer at {url}")
    return server, url


@contextlib.contextmanager
def same_python_random() -> Iterator[None]:
    """Leave Python's global ``random`` as it was (the checkpoints record it)."""
    state = random.getstate()
    try:
        yield
    finally:
        random.setstate(state)


def stop_server(server: Any) -> None:
    """Stop a viser server, without its 'Server stopped' line on stdout."""
    with contextlib.redirect_stdout(io.StringIO()), same_python_random():
        try:
            server.stop()
        except Exception:  # already stopped, or the loop died: nothing left to close
            pass


# -------------------------------------------------------------------------------------- metrics
def read_metrics_tolerant(path: Path) -> List[Dict[str, Any]]:
    """Records of a metrics.jsonl that may be being written (a partial last line is skipped)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError:
        return []
    records = []
    for line in text.splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and "step" in rec:
            records.append(rec)
    return records


def scalar(value: Any) -> Optional[float]:
    """A finite-or-not float from a metric value (tensor, number, bool), or None when it is not one."""
    if isinstance(value, bool) or value is None or isinstance(value, (str, list, dict)):
        return None
    try:
        if hasattr(value, "numel"):
            if value.numel() != 1:
                return None
            return float(value.detach().float().item())
        return float(value)
    except (TypeError, ValueError):
        return None


# ----------------------------------------------------------------------------------------- page
@dataclass
class ClientView:
    """What one browser looks at and what it was last sent."""

    camera: Optional[ViewCamera] = None
    moved_at: float = 0.0
    sent: Optional[Tuple[Any, ...]] = None  # (camera key, mode, resolution, scene version)
    sent_at: float = 0.0


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
        self.lock = threading.Lock()
        self.clients: Dict[int, ClientView] = {}
        self.requests = Requests()
        self.history: Dict[str, List[float]] = {"step": []}
        self.history_changed = False
        self.status_line = ""
        self.note = ""
        self.plots: Dict[str, Tuple[Any, Tuple[str, ...]]] = {}
        self.frusta: List[Any] = []
        self.camera_batches: List[Tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # (c2w [B,4,4], fovy [B], colours [B,3])
        self.cameras_changed = False
        self.val_path: Optional[Path] = None
        self.last_publish = -math.inf
        self.guide_camera: Optional[ViewCamera] = None
        self.show_scene = True
        self.mesh = None
        self.render_count, self.render_seconds = 0, 0.0  # for benchmarks and the docs
        self._build(controls)
        server.on_client_connect(self._on_connect)
        server.on_client_disconnect(self._on_disconnect)

    # ------------------------------------------------------------------------------- layout
    def _build(self, controls: bool) -> None:
        s, cfg = self.server, self.cfg
        s.scene.set_up_direction("+z")
        e = math.radians(float(cfg.data.eval_elevation))
        r = float(cfg.data.eval_radius)
        s.initial_camera.position = (r * math.cos(e), 0.0, r * math.sin(e))  # the front view
        s.initial_camera.look_at = (0.0, 0.0, 0.0)
        s.initial_camera.up_direction = (0.0, 0.0, 1.0)
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
            self.show_cameras.on_update(lambda _: self._set_frusta_visible())
        with gui.add_folder("Guidance at your camera"):
            self.guidance = gui.add_markdown(self._legend())
        with gui.add_folder("Metrics"):
            self.plot_folder = gui.add_folder("Plots")
        with gui.add_folder("Validation"):
            self.val_image = gui.add_image(np.full((8, 8, 3), 255, np.uint8), label="latest validation grid")

    def _legend(self) -> str:
        names = ", ".join(f"<span style='color:rgb{tuple(int(c) for c in VIEW_COLOURS[i])}'>■</span> {n}" for i, n in enumerate(VIEW_NAMES))
        return f"Cameras are coloured by the view SDS conditioned them on: {names}."

    # ---------------------------------------------------------------------------- callbacks
    def _on_connect(self, client: Any) -> None:
        view = ClientView()
        with self.lock:
            self.clients[client.client_id] = view
        self.last_publish = -math.inf  # send the newest state to the newcomer

        def moved(camera: Any) -> None:
            try:
                cam = camera_from_viser(camera.wxyz, camera.position, camera.fov, camera.aspect)
            except Exception:  # a malformed camera message: keep the previous one
                return
            with self.lock:
                view.camera, view.moved_at = cam, time.perf_counter()
                self.guide_camera = cam

        client.camera.on_update(moved)
        if client.camera.fov > 0:
            moved(client.camera)

    def _on_disconnect(self, client: Any) -> None:
        with self.lock:
            self.clients.pop(client.client_id, None)

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
        return bool(self.clients)

    # ------------------------------------------------------------------------------ records
    def record(self, step: int, metrics: Dict[str, Any]) -> None:
        """Add one logged step's scalar metrics to the plots."""
        values = {k: v for k, v in ((k, scalar(v)) for k, v in metrics.items() if not k.startswith("_") and k not in ("step", "skipped")) if v is not None}
        n = len(self.history["step"])
        for key in values:
            if key not in self.history:
                self.history[key] = [math.nan] * n
        self.history["step"].append(float(step))
        for key, series in self.history.items():
            if key != "step":
                series.append(values.get(key, math.nan))
        if n + 1 > 2 * MAX_POINTS:  # thin the older half, keep the newest points dense
            for key in self.history:
                self.history[key] = self.history[key][: MAX_POINTS : 2] + self.history[key][MAX_POINTS:]
        self.history_changed = True

    def load_history(self, records: Sequence[Dict[str, Any]]) -> None:
        self.history = {"step": []}
        for rec in records:
            self.record(int(rec["step"]), rec)

    def set_cameras(self, batches: Sequence[Tuple[np.ndarray, np.ndarray, np.ndarray]]) -> None:
        """Frusta to draw: ``(c2w [B, 4, 4], fovy_deg [B], colours uint8 [B, 3])`` per batch."""
        self.camera_batches = list(batches)
        self.cameras_changed = True

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
        with self.lock:
            cam = self.guide_camera
        if cam is not None:
            az, el = cam.azimuth_elevation
            self.guidance.content = guidance_table(self.cfg.guidance, az, el) + "\n\n" + self._legend()
        if self.history_changed:
            self.history_changed = False
            self._send_plots()
        if self.cameras_changed:
            self.cameras_changed = False
            self._send_frusta()
        self._send_validation()

    def _send_plots(self) -> None:
        steps = np.asarray(self.history["step"], dtype=np.float64)
        if len(steps) < 1:
            return
        for title, wanted in PLOT_GROUPS:
            keys = tuple(k for k in self.history if k != "step" and wanted(k))
            if not keys:
                continue
            data = (steps, *(np.asarray(self.history[k], dtype=np.float64) for k in keys))
            existing = self.plots.get(title)
            if existing is not None and existing[1] == keys:
                existing[0].data = data
                continue
            if existing is not None:
                existing[0].remove()
            series = ({"label": "step"}, *({"label": k, "stroke": SERIES_COLOURS[i % len(SERIES_COLOURS)], "width": 1.5} for i, k in enumerate(keys)))
            with self.plot_folder:
                handle = self.server.gui.add_uplot(data=data, series=series, title=title, aspect=1.6, scales={"x": {"time": False}})
            self.plots[title] = (handle, keys)

    def _send_frusta(self) -> None:
        items = [(c2w[i], float(fovy[i]), colours[i]) for c2w, fovy, colours in self.camera_batches for i in range(c2w.shape[0])]
        aspect = float(self.cfg.data.width) / float(self.cfg.data.height) if self.cfg.data.type == "text" else 1.0
        for i, (c2w, fovy, colour) in enumerate(items):
            wxyz, position = viser_pose(c2w)
            if i < len(self.frusta):
                handle = self.frusta[i]
                handle.wxyz, handle.position, handle.color, handle.fov = wxyz, position, tuple(int(c) for c in colour), math.radians(fovy)
            else:
                handle = self.server.scene.add_camera_frustum(
                    f"/cameras/{i}", fov=math.radians(fovy), aspect=aspect, scale=0.12, thickness=0.006,
                    color=tuple(int(c) for c in colour), wxyz=wxyz, position=position, visible=bool(self.show_cameras.value),
                )
                self.frusta.append(handle)
        for handle in self.frusta[len(items):]:
            handle.remove()
        del self.frusta[len(items):]

    def _set_frusta_visible(self) -> None:
        for handle in self.frusta:
            handle.visible = bool(self.show_cameras.value)

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
    def _wanted(self, view: ClientView, now: float, version: Any) -> Optional[int]:
        """Resolution to render this client at now, or None when what it shows is current."""
        cam = view.camera
        if cam is None or not self.show_scene:
            return None
        full = int(self.resolution.value)
        res = max(32, full // 4) if now - view.moved_at < MOVING_S else full
        key = (cam.key(), self.mode.value, res, version)
        if view.sent == key:
            return None
        if view.sent is not None and view.sent[:3] == key[:3] and now - view.sent_at < REFRESH_S:
            return None  # only the scene changed: refresh at most every REFRESH_S
        return res

    def render_pending(self, scene: Any, version: Any, budget: Optional[RenderBudget] = None) -> float:
        """Render for every client whose view is out of date (within ``budget`` when given);
        returns the seconds spent."""
        spent = 0.0
        with self.lock:
            clients = list(self.clients.items())
        for client_id, view in clients:
            now = time.perf_counter()
            res = self._wanted(view, now, version)
            if res is None:
                continue
            cam, mode = view.camera, str(self.mode.value)
            assert cam is not None
            h, w = image_size(res, cam.aspect)
            if budget is not None and not budget.allows(h * w):
                continue
            start = time.perf_counter()
            image = render_view(scene, self.cfg, cam, mode, res)
            try:
                handle = self.server.get_clients().get(client_id)
                if handle is not None:
                    handle.scene.set_background_image(image, format="jpeg", jpeg_quality=85)
            except Exception:  # the browser closed mid-render: nothing to send to
                pass
            took = time.perf_counter() - start
            spent += took
            self.render_count, self.render_seconds = self.render_count + 1, self.render_seconds + took
            if budget is not None:
                budget.charge(took, h * w)
            view.sent, view.sent_at = (cam.key(), mode, res, version), time.perf_counter()
        return spent

    def clear_renders(self) -> None:
        """Forget what was sent, so every client renders again (e.g. the scene was switched back on)."""
        with self.lock:
            for view in self.clients.values():
                view.sent = None

    # ---------------------------------------------------------------------- finished runs
    def add_mesh(self, glb: Path) -> None:
        """The exported GLB, hidden until 'Show exported mesh' is ticked (which hides the render)."""
        with self.server.gui.add_folder("Exported mesh"):
            self.mesh_toggle = self.server.gui.add_checkbox("Show exported mesh", initial_value=False, hint=str(glb))
        self.mesh = self.server.scene.add_glb("/mesh", glb.read_bytes(), wxyz=Y_UP_TO_Z_UP_WXYZ, visible=False)
        self.mesh_toggle.on_update(lambda _: self._show_mesh(bool(self.mesh_toggle.value)))

    def _show_mesh(self, on: bool) -> None:
        self.mesh.visible = on
        self.show_scene = not on
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
