"""``dreamperp view RUN_DIR [--port 7007]``: the viewer page, read-only, for a run folder (docs/viewer.md).

The run may be finished or still training in another process: the scene comes from the newest
checkpoint and is reloaded when a newer one appears; the plots follow metrics.jsonl. The exported
GLB can be switched on against the scene, and the turntable plays in the panel. Runs until Ctrl-C
or SIGTERM (exit 130 / 143).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np

from dreamperp.errors import UsageError
from dreamperp.runs.checkpoint import list_checkpoints, load_run
from dreamperp.runs.folder import RunDir, read_metrics
from dreamperp.signals import StopSignals
from dreamperp.viewer import require_viser
from dreamperp.viewer.page import Page
from dreamperp.viewer.server import start_server, stop_server

POLL_S = 2.0  # checkpoints and metrics.jsonl are looked at this often
TICK_S = 0.03


def say(message: str) -> None:
    print(f"dreamperp view: {message}", file=sys.stderr, flush=True)


class RunWatcher:
    """The newest checkpoint's scene and the metrics of a run folder, reloaded when they change."""

    def __init__(self, run: RunDir, page: Page):
        self.run, self.page = run, page
        self.scene: Any = None
        self.ckpt: Optional[Path] = None
        self.metrics_stamp: Optional[tuple] = None
        self.step = -1

    def poll(self) -> None:
        ckpts = list_checkpoints(self.run.ckpt_dir)
        if ckpts and ckpts[-1] != self.ckpt:
            newest, self.ckpt = ckpts[-1], ckpts[-1]  # tried once: checkpoints are written atomically, so a bad one stays bad
            try:
                loaded = load_run(self.run.root, checkpoint=newest)
            except (UsageError, OSError) as err:  # corrupt, or removed by the run's rotation: keep showing the last good one
                say(f"could not load {newest.name} ({err}); showing the previous scene")
            else:
                self.scene, self.step = loaded.scene, loaded.step
                self.page.say(f"scene from {newest.name}")
        try:
            st = self.run.metrics_path.stat()
            stamp: Optional[tuple] = (st.st_size, st.st_mtime_ns)
        except OSError:
            stamp = None
        if stamp != self.metrics_stamp:
            self.metrics_stamp = stamp
            records = read_metrics(self.run.metrics_path, while_written=True)
            self.page.load_history(records)
        max_steps = self.page.cfg.trainer.max_steps
        shown = f"scene at step {self.step}" if self.scene is not None else "no checkpoint yet"
        self.page.set_status(f"**{self.run.root.name}** · {shown} of {max_steps} (read-only)")


def view_command(args: argparse.Namespace) -> int:
    require_viser("dreamperp view")
    run = RunDir.open(args.run_dir)  # not a run folder: UsageError, exit 2
    cfg = run.load_config()
    server, _ = start_server(args.host, args.port, say)
    try:
        page = Page(server, cfg, run.root, controls=False)
        glb = run.export_dir / "mesh.glb"
        if glb.is_file():
            page.add_mesh(glb)
        for suffix in ("mp4", "gif"):
            video = run.export_dir / f"turntable.{suffix}"
            if video.is_file():
                page.add_turntable(video)
                break
        if cfg.data.type == "multiview":
            _show_dataset_cameras(cfg, page)
        watcher = RunWatcher(run, page)
        last_poll = -np.inf
        with StopSignals() as stop:
            while stop.signum is None:
                now = time.perf_counter()
                if now - last_poll >= POLL_S:
                    last_poll = now
                    watcher.poll()
                if watcher.scene is not None:
                    page.render_pending(watcher.scene, watcher.step)
                page.publish()
                time.sleep(TICK_S)
        say(f"stopped by {stop.name}")
        return 128 + int(stop.signum)
    finally:
        stop_server(server)


def _show_dataset_cameras(cfg: Any, page: Page) -> None:
    """A multiview run's training cameras (the dataset may have moved: then none)."""
    from dreamperp.multiview import load_transforms

    try:
        data = load_transforms(cfg.data.path, load_images=False)
        cams = data.cameras(height=cfg.data.height, width=cfg.data.width) if data.height is None else data.cameras()
    except (UsageError, OSError):
        return
    colours = np.tile(np.array([[40, 40, 40]], np.uint8), (len(cams), 1))
    page.set_cameras([(cams.c2w.double().cpu().numpy(), cams.fovy_deg.double().cpu().numpy(), colours)])
