"""``dreamperp batch``: a prompt list × seeds, each job an ordinary ``dreamperp train`` run (docs/design.md §8).

Layout of a batch folder (``--out``)::

    batch.jsonl          one line per job: prompt, seed, overrides, status, attempts, seconds, metrics, paths
    summary.csv          the same as a table
    contact-sheet.png    one row per run: front / side / back / overhead of its final validation grid
    runs/<job>/          the run folders (config.yaml, ckpts/, val/, export/, metrics.jsonl)
    jobs/<job>.log       the job's ``dreamperp train`` output, every attempt appended
    jobs/<job>.json      the job's last result (a finished job is not started again)
    jobs/<job>.attempts.jsonl   one line per attempt (batch id, host, pids)

A job's name is ``<prompt-slug>-s<seed>-<hash>``, the hash over its resolved config (less the keys
in :data:`dreamperp.config.NOT_PART_OF_A_RUN`), so the same batch run again finds its runs again:
finished ones are skipped, interrupted ones resume from their last checkpoint (``train --run-dir``),
and a higher ``trainer.max_steps`` continues them all.

Each job is its own process (crash and GPU-memory isolation), with ``CUDA_VISIBLE_DEVICES`` of its
GPU slot (local engine) or of Ray's assignment (``--engine ray``), and with ``OMP_NUM_THREADS`` set
so parallel jobs share the CPU cores instead of oversubscribing them. A job process dies with its
parent (``PR_SET_PDEATHSIG`` on Linux): it receives SIGTERM, saves a checkpoint and stops, so a
killed driver or Ray worker never leaves an orphan training in the run folder.

Exit codes: 0 every job finished; 1 some job failed; 2 bad input (nothing started, nothing
written); 130 / 143 interrupted by SIGINT / SIGTERM (running jobs saved a checkpoint).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import inspect
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence

from dreamperp.config import NOT_PART_OF_A_RUN, VIEW_NAMES, Config, flat_dict, load_config
from dreamperp.errors import DreamperpError, UsageError, first_line
from dreamperp.files import atomic_write_bytes, atomic_write_text, pid_lock
from dreamperp.images import labeled_grid, png_bytes
from dreamperp.runs.folder import LOCK_NAME, slugify
from dreamperp.signals import StopSignals

CONNECT_TIMEOUT_S = 20.0  # reaching a Ray cluster: TCP check, then ray.init itself
LOCK_WAIT_S = 120.0  # a run still held by a dying process (saving its last checkpoint)
POLL_S = 0.2
VAL_GRID_ROWS = 3  # a validation grid (val/step-N.png): rows rgb, normal, opacity; columns VIEW_NAMES
VAL_GRID_GAP = inspect.signature(labeled_grid).parameters["gap"].default
RETRY_SIGNALS = (130, 143)  # a job stopped by SIGINT/SIGTERM that the batch did not ask for: a lost worker

RAY_MISSING = "the ray engine needs Ray: pip install 'dreamperp[ray]' (or pip install ray)"


def _say(message: str) -> None:
    print(f"dreamperp batch: {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------ prompt lists
@dataclass
class PromptItem:
    """One entry of a prompt file; ``line`` is 1-based."""

    prompt: str
    overrides: List[str]
    line: int


def _override(key: str, value: Any) -> str:
    """``key=value`` in the override grammar; JSON is valid YAML flow, so strings, lists and
    mappings survive the trip through ``dreamperp train``'s parser unchanged."""
    return f"{key}={json.dumps(value)}"


def _item_overrides(raw: Any, where: str) -> List[str]:
    if raw is None:
        return []
    if isinstance(raw, dict):
        return [_override(str(k), v) for k, v in raw.items()]
    if isinstance(raw, list) and all(isinstance(x, str) and "=" in x for x in raw):
        return list(raw)
    raise UsageError(f"{where}: 'overrides' must be a mapping (key: value) or a list of key=value strings, got {raw!r}")


