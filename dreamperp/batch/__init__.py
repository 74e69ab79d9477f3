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

The package, one module per job: :mod:`~dreamperp.batch.prompts` (prompt files, seeds),
:mod:`~dreamperp.batch.jobs` (planning and job names), :mod:`~dreamperp.batch.process` (one
supervised ``dreamperp train`` process per attempt), :mod:`~dreamperp.batch.local` and
:mod:`~dreamperp.batch.ray_engine` (the engines), :mod:`~dreamperp.batch.reports` (progress,
CSV tables, contact sheet) and :mod:`~dreamperp.batch.driver` (the driver and the command).

A tool can run its own jobs in its own folder layout: :func:`make_job` per job, then
:meth:`Batch.run_jobs` with :meth:`Batch.record` overridden (``tools/bench_janus.py`` does).
"""

from dreamperp.batch.driver import Batch, BatchStop, batch_command, batch_lock, default_out
from dreamperp.batch.jobs import Job, job_key, make_job, plan_jobs
from dreamperp.batch.local import LocalEngine, cpu_count, detect_gpus, thread_env
from dreamperp.batch.process import Attempt, JobProcessLost, job_outcome, run_job
from dreamperp.batch.prompts import PromptItem, parse_seeds, read_prompts
from dreamperp.batch.ray_engine import RayEngine, check_reachable, import_ray
from dreamperp.batch.reports import Progress, write_contact_sheet, write_csv, write_summary

__all__ = [
    "Attempt",
    "Batch",
    "BatchStop",
    "Job",
    "JobProcessLost",
    "LocalEngine",
    "Progress",
    "PromptItem",
    "RayEngine",
    "batch_command",
    "batch_lock",
    "check_reachable",
    "cpu_count",
    "default_out",
    "detect_gpus",
    "import_ray",
    "job_key",
    "job_outcome",
    "make_job",
    "parse_seeds",
    "plan_jobs",
    "read_prompts",
    "run_job",
    "thread_env",
    "write_contact_sheet",
    "write_csv",
    "write_summary",
]
