"""What the viewer costs a training run: step time without it, with it and no browser, with one
browser watching a still camera, and with one whose camera keeps moving (docs/viewer.md).

    python tools/bench_viewer.py configs/tiny.yaml                       # CPU, the tiny offline model
    python tools/bench_viewer.py configs/tiny.yaml --steps 200 --repeats 3

Each case trains the same run from the same seed for ``--warmup`` + ``--steps`` steps in this
process (a fresh Trainer each time, the loop and its hooks exactly as ``dreamperp train`` runs
them, no checkpoints or validation in between), the cases interleaved over ``--repeats`` rounds,
and reports medians over the rounds of: the step's wall time, the training thread's CPU time per
step, and the CPU time the viewer's hook takes in the training thread per step (its renders,
plots and cameras): the viewer's cost to training, which the render budget bounds. Run it with
OMP_NUM_THREADS=1 so torch computes in the training thread and its CPU clock is exact on a busy
machine. The browser is Debian's headless chromium (software WebGL) on this machine at nice 19:
its own drawing competes for the same cores, which the wall times show and the CPU times do not.
The moving camera is turned by the server 10 times a second, as a dragging user would.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the CLI does

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # the DevTools browser driver of the viewer tests

from dreamperp.config import load_config  # noqa: E402
from dreamperp.runs.folder import RunDir  # noqa: E402
from dreamperp.train.loop import LoopHook, TrainLoop  # noqa: E402
from dreamperp.train.trainer import Trainer  # noqa: E402

CASES = ("off", "no client", "still client", "moving client")


def clocks() -> tuple[float, float]:
    """(wall, CPU time of this thread): with OMP_NUM_THREADS=1 torch computes in the calling thread,
    so the CPU clock counts the training thread's own work however busy the machine is."""
    return time.perf_counter(), time.thread_time()


class StepTimes(LoopHook):
    """Wall and training-thread CPU time of every step, hooks included (the last hook of the list)."""

    def __init__(self) -> None:
        self.wall: List[float] = []
        self.cpu: List[float] = []
        self.last: Optional[tuple[float, float]] = None

    def before_step(self, loop: TrainLoop) -> None:
        if self.last is None:
            self.last = clocks()

    def after_step(self, loop: TrainLoop, metrics: dict) -> None:
        now = clocks()
        assert self.last is not None
        self.wall.append(now[0] - self.last[0])
        self.cpu.append(now[1] - self.last[1])
        self.last = now


class Timed(LoopHook):
    """Another hook, with the wall and CPU time its before_step/after_step take, per step."""

    def __init__(self, inner: LoopHook) -> None:
        self.inner = inner
        self.wall: List[float] = []
        self.cpu: List[float] = []
        self.pending = (0.0, 0.0)

    def on_start(self, loop: TrainLoop) -> None:
        self.inner.on_start(loop)

    def before_step(self, loop: TrainLoop) -> None:
        a = clocks()
        self.inner.before_step(loop)
        b = clocks()
        self.pending = (b[0] - a[0], b[1] - a[1])

    def after_step(self, loop: TrainLoop, metrics: dict) -> None:
        a = clocks()
        self.inner.after_step(loop, metrics)
        b = clocks()
        self.wall.append(self.pending[0] + b[0] - a[0])
        self.cpu.append(self.pending[1] + b[1] - a[1])

    def on_end(self, loop: TrainLoop, code: int) -> None:
        self.inner.on_end(loop, code)


def orbit(server: Any, stop: threading.Event, radius: float) -> None:
    """Turn every client's camera around the object, 10 times a second."""
    angle = 0.0
    while not stop.wait(0.1):
        angle += 0.15
        for client in server.get_clients().values():
            client.camera.position = (radius * math.cos(angle), radius * math.sin(angle), 0.5)
            client.camera.look_at = (0.0, 0.0, 0.0)


