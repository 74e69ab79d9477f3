"""The viewer scene's cameras: the browser's starting view and the training cameras drawn as frusta,
coloured by the view SDS conditioned them on (docs/viewer.md)."""

from __future__ import annotations

import math
from typing import Any, List, Sequence, Tuple

import numpy as np

from dreamperp.config import VIEW_NAMES
from dreamperp.viewer.render import VIEW_COLOURS, viser_pose


def set_initial_camera(server: Any, cfg: Any) -> None:
    """A z-up scene, seen by a new browser from the front view (``cfg.data``'s eval elevation and radius)."""
    server.scene.set_up_direction("+z")
    e = math.radians(float(cfg.data.eval_elevation))
    r = float(cfg.data.eval_radius)
    server.initial_camera.position = (r * math.cos(e), 0.0, r * math.sin(e))  # the front view
    server.initial_camera.look_at = (0.0, 0.0, 0.0)
    server.initial_camera.up_direction = (0.0, 0.0, 1.0)


def camera_legend() -> str:
    """Markdown naming the frustum colour of each view."""
    names = ", ".join(f"<span style='color:rgb{tuple(int(c) for c in VIEW_COLOURS[i])}'>■</span> {n}" for i, n in enumerate(VIEW_NAMES))
    return f"Cameras are coloured by the view SDS conditioned them on: {names}."


class Frusta:
    """The camera frusta in the scene; ``show`` is the 'Show cameras' checkbox."""

    def __init__(self, server: Any, cfg: Any, show: Any):
        self.server, self.cfg, self.show = server, cfg, show
        self.batches: List[Tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # (c2w [B,4,4], fovy [B], colours [B,3])
        self.changed = False
        self.handles: List[Any] = []
        show.on_update(lambda _: self.set_visible())

    def set(self, batches: Sequence[Tuple[np.ndarray, np.ndarray, np.ndarray]]) -> None:
        """Frusta to draw: ``(c2w [B, 4, 4], fovy_deg [B], colours uint8 [B, 3])`` per batch."""
        self.batches = list(batches)
        self.changed = True

    def send(self) -> None:
        """Move, recolour, add or remove frusta to match the batches last set (when they changed)."""
        if not self.changed:
            return
        self.changed = False
        items = [(c2w[i], float(fovy[i]), colours[i]) for c2w, fovy, colours in self.batches for i in range(c2w.shape[0])]
        aspect = float(self.cfg.data.width) / float(self.cfg.data.height) if self.cfg.data.type == "text" else 1.0
        for i, (c2w, fovy, colour) in enumerate(items):
            wxyz, position = viser_pose(c2w)
            if i < len(self.handles):
                handle = self.handles[i]
                handle.wxyz, handle.position, handle.color, handle.fov = wxyz, position, tuple(int(c) for c in colour), math.radians(fovy)
            else:
                handle = self.server.scene.add_camera_frustum(
                    f"/cameras/{i}", fov=math.radians(fovy), aspect=aspect, scale=0.12, thickness=0.006,
                    color=tuple(int(c) for c in colour), wxyz=wxyz, position=position, visible=bool(self.show.value),
                )
                self.handles.append(handle)
        for handle in self.handles[len(items):]:
            handle.remove()
        del self.handles[len(items):]

    def set_visible(self) -> None:
        for handle in self.handles:
            handle.visible = bool(self.show.value)
