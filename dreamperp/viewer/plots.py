"""The viewer's metric plots: logged scalars kept per step and drawn as uPlot charts (docs/viewer.md).

The training hook records each logged step; ``dreamperp view`` loads a run's metrics.jsonl, which
may be being written. Both run in the thread that owns the scene, as does :meth:`MetricPlots.send`.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

MAX_POINTS = 2000  # plotted points per series (older points are thinned)
PLOT_GROUPS = (
    ("losses", lambda k: k == "loss" or k.startswith("loss_")),
    ("grad norm", lambda k: k in ("grad_norm", "sds_grad_norm")),
    ("t (diffusion timestep)", lambda k: k == "t"),
    ("PSNR", lambda k: k == "psnr"),
    ("it/s", lambda k: k == "it_s"),
)
SERIES_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")


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


class MetricPlots:
    """Per-step history of the scalar metrics (``history[key]``, one value per ``history["step"]``,
    NaN where a step did not log the key) and its charts, one per :data:`PLOT_GROUPS` entry, in ``folder``."""

    def __init__(self, server: Any, folder: Any):
        self.server, self.folder = server, folder
        self.history: Dict[str, List[float]] = {"step": []}
        self.changed = False
        self.charts: Dict[str, Tuple[Any, Tuple[str, ...]]] = {}  # title -> (uPlot handle, keys plotted)

    def record(self, step: int, metrics: Dict[str, Any]) -> None:
        """Add one logged step's scalar metrics."""
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
        self.changed = True

    def load(self, records: Sequence[Dict[str, Any]]) -> None:
        """Replace the history with ``records`` (metrics.jsonl's, each with a ``step``)."""
        self.history = {"step": []}
        for rec in records:
            self.record(int(rec["step"]), rec)

    def send(self) -> None:
        """Update the charts when steps were recorded since the last send."""
        if not self.changed:
            return
        self.changed = False
        steps = np.asarray(self.history["step"], dtype=np.float64)
        if len(steps) < 1:
            return
        for title, wanted in PLOT_GROUPS:
            keys = tuple(k for k in self.history if k != "step" and wanted(k))
            if not keys:
                continue
            data = (steps, *(np.asarray(self.history[k], dtype=np.float64) for k in keys))
            existing = self.charts.get(title)
            if existing is not None and existing[1] == keys:
                existing[0].data = data
                continue
            if existing is not None:
                existing[0].remove()
            series = ({"label": "step"}, *({"label": k, "stroke": SERIES_COLOURS[i % len(SERIES_COLOURS)], "width": 1.5} for i, k in enumerate(keys)))
            with self.folder:
                handle = self.server.gui.add_uplot(data=data, series=series, title=title, aspect=1.6, scales={"x": {"time": False}})
            self.charts[title] = (handle, keys)
