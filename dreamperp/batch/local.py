"""The local engine: a pool of job processes on this machine, one GPU slot or a share of the CPU each."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from typing import Any, Dict, List, Optional

from dreamperp.batch.jobs import Job
from dreamperp.batch.process import POLL_S, RETRY_SIGNALS, Attempt, job_outcome
from dreamperp.batch.reports import say


def detect_gpus() -> List[str]:
    """GPU ids of this machine without importing torch: CUDA_VISIBLE_DEVICES if set, else ``nvidia-smi -L``."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [g.strip() for g in visible.split(",") if g.strip() and g.strip() != "-1"]
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(ln for ln in out.splitlines() if ln.startswith("GPU "))]


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS, Windows
        return os.cpu_count() or 1


def thread_env(threads: int) -> Dict[str, str]:
    """Per-job CPU thread limits (torch's intra-op pool follows OMP_NUM_THREADS)."""
    n = str(max(1, threads))
    return {"OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n, "OPENBLAS_NUM_THREADS": n}


class LocalEngine:
    """A pool of job processes on this machine: one GPU slot each (``--gpus-per-run`` GPUs), or ``--parallel`` CPU runs."""

    def __init__(self, batch: Any):
        self.batch = batch
        args = batch.args
        gpus = detect_gpus()
        per_run = int(args.gpus_per_run)
        self.slots: List[Optional[str]] = []
        if per_run > 0 and len(gpus) >= per_run and any(j.needs_gpu for j in batch.jobs):
            self.slots = [",".join(gpus[i : i + per_run]) for i in range(0, len(gpus) - per_run + 1, per_run)]
        self.parallel = args.parallel or max(1, len(self.slots))
        if self.slots:
            self.parallel = min(self.parallel, len(self.slots))
        self.threads = args.cpus_per_run or max(1, cpu_count() // self.parallel)

    def run(self, todo: List[Job]) -> None:
        b = self.batch
        where_many = f" on {len(self.slots)} GPU slot(s)" if self.slots else " on the CPU"
        say(f"running {len(todo)} job(s), {self.parallel} at a time{where_many}, {self.threads} CPU thread(s) each")
        queue = list(todo)
        free = list(self.slots) if self.slots else [None] * self.parallel
        running: List[tuple[Job, Attempt, Optional[str], float]] = []  # job, attempt, slot, start of its first attempt
        first_start: Dict[str, float] = {}
        signalled = 0
        while queue or running:
            if b.halted:
                queue.clear()
            if b.stop.signum is not None:
                queue.clear()
                if b.stop.count > signalled:
                    sig = signal.SIGKILL if b.stop.count > 1 else signal.SIGTERM
                    for _, att, _, _ in running:
                        att.signal(sig)
                    signalled = b.stop.count
            while queue and free and b.stop.signum is None:
                job, slot = queue.pop(0), free.pop(0)
                env = thread_env(self.threads)
                if job.needs_gpu and slot is not None:
                    env["CUDA_VISIBLE_DEVICES"] = slot
                elif not job.needs_gpu and self.slots:
                    env["CUDA_VISIBLE_DEVICES"] = ""
                first_start.setdefault(job.name, time.monotonic())
                att = Attempt(job, b.batch_id, env)
                running.append((job, att, slot, first_start[job.name]))
                b.progress.started(job, att.number, f" on GPU {slot}" if slot is not None and job.needs_gpu else "")
            still = []
            for job, att, slot, t0 in running:
                rc = att.poll()
                if rc is None:
                    still.append((job, att, slot, t0))
                    continue
                free.append(slot)
                lost = rc < 0 or rc in RETRY_SIGNALS
                if lost and b.stop.signum is None and att.number <= b.args.max_retries:
                    say(f"{job.name}: {att.error(rc)}; retrying ({att.number} of {b.args.max_retries} retries)")
                    queue.insert(0, job)
                    continue
                rec = job_outcome(job, rc, att.error(rc), att.number, time.monotonic() - t0)
                b.record(job, rec)
                b.progress.finished(job, rec)
            running = still
            if queue or running:
                time.sleep(POLL_S)