def read_prompts(path: str | os.PathLike) -> List[PromptItem]:
    """A ``.txt`` list (one prompt a line; ``#`` comments and blank lines skipped) or a ``.yaml``/``.yml``
    list of prompts or ``{prompt: ..., overrides: {key: value}}`` mappings. UsageError naming the line."""
    p = Path(path)
    if p.is_dir():
        raise UsageError(f"prompt file '{p}' is a folder: pass a .txt or .yaml prompt list (e.g. assets/prompts/gallery.txt)")
    if not p.is_file():
        raise UsageError(f"prompt file '{p}' does not exist (e.g. assets/prompts/gallery.txt)")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(f"cannot read prompt file '{p}': {first_line(err)}") from None
    items: List[PromptItem] = []
    if p.suffix.lower() in (".yaml", ".yml"):
        import yaml

        try:
            node = yaml.compose(text, Loader=yaml.SafeLoader)
            data = yaml.safe_load(text)
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" line {mark.line + 1}" if mark is not None else ""
            problem = getattr(err, "problem", None) or first_line(err)
            raise UsageError(f"prompt file '{p}'{where}: not valid YAML: {problem}") from None
        if data is None:
            data = []
        if not isinstance(data, list):
            raise UsageError(f"prompt file '{p}' must be a YAML list (lines starting with '- '), not a {type(data).__name__}")
        for raw, sub in zip(data, node.value):
            line = sub.start_mark.line + 1
            where = f"prompt file '{p}' line {line}"
            if isinstance(raw, str):
                prompt, overrides = raw, []
            elif isinstance(raw, dict):
                unknown = sorted(set(map(str, raw)) - {"prompt", "overrides"})
                if unknown:
                    raise UsageError(f"{where}: unknown field '{unknown[0]}' (an item has 'prompt' and optional 'overrides')")
                prompt = raw.get("prompt")
                if not isinstance(prompt, str):
                    raise UsageError(f"{where}: an item needs 'prompt: <text>', got {raw!r}")
                overrides = _item_overrides(raw.get("overrides"), where)
            else:
                raise UsageError(f"{where}: an item must be a prompt or a mapping with 'prompt' (and 'overrides'), got {raw!r}")
            if not prompt.strip():
                raise UsageError(f"{where}: the prompt is empty")
            items.append(PromptItem(prompt.strip(), overrides, line))
    else:
        for i, raw_line in enumerate(text.splitlines(), start=1):
            s = raw_line.strip()
            if s and not s.startswith("#"):
                items.append(PromptItem(s, [], i))
    if not items:
        raise UsageError(f"prompt file '{p}' holds no prompts (one a line; '#' starts a comment)")
    return items


def parse_seeds(text: Optional[str]) -> Optional[List[int]]:
    """``"0,1,2"`` → ``[0, 1, 2]``; UsageError for anything else."""
    if text is None:
        return None
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise UsageError(f"--seeds must be comma-separated whole numbers, e.g. 0,1,2 (got '{text}')") from None
    if not seeds or any(s < 0 for s in seeds):
        raise UsageError(f"--seeds must be comma-separated whole numbers >= 0, e.g. 0,1,2 (got '{text}')")
    if len(set(seeds)) != len(seeds):
        raise UsageError(f"--seeds repeats a seed (got '{text}')")
    return seeds


# -------------------------------------------------------------------------------------------- jobs
@dataclass
class Job:
    """One (prompt, seed): an ordinary run in ``run_dir``. Plain data, so it can travel to Ray workers."""

    index: int
    name: str
    prompt: str
    seed: int
    line: int
    overrides: List[str]  # the batch's and the prompt item's overrides
    argv: List[str]  # `dreamperp train` arguments after the subcommand
    run_dir: str
    log_path: str
    attempts_path: str
    max_steps: int
    val_size: int
    needs_gpu: bool
    export_formats: List[str] = field(default_factory=list)
    video_file: Optional[str] = None
    cwd: str = ""  # the driver's folder: relative paths in the overrides mean the same on every node


