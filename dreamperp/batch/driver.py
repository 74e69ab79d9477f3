"""The batch driver and ``dreamperp batch``: check every job, then run the pending ones on an engine
and write the batch's records (docs/design.md §8)."""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import time
import uuid
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence

from dreamperp.batch.jobs import JOBS_DIR, RUNS_DIR, Job, plan_jobs
from dreamperp.batch.local import LocalEngine
from dreamperp.batch.prompts import parse_seeds
from dreamperp.batch.ray_engine import RayEngine, check_reachable, import_ray
from dreamperp.batch.reports import Progress, say, write_contact_sheet, write_summary
from dreamperp.config import load_config
from dreamperp.errors import UsageError
from dreamperp.files import atomic_write_text, pid_lock
from dreamperp.runs.folder import RunDir, slugify
from dreamperp.signals import StopSignals


class BatchStop(StopSignals):
    """SIGINT/SIGTERM to the driver: stop starting jobs and let the running ones save (a second SIGINT kills them)."""

    def on_signal(self, signum: int, first: bool) -> None:
        if first:
            say(
                f"{signal.Signals(signum).name}: stopping; running jobs save a checkpoint (run the batch again to resume)"
            )


class Batch:
    """Runs the jobs of one batch folder and writes its records.

    ``args``: the engine's settings (``parallel``, ``cpus_per_run``, ``gpus_per_run``, ``max_retries``, as
    ``dreamperp batch`` parses them). Another tool runs its own jobs through :meth:`run_jobs` and
    overrides :meth:`record`, which the engine calls as each job ends."""

    def __init__(self, jobs: List[Job], out: Path, args: argparse.Namespace, ray: Any = None):
        self.jobs, self.out, self.args, self.ray = jobs, out, args, ray
        self.batch_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        self.records: Dict[str, Dict[str, Any]] = {}
        self.progress = Progress(len(jobs))
        self.stop = BatchStop()
        self.halted = False  # set by halt(): the engines start no further job

    def halt(self) -> None:
        """Start no further job; the running ones go on to their end (unlike a stop signal). Thread-safe."""
        self.halted = True

    # ------------------------------------------------------------------------------- records
    def _marker(self, job: Job) -> Path:
        return self.out / JOBS_DIR / f"{job.name}.json"

    def previous(self, job: Job) -> Optional[Dict[str, Any]]:
        """The record of an earlier batch invocation that finished this job (None: run it)."""
        path = self._marker(job)
        try:
            rec = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        finished = rec.get("status") == "finished" and int(rec.get("max_steps", -1)) >= job.max_steps
        return rec if finished and RunDir(Path(job.run_dir)).config_path.is_file() else None

    def record(self, job: Job, rec: Dict[str, Any]) -> None:
        self.records[job.name] = rec
        if rec["status"] != "interrupted":
            atomic_write_text(self._marker(job), json.dumps(rec, indent=1) + "\n")
        self.write_jsonl()

    def write_jsonl(self) -> None:
        lines = []
        for job in self.jobs:
            rec = self.records.get(job.name) or {
                "job": job.name,
                "line": job.line,
                "prompt": job.prompt,
                "seed": job.seed,
                "overrides": job.overrides,
                "status": "pending",
                "run_dir": job.run_dir,
                "log": job.log_path,
            }
            lines.append(json.dumps(rec))
        atomic_write_text(self.out / "batch.jsonl", "".join(line + "\n" for line in lines))

    # ------------------------------------------------------------------------------- engines
    def run_jobs(self, todo: List[Job]) -> None:
        """Run ``todo`` on the engine, each job's end passed to :meth:`record`; SIGINT/SIGTERM meanwhile
        stop it (``stop.signum``: running jobs save a checkpoint)."""
        with self.stop:
            if todo:
                if self.ray is not None:
                    RayEngine(self, self.ray).run(todo)
                else:
                    LocalEngine(self).run(todo)

    def run(self) -> int:
        (self.out / RUNS_DIR).mkdir(parents=True, exist_ok=True)
        (self.out / JOBS_DIR).mkdir(exist_ok=True)
        todo = []
        for job in self.jobs:
            rec = self.previous(job)
            if rec is not None:
                self.records[job.name] = {**rec, "reused": True}
                self.progress.done += 1
            else:
                todo.append(job)
        if len(todo) < len(self.jobs):
            say(
                f"{len(self.jobs) - len(todo)} of {len(self.jobs)} jobs already finished in {self.out}; not starting them again"
            )
        self.write_jsonl()
        self.run_jobs(todo)
        self.write_jsonl()
        write_summary(self.out / "summary.csv", [self.records.get(j.name) for j in self.jobs])
        write_contact_sheet(self.out / "contact-sheet.png", self.jobs, self.records)
        say(
            f"{self.progress.count()}; {self.out / 'batch.jsonl'}, {self.out / 'summary.csv'}, {self.out / 'contact-sheet.png'}"
        )
        if self.stop.signum is not None:
            return 128 + int(self.stop.signum)
        return 0 if all(self.records.get(j.name, {}).get("status") == "finished" for j in self.jobs) else 1


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
    for flag, value, minimum in (
        ("--parallel", args.parallel, 1),
        ("--cpus-per-run", args.cpus_per_run, 1),
        ("--max-retries", args.max_retries, 0),
    ):
        if value is not None and value < minimum:
            raise UsageError(f"{flag} must be >= {minimum}, got {value}")
    if args.gpus_per_run < 0:
        raise UsageError(f"--gpus-per-run must be >= 0, got {args.gpus_per_run:g}")
    if args.engine == "local" and args.gpus_per_run != int(args.gpus_per_run):
        raise UsageError(
            f"--gpus-per-run {args.gpus_per_run:g}: the local engine gives whole GPUs to a run (fractions need --engine ray)"
        )
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
        say(f"batch folder {out}: {len(jobs)} job(s)")
        with batch_lock(out):
            return Batch(jobs, out, args, ray).run()
    finally:
        if ray is not None:
            ray.shutdown()  # a local instance stops with it; a cluster keeps running
