"""Planning a batch: one :class:`Job` per (prompt, seed), named by a hash of what it computes (docs/design.md §8)."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from dreamperp.batch.prompts import as_override, read_prompts
from dreamperp.config import NOT_PART_OF_A_RUN, Config, flat_dict, load_config
from dreamperp.errors import DreamperpError, UsageError
from dreamperp.runs.folder import slugify

RUNS_DIR = "runs"  # <batch folder>/runs/<job>/: the jobs' run folders
JOBS_DIR = "jobs"  # <batch folder>/jobs/<job>.log, .json, .attempts.jsonl


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
    env: Dict[str, str] = field(default_factory=dict)  # added to its processes' environment (e.g. PYTHONPATH)


def job_key(cfg: Config) -> str:
    """8 hex digits identifying what a run computes (its resolved config, less NOT_PART_OF_A_RUN)."""
    flat = {k: v for k, v in flat_dict(cfg).items() if k not in NOT_PART_OF_A_RUN}
    return hashlib.sha256(json.dumps(flat, sort_keys=True, default=str).encode()).hexdigest()[:8]


def plan_jobs(
    config: str, prompts_file: str, overrides: Sequence[str], seeds: Optional[List[int]], out: Path
) -> List[Job]:
    """Every job of the batch, each config loaded and validated; nothing is written. UsageError naming
    the prompt file's line for a job whose config is bad."""
    items = read_prompts(prompts_file)
    config_abs = str(Path(config).expanduser().resolve())
    jobs: List[Job] = []
    seen: Dict[str, int] = {}
    for item in items:
        for seed in seeds if seeds is not None else [None]:
            extra = [*overrides, *item.overrides, as_override("prompt", item.prompt)]
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
            jobs.append(
                make_job(
                    cfg,
                    index=len(jobs),
                    name=name,
                    config=config_abs,
                    extra=extra,
                    run_dir=out / RUNS_DIR / name,
                    log_path=out / JOBS_DIR / f"{name}.log",
                    attempts_path=out / JOBS_DIR / f"{name}.attempts.jsonl",
                    prompt=item.prompt,
                    line=item.line,
                    overrides=[*overrides, *item.overrides],
                )
            )
    return jobs


def make_job(
    cfg: Config,
    *,
    index: int,
    name: str,
    config: str,
    extra: Sequence[str],
    run_dir: Path,
    log_path: Path,
    attempts_path: Path,
    prompt: Optional[str] = None,
    line: int = 0,
    overrides: Sequence[str] = (),
    env: Optional[Dict[str, str]] = None,
) -> Job:
    """The job ``dreamperp train CONFIG EXTRA --run-dir RUN_DIR``; ``cfg`` is ``load_config(CONFIG, EXTRA)``,
    loaded (and so checked) by the caller. Its paths are the caller's: a batch folder's
    (:func:`plan_jobs`) or another tool's layout."""
    return Job(
        index=index,
        name=name,
        prompt=cfg.prompt if prompt is None else prompt,
        seed=cfg.seed,
        line=line,
        overrides=list(overrides),
        argv=[config, *extra, "--run-dir", str(run_dir)],
        run_dir=str(run_dir),
        log_path=str(log_path),
        attempts_path=str(attempts_path),
        max_steps=cfg.trainer.max_steps,
        val_size=cfg.trainer.val_size,
        needs_gpu=cfg.device != "cpu",
        export_formats=list(cfg.export.formats) if cfg.trainer.video_at_end else [],
        video_file=f"turntable.{cfg.export.video_format}" if cfg.trainer.video_at_end else None,
        cwd=os.getcwd(),
        env=dict(env or {}),
    )