def job_key(cfg: Config) -> str:
    """8 hex digits identifying what a run computes (its resolved config, less NOT_PART_OF_A_RUN)."""
    flat = {k: v for k, v in flat_dict(cfg).items() if k not in NOT_PART_OF_A_RUN}
    return hashlib.sha256(json.dumps(flat, sort_keys=True, default=str).encode()).hexdigest()[:8]


def plan_jobs(config: str, prompts_file: str, overrides: Sequence[str], seeds: Optional[List[int]], out: Path) -> List[Job]:
    """Every job of the batch, each config loaded and validated; nothing is written. UsageError naming
    the prompt file's line for a job whose config is bad."""
    items = read_prompts(prompts_file)
    config_abs = str(Path(config).expanduser().resolve())
    jobs: List[Job] = []
    seen: Dict[str, int] = {}
    for item in items:
        for seed in seeds if seeds is not None else [None]:
            extra = [*overrides, *item.overrides, _override("prompt", item.prompt)]
            if seed is not None:
                extra.append(f"seed={seed}")
            extra.append("trainer.progress=false")  # logs are files: one line per checkpoint, no bars
            try:
                cfg = load_config(config_abs, extra)
            except DreamperpError as err:
                raise UsageError(f"prompt file '{prompts_file}' line {item.line} ({item.prompt!r}): {err}") from None
            name = f"{slugify(item.prompt, 40)}-s{cfg.seed}-{job_key(cfg)}"
            if name in seen:
                raise UsageError(
                    f"prompt file '{prompts_file}' line {item.line} repeats line {seen[name]} (same prompt, seed and overrides): remove one"
                )
            seen[name] = item.line
            run_dir = out / "runs" / name
            jobs.append(Job(
                index=len(jobs), name=name, prompt=item.prompt, seed=cfg.seed, line=item.line, overrides=[*overrides, *item.overrides],
                argv=[config_abs, *extra, "--run-dir", str(run_dir)], run_dir=str(run_dir),
                log_path=str(out / "jobs" / f"{name}.log"), attempts_path=str(out / "jobs" / f"{name}.attempts.jsonl"),
                max_steps=cfg.trainer.max_steps, val_size=cfg.trainer.val_size, needs_gpu=cfg.device != "cpu",
                export_formats=list(cfg.export.formats) if cfg.trainer.video_at_end else [],
                video_file=f"turntable.{cfg.export.video_format}" if cfg.trainer.video_at_end else None, cwd=os.getcwd(),
            ))
    return jobs


# ------------------------------------------------------------------------------- one job attempt
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
            log.write(f"=== attempt {self.number} of batch {batch_id} on {socket.gethostname()} at {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode())
            log.flush()
            full_env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "dreamperp", "train", *job.argv], stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=full_env, start_new_session=True, preexec_fn=_die_with_parent(), cwd=job.cwd if os.path.isdir(job.cwd) else None,
            )
        _append_line(Path(job.attempts_path), {
            "batch": batch_id, "attempt": self.number, "host": socket.gethostname(), "pid": os.getpid(), "train_pid": self.proc.pid,
            "time": time.time(), "cuda_visible_devices": full_env.get("CUDA_VISIBLE_DEVICES"),
        })

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
                return ln[len("dreamperp train: error: "):]
        return (lines[-1][:300] if lines else f"exited with code {rc}") + f" (exit code {rc}; see {self.job.log_path})"


