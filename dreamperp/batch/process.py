"""Process supervision: one ``dreamperp train --run-dir`` process per job attempt, its log, its outcome.

A job process dies with its parent (``PR_SET_PDEATHSIG`` on Linux): it receives SIGTERM, saves a
checkpoint and stops, so a killed driver or Ray worker never leaves an orphan training behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, Optional

from dreamperp.batch.jobs import Job
from dreamperp.runs.folder import LOCK_NAME, RunDir

LOCK_WAIT_S = 120.0  # a run still held by a dying process (saving its last checkpoint)
POLL_S = 0.2
RETRY_SIGNALS = (130, 143)  # a job stopped by SIGINT/SIGTERM that the batch did not ask for: a lost worker


def _die_with_parent() -> Any:
    """A preexec_fn that makes the child receive SIGTERM when its parent dies (Linux), else None.
    libc is looked up here, before the fork: the child only makes one system call."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before the call: nothing would signal us
            os.kill(os.getpid(), signal.SIGTERM)

    return preexec


def _wait_unlocked(run_dir: Path, timeout: float = LOCK_WAIT_S) -> None:
    """Wait while another process holds the run's lock (e.g. a job of a killed driver saving its
    checkpoint after SIGTERM); the train process reports a lock still held after ``timeout``."""
    lock = run_dir / LOCK_NAME
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        return
    deadline = time.monotonic() + timeout
    while lock.is_file() and time.monotonic() < deadline:
        try:
            fd = os.open(lock, os.O_RDWR)
        except OSError:
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except OSError:
            time.sleep(POLL_S)
        finally:
            os.close(fd)


def _append_line(path: Path, record: Dict[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def count_attempts(job: Job, batch_id: str) -> int:
    """Attempts of ``job`` started by the batch invocation ``batch_id``."""
    path = Path(job.attempts_path)
    if not path.is_file():
        return 0
    n = 0
    for line in path.read_text(encoding="utf-8").splitlines():
        with contextlib.suppress(ValueError):
            n += json.loads(line).get("batch") == batch_id
    return n


class Attempt:
    """One ``python -m dreamperp train ... --run-dir`` process of a job, its output appended to the job's log."""

    def __init__(self, job: Job, batch_id: str, env: Dict[str, str]):
        self.job = job
        run_dir = Path(job.run_dir)
        _wait_unlocked(run_dir)
        self.number = count_attempts(job, batch_id) + 1
        log_path = Path(job.log_path)
        self.log_offset = log_path.stat().st_size if log_path.is_file() else 0
        self.started = time.monotonic()
        with open(log_path, "ab") as log:
            log.write(
                f"=== attempt {self.number} of batch {batch_id} on {socket.gethostname()} at {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode()
            )
            log.flush()
            full_env = {**os.environ, **job.env, **env, "PYTHONUNBUFFERED": "1"}
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "dreamperp", "train", *job.argv],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=full_env,
                start_new_session=True,
                preexec_fn=_die_with_parent(),
                cwd=job.cwd if os.path.isdir(job.cwd) else None,
            )
        _append_line(
            Path(job.attempts_path),
            {
                "batch": batch_id,
                "attempt": self.number,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "train_pid": self.proc.pid,
                "time": time.time(),
                "cuda_visible_devices": full_env.get("CUDA_VISIBLE_DEVICES"),
            },
        )

    def poll(self) -> Optional[int]:
        return self.proc.poll()

    def signal(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signum)

    def wait(self) -> int:
        """Wait for the process; an exception here (e.g. a Ray cancel) stops it cleanly first."""
        try:
            return self.proc.wait()
        except BaseException:
            self.signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=60)
            raise

    @property
    def seconds(self) -> float:
        return time.monotonic() - self.started

    def error(self, rc: int) -> Optional[str]:
        """The one-line error of a failed attempt, from its log."""
        if rc == 0:
            return None
        if rc < 0:
            return f"killed by {signal.Signals(-rc).name}"
        if rc in RETRY_SIGNALS:
            return f"stopped by {'SIGINT' if rc == 130 else 'SIGTERM'} after saving a checkpoint (run the batch again to resume)"
        try:
            with open(self.job.log_path, "rb") as f:
                f.seek(self.log_offset)
                lines = [ln.strip() for ln in f.read().decode("utf-8", "replace").splitlines() if ln.strip()]
        except OSError:
            lines = []
        for ln in reversed(lines):
            if ln.startswith("dreamperp train: error: "):
                return ln[len("dreamperp train: error: ") :]
        return (lines[-1][:300] if lines else f"exited with code {rc}") + f" (exit code {rc}; see {self.job.log_path})"


def job_outcome(job: Job, rc: int, error: Optional[str], attempts: int, seconds: float) -> Dict[str, Any]:
    """The job's record for batch.jsonl: status, final metrics and the paths of its mesh and video."""
    run = RunDir(Path(job.run_dir))
    metrics: Dict[str, Any] = {}
    path = run.metrics_path
    if path.is_file():
        for line in reversed(path.read_text(encoding="utf-8").splitlines()):
            with contextlib.suppress(ValueError):
                metrics = json.loads(line)
                break
    export = run.export_dir
    meshes = [str(export / f"mesh.{fmt}") for fmt in job.export_formats if (export / f"mesh.{fmt}").is_file()]
    video = export / job.video_file if job.video_file else None
    status = "finished" if rc == 0 else ("interrupted" if rc in RETRY_SIGNALS else "failed")
    return {
        "job": job.name,
        "line": job.line,
        "prompt": job.prompt,
        "seed": job.seed,
        "overrides": job.overrides,
        "status": status,
        "exit_code": rc,
        "error": error,
        "attempts": attempts,
        "seconds": round(seconds, 2),
        "max_steps": job.max_steps,
        "final_metrics": metrics,
        "mesh": meshes[0] if meshes else None,
        "meshes": meshes,
        "video": str(video) if video is not None and video.is_file() else None,
        "run_dir": job.run_dir,
        "log": job.log_path,
        "host": socket.gethostname(),
    }


class JobProcessLost(Exception):
    """A Ray task's job process died from a signal nobody in the batch sent: Ray retries the task."""


def run_job(job_data: Dict[str, Any], batch_id: str, env: Dict[str, str]) -> Dict[str, Any]:
    """Run one job to its end in this process (the body of a Ray task); returns its batch.jsonl record."""
    job = Job(**job_data)
    started = time.monotonic()
    attempt = Attempt(job, batch_id, env)
    rc = attempt.wait()
    if rc < 0 or rc in RETRY_SIGNALS:
        raise JobProcessLost(f"attempt {attempt.number}: {attempt.error(rc)}")
    return job_outcome(job, rc, attempt.error(rc), attempt.number, time.monotonic() - started)