def run_case(case: str, cfg: Any, out: Path, steps: int, browser: Any) -> Dict[str, float]:
    from dreamperp.viewer.hook import ViewerHook

    trainer = Trainer(cfg)
    run = RunDir(out / case.replace(" ", "-"))
    for sub in (run.ckpt_dir, run.val_dir, run.export_dir):
        sub.mkdir(parents=True, exist_ok=True)
    clock = StepTimes()
    hooks: List[LoopHook] = []
    viewer = timed = None
    if case != "off":
        viewer = ViewerHook.start(trainer, run, host="127.0.0.1", port=0, log=lambda _: None)
        timed = Timed(viewer)
        hooks.append(timed)
        if case != "no client":
            browser.goto(viewer.url)
            deadline = time.monotonic() + 30
            while not viewer.page.has_clients and time.monotonic() < deadline:
                time.sleep(0.05)
    stop = threading.Event()
    mover = None
    if case == "moving client":
        mover = threading.Thread(target=orbit, args=(viewer.server, stop, float(cfg.data.eval_radius)), daemon=True)
        mover.start()
    hooks.append(clock)  # last: its clock includes the viewer's after_step
    TrainLoop(trainer, run, hooks=hooks, log=lambda _: None).fit()
    stop.set()
    if case not in ("off", "no client"):
        browser.goto("about:blank")
    return {
        "wall": clock.wall, "cpu": clock.cpu,
        "viewer_wall": timed.wall if timed is not None else [0.0] * len(clock.wall),
        "viewer_cpu": timed.cpu if timed is not None else [0.0] * len(clock.cpu),
        "renders": viewer.page.render_count if viewer is not None else 0,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config")
    ap.add_argument("overrides", nargs="*")
    ap.add_argument("--steps", type=int, default=100, help="timed steps per case and round (default 100)")
    ap.add_argument("--warmup", type=int, default=10, help="steps left out of the timing (default 10)")
    ap.add_argument("--repeats", type=int, default=3, help="rounds over all cases (default 3)")
    ap.add_argument("--out", default="outputs/bench-viewer", help="scratch run folders")
    args = ap.parse_args()
    total = args.warmup + args.steps
    fixed = ["trainer.progress=false", f"trainer.max_steps={total}", f"trainer.val_every={10 * total}",
             f"trainer.checkpoint_every={10 * total}", "trainer.log_every=10"]
    cfg = load_config(args.config, [*args.overrides, *fixed])
    from browser import Browser

    keys = ("wall", "cpu", "viewer_wall", "viewer_cpu")
    rounds: Dict[str, List[Dict[str, float]]] = {c: [] for c in CASES}
    with Browser(1280, 800, nice=19) as browser:
        for r in range(args.repeats):
            for case in CASES:
                res = run_case(case, cfg, Path(args.out) / f"round-{r}", args.steps, browser)
                row = {k: statistics.mean(res[k][args.warmup:]) for k in keys}
                row["renders"] = res["renders"]
                rounds[case].append(row)
                print(f"round {r} {case:14s} " + " ".join(f"{k} {1000 * row[k]:.2f} ms" for k in keys), file=sys.stderr, flush=True)
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import torch

    print(f"config {args.config} {' '.join(args.overrides)}; {args.steps} timed steps x {args.repeats} rounds; "
          f"{cpu}, {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}")
    med = {c: {k: statistics.median(r[k] for r in rounds[c]) for k in keys} for c in CASES}
    print("| case | step, wall ms | step, training-thread CPU ms | viewer's part of it, CPU ms | viewer cost: its CPU / the rest of the step | renders |")
    print("|---|---|---|---|---|---|")
    for case in CASES:
        m = med[case]
        n = sum(r["renders"] for r in rounds[case])
        cost = m["viewer_cpu"] / max(m["cpu"] - m["viewer_cpu"], 1e-12)
        print(f"| {case} | {1000 * m['wall']:.1f} | {1000 * m['cpu']:.1f} | {1000 * m['viewer_cpu']:.2f} | {100 * cost:.1f}% | {n} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