def job_outcome(job: Job, rc: int, error: Optional[str], attempts: int, seconds: float) -> Dict[str, Any]:
    """The job's record for batch.jsonl: status, final metrics and the paths of its mesh and video."""
    run = Path(job.run_dir)
    metrics: Dict[str, Any] = {}
    path = run / "metrics.jsonl"
    if path.is_file():
        for line in reversed(path.read_text(encoding="utf-8").splitlines()):
            with contextlib.suppress(ValueError):
                metrics = json.loads(line)
                break
    export = run / "export"
    meshes = [str(export / f"mesh.{fmt}") for fmt in job.export_formats if (export / f"mesh.{fmt}").is_file()]
    video = export / job.video_file if job.video_file else None
    status = "finished" if rc == 0 else ("interrupted" if rc in RETRY_SIGNALS else "failed")
    return {
        "job": job.name, "line": job.line, "prompt": job.prompt, "seed": job.seed, "overrides": job.overrides, "status": status,
        "exit_code": rc, "error": error, "attempts": attempts, "seconds": round(seconds, 2), "max_steps": job.max_steps,
        "final_metrics": metrics, "mesh": meshes[0] if meshes else None, "meshes": meshes,
        "video": str(video) if video is not None and video.is_file() else None, "run_dir": job.run_dir, "log": job.log_path,
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


# ------------------------------------------------------------------------------------ the driver
class Progress:
    """Start/finish lines with elapsed time and the running count."""

    def __init__(self, total: int):
        self.total, self.done, self.failed, self.interrupted = total, 0, 0, 0
        self.t0 = time.monotonic()

    def _clock(self) -> str:
        s = int(time.monotonic() - self.t0)
        return f"[{s // 3600:d}:{s // 60 % 60:02d}:{s % 60:02d}]"

    def count(self) -> str:
        stopped = f", {self.interrupted} interrupted" if self.interrupted else ""
        return f"{self.done}/{self.total} done, {self.failed} failed{stopped}"

    def started(self, job: Job, attempt: int, where: str = "") -> None:
        again = f", attempt {attempt}" if attempt > 1 else ""
        _say(f"{self._clock()} started {job.name}{again}{where}; {self.count()}")

    def finished(self, job: Job, rec: Dict[str, Any]) -> None:
        if rec["status"] == "finished":
            self.done += 1
            _say(f"{self._clock()} finished {job.name} in {rec['seconds']:.1f} s; {self.count()}")
        else:
            self.failed += rec["status"] == "failed"
            self.interrupted += rec["status"] == "interrupted"
            _say(f"{self._clock()} {rec['status']} {job.name} after {rec['seconds']:.1f} s: {rec['error']}; {self.count()}")


class BatchStop(StopSignals):
    """SIGINT/SIGTERM to the driver: stop starting jobs and let the running ones save (a second SIGINT kills them)."""

    def on_signal(self, signum: int, first: bool) -> None:
        if first:
            _say(f"{signal.Signals(signum).name}: stopping; running jobs save a checkpoint (run the batch again to resume)")


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


class Batch:
    """Runs the jobs of one batch folder and writes its records."""

    def __init__(self, jobs: List[Job], out: Path, args: argparse.Namespace, ray: Any = None):
        self.jobs, self.out, self.args, self.ray = jobs, out, args, ray
        self.batch_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        self.records: Dict[str, Dict[str, Any]] = {}
        self.progress = Progress(len(jobs))
        self.stop = BatchStop()

    # ------------------------------------------------------------------------------- records
    def _marker(self, job: Job) -> Path:
        return self.out / "jobs" / f"{job.name}.json"

    def previous(self, job: Job) -> Optional[Dict[str, Any]]:
        """The record of an earlier batch invocation that finished this job (None: run it)."""
        path = self._marker(job)
        try:
            rec = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        finished = rec.get("status") == "finished" and int(rec.get("max_steps", -1)) >= job.max_steps
        return rec if finished and (Path(job.run_dir) / "config.yaml").is_file() else None

    def record(self, job: Job, rec: Dict[str, Any]) -> None:
        self.records[job.name] = rec
        if rec["status"] != "interrupted":
            atomic_write_text(self._marker(job), json.dumps(rec, indent=1) + "\n")
        self.write_jsonl()

    def write_jsonl(self) -> None:
        lines = []
        for job in self.jobs:
            rec = self.records.get(job.name) or {
                "job": job.name, "line": job.line, "prompt": job.prompt, "seed": job.seed, "overrides": job.overrides, "status": "pending",
                "run_dir": job.run_dir, "log": job.log_path,
            }
            lines.append(json.dumps(rec))
        atomic_write_text(self.out / "batch.jsonl", "".join(line + "\n" for line in lines))

    # ------------------------------------------------------------------------------- engines
    def run(self) -> int:
        (self.out / "runs").mkdir(parents=True, exist_ok=True)
        (self.out / "jobs").mkdir(exist_ok=True)
        todo = []
        for job in self.jobs:
            rec = self.previous(job)
            if rec is not None:
                self.records[job.name] = {**rec, "reused": True}
                self.progress.done += 1
            else:
                todo.append(job)
        if len(todo) < len(self.jobs):
            _say(f"{len(self.jobs) - len(todo)} of {len(self.jobs)} jobs already finished in {self.out}; not starting them again")
        self.write_jsonl()
        with self.stop:
            if todo:
                if self.ray is not None:
                    RayEngine(self, self.ray).run(todo)
                else:
                    LocalEngine(self).run(todo)
        self.write_jsonl()
        write_summary(self.out / "summary.csv", [self.records.get(j.name) for j in self.jobs])
        write_contact_sheet(self.out / "contact-sheet.png", self.jobs, self.records)
        _say(f"{self.progress.count()}; {self.out / 'batch.jsonl'}, {self.out / 'summary.csv'}, {self.out / 'contact-sheet.png'}")
        if self.stop.signum is not None:
            return 128 + int(self.stop.signum)
        return 0 if all(self.records.get(j.name, {}).get("status") == "finished" for j in self.jobs) else 1


class LocalEngine:
    """A pool of job processes on this machine: one GPU slot each (``--gpus-per-run`` GPUs), or ``--parallel`` CPU runs."""

    def __init__(self, batch: Batch):
        self.batch = batch
        args = batch.args
        gpus = detect_gpus()
        per_run = int(args.gpus_per_run)
        self.slots: List[Optional[str]] = []
        if per_run > 0 and len(gpus) >= per_run and any(j.needs_gpu for j in batch.jobs):
            self.slots = [",".join(gpus[i:i + per_run]) for i in range(0, len(gpus) - per_run + 1, per_run)]
        self.parallel = args.parallel or max(1, len(self.slots))
        if self.slots:
            self.parallel = min(self.parallel, len(self.slots))
        self.threads = args.cpus_per_run or max(1, cpu_count() // self.parallel)

    def run(self, todo: List[Job]) -> None:
        b = self.batch
        where_many = f" on {len(self.slots)} GPU slot(s)" if self.slots else " on the CPU"
        _say(f"running {len(todo)} job(s), {self.parallel} at a time{where_many}, {self.threads} CPU thread(s) each")
        queue = list(todo)
        free = list(self.slots) if self.slots else [None] * self.parallel
        running: List[tuple[Job, Attempt, Optional[str], float]] = []  # job, attempt, slot, start of its first attempt
        first_start: Dict[str, float] = {}
        signalled = 0
        while queue or running:
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
                    _say(f"{job.name}: {att.error(rc)}; retrying ({att.number} of {b.args.max_retries} retries)")
                    queue.insert(0, job)
                    continue
                rec = job_outcome(job, rc, att.error(rc), att.number, time.monotonic() - t0)
                b.record(job, rec)
                b.progress.finished(job, rec)
            running = still
            if queue or running:
                time.sleep(POLL_S)


# ------------------------------------------------------------------------------------------- Ray
def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise UsageError(RAY_MISSING) from None
    return ray


def check_reachable(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """UsageError unless a TCP connection to ``host:port`` (or ``ray://host:port``) opens within ``timeout``."""
    if address == "auto":
        return
    hostport = address[len("ray://"):] if address.startswith("ray://") else address
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise UsageError(f"--address '{address}': use auto, HOST:PORT (e.g. 10.0.0.1:6379) or ray://HOST:PORT")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as err:
        reason = "timed out" if isinstance(err, socket.timeout) else (err.strerror or first_line(err))
        raise UsageError(
            f"cannot reach the Ray cluster at {address}: {reason} (start it with 'ray start --head' on that machine, or check the address and port)"
        ) from None


class RayEngine:
    """One Ray task per job (``num_gpus=--gpus-per-run``, ``num_cpus=--cpus-per-run``), retried on worker or node loss."""

    def __init__(self, batch: Batch, ray: Any):
        self.batch = batch
        self.ray = ray

    @staticmethod
    def connect(address: Optional[str]) -> Any:
        """ray.init: the cluster at ``address``, or a new local instance; UsageError within a bounded time.
        Ray's own console output (C++ retry warnings, a line per second while it waits) goes to a temp
        file meanwhile, so a failure is one line; its authentication complaint becomes a hint."""
        ray = import_ray()
        if address is not None:
            check_reachable(address)
        where = address or "a new local instance"
        done = threading.Event()
        saved = os.dup(2)

        def give_up() -> None:  # ray.init can wait on a half-open cluster for minutes
            if not done.wait(CONNECT_TIMEOUT_S * 2):
                os.write(saved, f"dreamperp batch: error: no answer from the Ray cluster at {where} within {CONNECT_TIMEOUT_S * 2:.0f} s\n".encode())
                os._exit(2)

        threading.Thread(target=give_up, daemon=True).start()
        import logging
        import tempfile

        with tempfile.TemporaryFile() as captured:
            sys.stderr.flush()
            os.dup2(captured.fileno(), 2)
            try:
                kwargs: Dict[str, Any] = {"log_to_driver": False, "logging_level": logging.WARNING, "configure_logging": True}
                if address is None:
                    kwargs["include_dashboard"] = False
                ray.init(address=address or "local", **kwargs)  # "local": a new instance, never someone's running one
            except Exception as err:  # ConnectionError, RuntimeError, ValueError: Ray's own, all one line here
                chain, cause = [], err
                while cause is not None:
                    chain.append(str(cause))
                    cause = cause.__cause__ or cause.__context__
                captured.seek(0)
                text = " ".join(chain) + captured.read().decode(errors="replace")
                hint = ""
                if "InvalidAuthToken" in text or "AuthenticationError" in text:
                    hint = (" (the cluster uses token authentication: set RAY_AUTH_MODE=token and give this machine the cluster's "
                            "token in ~/.ray/auth_token or RAY_AUTH_TOKEN)")
                raise UsageError(f"cannot connect to the Ray cluster at {where}: {first_line(err)}{hint}") from None
            finally:
                sys.stderr.flush()
                os.dup2(saved, 2)
                done.set()
                os.close(saved)
        return ray

    @staticmethod
    def check_resources(ray: Any, jobs: Sequence[Job], gpus_per_run: float) -> None:
        """UsageError when GPU jobs could never be scheduled (Ray would wait for GPUs forever)."""
        gpus = float(ray.cluster_resources().get("GPU", 0))
        if any(j.needs_gpu for j in jobs) and gpus_per_run > gpus:
            raise UsageError(
                f"the Ray cluster has {gpus:g} GPU(s), fewer than --gpus-per-run {gpus_per_run:g} "
                f"(pass --gpus-per-run 0, or device=cpu, to train on CPUs)"
            )

    def run(self, todo: List[Job]) -> None:
        ray, b, args = self.ray, self.batch, self.batch.args
        gpus = float(ray.cluster_resources().get("GPU", 0))
        per_run = args.gpus_per_run if any(j.needs_gpu for j in todo) else 0
        cpus = args.cpus_per_run or 1
        env = thread_env(cpus)
        remote = ray.remote(run_job)
        options = dict(num_cpus=cpus, max_retries=args.max_retries, retry_exceptions=[JobProcessLost])
        gpu_task, cpu_task = remote.options(num_gpus=per_run, **options), remote.options(num_gpus=0, **options)
        limit = args.parallel or len(todo)
        _say(f"running {len(todo)} job(s) on Ray ({ray.cluster_resources().get('CPU', 0):g} CPUs, {gpus:g} GPUs), "
             f"{per_run:g} GPU(s) and {cpus} CPU(s) per job" + (f", at most {limit} at a time" if args.parallel else ""))
        queue = list(todo)
        in_flight: Dict[Any, tuple[Job, float]] = {}
        seen_attempts: Dict[str, int] = {}
        cancelled = False
        while queue or in_flight:
            if b.stop.signum is not None and not cancelled:
                queue.clear()
                for ref in list(in_flight):
                    ray.cancel(ref)  # KeyboardInterrupt in the task: its job process saves and stops
                cancelled = True
            while queue and len(in_flight) < limit and b.stop.signum is None:
                job = queue.pop(0)
                fn = gpu_task if job.needs_gpu else cpu_task
                in_flight[fn.remote(asdict(job), b.batch_id, env)] = (job, time.monotonic())
            for job, _ in in_flight.values():  # start lines from the attempts each task records
                n = count_attempts(job, b.batch_id)
                if n > seen_attempts.get(job.name, 0):
                    seen_attempts[job.name] = n
                    b.progress.started(job, n)
            ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=0.5)
            for ref in ready:
                job, t0 = in_flight.pop(ref)
                try:
                    rec = ray.get(ref)
                except Exception as err:  # retries used up, cancelled, or the node is gone
                    cause = getattr(err, "cause", None)
                    message = first_line(cause) if isinstance(cause, JobProcessLost) else first_line(err)
                    attempts = count_attempts(job, b.batch_id)
                    rc = 130 if b.stop.signum is not None else 1
                    rec = job_outcome(job, rc, f"{message} (after {attempts} attempt(s))", attempts, time.monotonic() - t0)
                b.record(job, rec)
                b.progress.finished(job, rec)


# ----------------------------------------------------------------------------------- outputs
SUMMARY_FIELDS = ("job", "prompt", "seed", "status", "attempts", "seconds", "step", "loss", "mesh", "video", "run_dir", "error")


def write_summary(path: Path, records: Sequence[Optional[Dict[str, Any]]]) -> None:
    """summary.csv: one row per job (missing records: pending)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=SUMMARY_FIELDS, extrasaction="ignore")
    writer.writeheader()
    for rec in records:
        if rec is None:
            continue
        m = rec.get("final_metrics") or {}
        writer.writerow({**rec, "step": m.get("step"), "loss": m.get("loss")})
    atomic_write_text(path, buf.getvalue())


def val_top_row(grid_path: Path, val_size: int) -> Optional[Any]:
    """The rgb row (front, side, back, overhead) of a validation grid as a PIL image, or None.
    The grid's label margins are whatever is left around the 3 x 4 tiles of ``val_size`` pixels."""
    from PIL import Image

    try:
        with Image.open(grid_path) as im:
            im = im.convert("RGB")
            s, g = val_size, VAL_GRID_GAP
            left = im.width - (len(VIEW_NAMES) * s + (len(VIEW_NAMES) - 1) * g)
            top = im.height - (VAL_GRID_ROWS * s + (VAL_GRID_ROWS - 1) * g)
            if left < 0 or top < 0:
                return None
            return im.crop((left, top, im.width, top + s))
    except OSError:
        return None


def _newest_val_grid(run_dir: Path) -> Optional[Path]:
    grids = sorted((run_dir / "val").glob("step-*.png")) if (run_dir / "val").is_dir() else []
    return grids[-1] if grids else None


def write_contact_sheet(path: Path, jobs: Sequence[Job], records: Dict[str, Dict[str, Any]], tile: int = 0) -> Path:
    """contact-sheet.png: a header of view names, then one row per job: its label, then the four views
    of its newest validation grid (the final state of a finished run), grey tiles when there is none."""
    from PIL import Image, ImageDraw

    if not tile:
        tile = max(64, min(192, max((j.val_size for j in jobs), default=64)))
    label_w, header, gap = 240, 16, 2
    n = len(VIEW_NAMES)
    width = label_w + n * tile + (n - 1) * gap
    height = header + len(jobs) * (tile + gap)
    sheet = Image.new("RGB", (width, height), (40, 40, 40))
    draw = ImageDraw.Draw(sheet)
    for c, name in enumerate(VIEW_NAMES):
        draw.text((label_w + c * (tile + gap) + 2, 2), name, fill=(230, 230, 230))
    for r, job in enumerate(jobs):
        y = header + r * (tile + gap)
        rec = records.get(job.name) or {}
        grid = _newest_val_grid(Path(job.run_dir))
        row = val_top_row(grid, job.val_size) if grid is not None else None
        if row is not None:
            row = row.resize((n * job.val_size + (n - 1) * VAL_GRID_GAP, job.val_size))
            for c in range(n):
                x0 = c * (job.val_size + VAL_GRID_GAP)
                sheet.paste(row.crop((x0, 0, x0 + job.val_size, job.val_size)).resize((tile, tile), Image.NEAREST), (label_w + c * (tile + gap), y))
        else:
            for c in range(n):
                x = label_w + c * (tile + gap)
                draw.rectangle((x, y, x + tile - 1, y + tile - 1), fill=(70, 70, 70))
        status = rec.get("status", "pending")
        text = [job.prompt[i:i + 38] for i in range(0, min(len(job.prompt), 114), 38)]
        text += [f"seed {job.seed}  {status}"]
        step = (rec.get("final_metrics") or {}).get("step")
        if step is not None:
            text[-1] += f"  step {step}"
        colour = (230, 230, 230) if status == "finished" else (255, 140, 120)
        for i, line in enumerate(text):
            draw.text((4, y + 2 + 12 * i), line, fill=colour)
    import numpy as np

    return atomic_write_bytes(path, png_bytes(np.asarray(sheet)))


# ---------------------------------------------------------------------------------- the command
@contextlib.contextmanager
def batch_lock(out: Path) -> Iterator[None]:
    """One driver per batch folder at a time (the OS drops the lock when the driver dies)."""
    def busy(owner: str) -> str:
        return f"batch folder '{out}' is being run by another 'dreamperp batch' (pid {owner}); wait for it or stop it first"

    with pid_lock(out / ".batch.lock", busy):
        yield


def default_out(config: str, prompts: str, overrides: Sequence[str]) -> Path:
    """``<output_dir>/batch-<prompt file name>``: the same command finds the same batch again."""
    cfg = load_config(config, list(overrides), require_prompt=False)
    return Path(cfg.output_dir).expanduser() / f"batch-{slugify(Path(prompts).stem)}"


def batch_command(args: argparse.Namespace) -> int:
    """``dreamperp batch CONFIG PROMPTS [key=value ...] [--seeds ..] [--engine local|ray] ...``."""
    if args.engine == "ray":
        import_ray()
        if args.address is not None:
            check_reachable(args.address)
    elif args.address is not None:
        raise UsageError("--address only applies with --engine ray")
    for flag, value, minimum in (("--parallel", args.parallel, 1), ("--cpus-per-run", args.cpus_per_run, 1), ("--max-retries", args.max_retries, 0)):
        if value is not None and value < minimum:
            raise UsageError(f"{flag} must be >= {minimum}, got {value}")
    if args.gpus_per_run < 0:
        raise UsageError(f"--gpus-per-run must be >= 0, got {args.gpus_per_run:g}")
    if args.engine == "local" and args.gpus_per_run != int(args.gpus_per_run):
        raise UsageError(f"--gpus-per-run {args.gpus_per_run:g}: the local engine gives whole GPUs to a run (fractions need --engine ray)")
    overrides = list(args.overrides or [])
    seeds = parse_seeds(args.seeds)
    out = Path(args.out).expanduser() if args.out else default_out(args.config, args.prompts, overrides)
    out = out.resolve()
    jobs = plan_jobs(args.config, args.prompts, overrides, seeds, out)  # every config checked before anything starts
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out '{out}' is a file, not a folder")
    ray = RayEngine.connect(args.address) if args.engine == "ray" else None  # before anything is written
    try:
        if ray is not None:
            RayEngine.check_resources(ray, jobs, args.gpus_per_run)
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise UsageError(f"cannot create the batch folder '{out}': {err.strerror}") from None
        _say(f"batch folder {out}: {len(jobs)} job(s)")
        with batch_lock(out):
            return Batch(jobs, out, args, ray).run()
    finally:
        if ray is not None:
            ray.shutdown()  # a local instance stops with it; a cluster keeps running
