"""``dreamperp train``: start or resume a run, train it, then export its mesh and video.

The command layer above training and export (docs/design.md §1, §7): it parses the arguments, builds
the :class:`~dreamperp.train.trainer.Trainer` before any folder exists (a bad model id or dataset
leaves nothing behind), runs the :class:`~dreamperp.train.loop.TrainLoop` under the run's lock,
and finally writes ``export/`` with the same code as ``dreamperp export`` and ``dreamperp video``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable, List

from dreamperp.config import load_config
from dreamperp.device import no_rng_side_effects
from dreamperp.errors import UsageError
from dreamperp.export.mesh import export_mesh
from dreamperp.export.video import write_turntable
from dreamperp.runs.checkpoint import remove_stale_temp_files, resume_checkpoint
from dreamperp.runs.folder import RunDir, truncate_metrics
from dreamperp.train.loop import TrainLoop, say
from dreamperp.train.trainer import Trainer

# Keys that may be overridden when resuming; anything else would make the resumed run a different run.
RESUME_OVERRIDABLE = ("trainer.max_steps",)


def _fit_and_export(trainer: Trainer, run: RunDir) -> int:
    """Train to the end; export when it finished (not when interrupted). Returns the exit code."""
    start = trainer.step
    code = TrainLoop(trainer, run).fit()
    if code == 0 and trainer.step > start and trainer.cfg.trainer.video_at_end:  # 0 and no progress: nothing to do
        export_at_end(trainer, run)
    return code


def export_at_end(trainer: Trainer, run: RunDir, log: Callable[[str], None] = say) -> None:
    """Mesh + turntable video of the trained scene into ``run/export/``, with the run's ``export.*``
    settings. A failure here is reported, not fatal: the training result is already saved."""
    t, cfg = trainer, trainer.cfg
    ex, tc = cfg.export, cfg.trainer
    t.scene.eval()
    try:
        with no_rng_side_effects(t.device):
            try:
                # export.faces / export.texture / export.texture_size come from cfg, as for `dreamperp export`
                for path in export_mesh(t.scene, cfg, run.export_dir, progress=tc.progress, log=log):
                    log(f"wrote {path}")
            except Exception as err:  # the trained scene is saved; export can be redone with `dreamperp export`
                log(f"warning: mesh export failed ({type(err).__name__}: {err}); retry with: dreamperp export {run.root}")
            try:
                out = run.export_dir / f"turntable.{ex.video_format}"
                log(f"wrote {write_turntable(t.scene, cfg, out, progress=tc.progress)}")
            except Exception as err:
                log(f"warning: video failed ({type(err).__name__}: {err}); retry with: dreamperp video {run.root}")
    finally:
        t.scene.train()


def _split_resume_args(args: argparse.Namespace) -> List[str]:
    """Overrides given with --resume (argparse may have put the first one in ``config``)."""
    overrides = list(args.overrides or [])
    if args.config:
        if "=" in args.config and not Path(args.config).is_file():
            overrides.insert(0, args.config)
        else:
            raise UsageError(f"give either a config file or --resume RUN_DIR, not both (got '{args.config}'); a resumed run uses its own config.yaml")
    for item in overrides:
        key = item.split("=", 1)[0].strip()
        if key not in RESUME_OVERRIDABLE:
            raise UsageError(
                f"with --resume only {', '.join(RESUME_OVERRIDABLE)} can be overridden, got '{item}' "
                f"(other changes would not continue the same run: start a new run instead)"
            )
    return overrides


def train_command(args: argparse.Namespace) -> int:
    """``dreamperp train CONFIG [key=value ...]`` or ``dreamperp train --resume RUN_DIR [--fallback] [trainer.max_steps=N]``."""
    if args.resume:
        overrides = _split_resume_args(args)
        run = RunDir.open(args.resume)
        with run.lock():
            cfg = run.load_config(overrides)
            ckpt_path, state = resume_checkpoint(run, fallback=bool(args.fallback))
            trainer = Trainer.resume(cfg, state)  # with the hash-grid back end of the checkpoint
            if overrides and trainer.step < cfg.trainer.max_steps:  # a limit already passed changes nothing
                run.write_config(cfg)
            truncate_metrics(run.metrics_path, trainer.step)
            say(f"resuming {run.root} from {ckpt_path.name} (step {trainer.step} of {cfg.trainer.max_steps})")
            remove_stale_temp_files(run.ckpt_dir)
            return _fit_and_export(trainer, run)
    else:
        if args.fallback:
            raise UsageError("--fallback only applies together with --resume RUN_DIR")
        config, overrides = args.config, list(args.overrides or [])
        if config and "=" in config and not Path(config).is_file():
            config, overrides = None, [config, *overrides]  # `dreamperp train prompt=...` with schema defaults
        if config is None and not overrides:
            raise UsageError("give a config file (e.g. configs/tiny.yaml) or --resume RUN_DIR")
        cfg = load_config(config, overrides)
        # Build everything (model weights, dataset) before the run folder exists, so a bad model id
        # or dataset path leaves nothing behind.
        trainer = Trainer(cfg)
        run = RunDir.create(cfg)
        say(f"run folder {run.root}")
        with run.lock():
            return _fit_and_export(trainer, run)
