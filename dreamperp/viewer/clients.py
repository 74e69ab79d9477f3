"""The browsers connected to the viewer and the render each one is due (docs/viewer.md).

viser calls the camera callbacks from its own threads; they only record where each browser looks,
under ``self.lock``. The renders happen in the thread that owns the scene, in
:meth:`ClientRenders.render_pending`.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Tuple

from dreamperp.viewer.render import RenderBudget, ViewCamera, camera_from_viser, image_size, render_view

MOVING_S = 0.3  # a camera that moved this recently renders at preview resolution
REFRESH_S = 1.0  # a still camera re-renders a changed scene at most this often


@dataclass
class ClientView:
    """What one browser looks at and what it was last sent."""

    camera: Optional[ViewCamera] = None
    moved_at: float = 0.0
    sent: Optional[Tuple[Any, ...]] = None  # (camera key, mode, resolution, scene version)
    sent_at: float = 0.0


class ClientRenders:
    """Each connected browser's camera, and its render of the scene as background image.

    ``mode`` and ``resolution`` are the panel's render-mode dropdown and resolution slider;
    ``on_connect`` runs when a browser connects (the page sends it the newest state)."""

    def __init__(self, server: Any, cfg: Any, mode: Any, resolution: Any, on_connect: Callable[[], None]):
        self.server, self.cfg, self.mode, self.resolution = server, cfg, mode, resolution
        self.on_connect = on_connect
        self.lock = threading.Lock()
        self.clients: Dict[int, ClientView] = {}
        self.last_camera: Optional[ViewCamera] = None  # the camera that moved last, of any browser
        self.show_scene = True  # False while the exported mesh is shown instead
        self.count, self.seconds = 0, 0.0  # renders and their seconds, for benchmarks and the docs
        server.on_client_connect(self._on_connect)
        server.on_client_disconnect(self._on_disconnect)

    def _on_connect(self, client: Any) -> None:
        view = ClientView()
        with self.lock:
            self.clients[client.client_id] = view
        self.on_connect()

        def moved(camera: Any) -> None:
            try:
                cam = camera_from_viser(camera.wxyz, camera.position, camera.fov, camera.aspect)
            except Exception:  # a malformed camera message: keep the previous one
                return
            with self.lock:
                view.camera, view.moved_at = cam, time.perf_counter()
                self.last_camera = cam

        client.camera.on_update(moved)
        if client.camera.fov > 0:
            moved(client.camera)

    def _on_disconnect(self, client: Any) -> None:
        with self.lock:
            self.clients.pop(client.client_id, None)

    def guide_camera(self) -> Optional[ViewCamera]:
        """The camera that moved last (the guidance panel describes it), or None before any."""
        with self.lock:
            return self.last_camera

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
            self.count, self.seconds = self.count + 1, self.seconds + took
            if budget is not None:
                budget.charge(took, h * w)
            view.sent, view.sent_at = (cam.key(), mode, res, version), time.perf_counter()
        return spent

    def clear(self) -> None:
        """Forget what was sent, so every client renders again (e.g. the scene was switched back on)."""
        with self.lock:
            for view in self.clients.values():
                view.sent = None
