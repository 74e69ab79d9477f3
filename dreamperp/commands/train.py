"""``dreamperp train``: start or resume a run, train it, then export its mesh and video.

The command layer above training and export (docs/design.md §1, §7): it parses the arguments, builds
the :class:`~dreamperp.train.trainer.Trainer` before any folder exists (a bad model id or dataset
leaves nothing behind), runs the :class:`~dreamperp.train.loop.TrainLoop` under the run's lock,
and finally writes ``export/`` with the same code as ``dreamperp export`` and ``dreamperp video``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable, List, Optional, Tuple

from dreamperp.config import NOT_PART_OF_A_RUN, Config, flat_dict, load_config
from dreamperp.device import no_rng_side_effects
from dreamperp.errors import UsageError
from dreamperp.export.mesh import export_mesh
from dreamperp.export.video import write_turntable
from dreamperp.models.loading import choose_hub_model
from dreamperp.runs.checkpoint import list_checkpoints, remove_stale_temp_files, resume_checkpoint
from dreamperp.runs.folder import CONFIG_NAME, LOCK_NAME, METRICS_NAME, RunDir, truncate_metrics
from dreamperp.train.loop import LoopHook, TrainLoop, say
from dreamperp.train.trainer import Trainer

# Keys that may be overridden when resuming; anything else would make the resumed run a different run.
RESUME_OVERRIDABLE = ("trainer.max_steps",)


# ------------------------------------------------------------------------ --viewer (docs/viewer.md)
ViewerFactory = Callable[[Trainer, RunDir], LoopHook]


def viewer_from_args(args: argparse.Namespace) -> Optional[ViewerFactory]:
    """With ``--viewer``: a function starting the viewer for a run (checked now: the extra is
    installed, the flags are sane), else None."""
    host, port = getattr(args, "viewer_host", None), getattr(args, "viewer_port", None)
    if not getattr(args, "viewer", False):
        if host is not None or port is not None:
            raise UsageError("--viewer-port/--viewer-host only apply together with --viewer")
        return None
    from dreamperp.viewer import DEFAULT_PORT, require_viser

    require_viser("--viewer")
    from dreamperp.viewer.hook import ViewerHook
    from dreamperp.viewer.server import check_listen

    host, port = host or "127.0.0.1", DEFAULT_PORT if port is None else port
    check_listen(host, port)  # a bad host or port: exit 2 before any folder exists
    return lambda trainer, run: ViewerHook.start(trainer, run, host=host, port=port)


def _fit_and_export(trainer: Trainer, run: RunDir, viewer: Optional[ViewerFactory] = None) -> int:
    """Train to the end; export when it finished (not when interrupted). Returns the exit code.

    A finished run whose export did not complete (killed while exporting: the turntable, written
    last, is missing) exports again on resume instead of saying there is nothing to do."""
    start = trainer.step
    hooks = [viewer(trainer, run)] if viewer is not None else []  # the server starts before training
    code = TrainLoop(trainer, run, hooks=hooks).fit()
    cfg = trainer.cfg
    finished = code == 0 and trainer.step >= cfg.trainer.max_steps
    incomplete = not (run.export_dir / f"turntable.{cfg.export.video_format}").is_file()
    if finished and cfg.trainer.video_at_end and (trainer.step > start or incomplete):
        export_at_end(trainer, run)
    return code


def export_at_end(trainer: Trainer, run: RunDir, log: Callable[[str], None] = say) -> None:
    """Mesh + turntable video of the trained scene into ``run/export/``, with the run's ``export.*``
    settings, and last the mesh's fidelity line (docs/design.md §14). A failure here is reported,
    not fatal: the training result is already saved."""
    t, cfg = trainer, trainer.cfg
    ex, tc = cfg.export, cfg.trainer
    fidelity: List[str] = []
    t.scene.eval()
    try:
        with no_rng_side_effects(t.device):
            try:
                # export.faces / export.texture / export.texture_size come from cfg, as for `dreamperp export`
                for path in export_mesh(t.scene, cfg, run.export_dir, progress=tc.progress, log=log, fidelity_log=fidelity.append):
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
    for line in fidelity:
        log(line)


def pin_hub_model(cfg: Config) -> Optional[str]:
    """Point ``guidance.model`` at the hub id that will load (a withdrawn id's successor when the
    old id is not cached, docs/design.md §9), so the run's config.yaml and checkpoints record what
    was loaded. Returns the one line that says so when the config changed, else None."""
    if cfg.data.type != "text":
        return None
    choice = choose_hub_model(cfg.guidance.model)
    if choice.model == cfg.guidance.model:
        return None
    cfg.guidance.model = choice.model
    return choice.note or f"loading guidance.model={choice.model}"


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


def _resume_run(run: RunDir, overrides: List[str], fallback: bool, viewer: Optional[ViewerFactory] = None) -> int:
    """Continue ``run`` from its newest checkpoint (``--resume``, and ``--run-dir`` on a started run)."""
    with run.lock():
        cfg = run.load_config(overrides)
        pinned = pin_hub_model(cfg)
        if pinned:
            say(pinned)
        ckpt_path, state = resume_checkpoint(run, fallback=fallback)
        trainer = Trainer.resume(cfg, state)  # with the hash-grid back end of the checkpoint
        if pinned:
            say(f"{run.config_path} now names guidance.model={cfg.guidance.model}, the model this run loads")
        if pinned or (overrides and trainer.step < cfg.trainer.max_steps):  # a limit already passed changes nothing
            run.write_config(cfg)
        truncate_metrics(run.metrics_path, trainer.step)
        say(f"resuming {run.root} from {ckpt_path.name} (step {trainer.step} of {cfg.trainer.max_steps})")
        remove_stale_temp_files(run.ckpt_dir)
        return _fit_and_export(trainer, run, viewer)


def train_command(args: argparse.Namespace) -> int:
    """``dreamperp train CONFIG [key=value ...] [--run-dir PATH]`` or ``dreamperp train --resume RUN_DIR [--fallback] [trainer.max_steps=N]``."""
    # 1. Check the flags (--viewer's too, so a bad host or port exits before any folder exists).
    #    --run-dir and --resume go their own ways from here, each with its own checks first.
    viewer = viewer_from_args(args)
    if getattr(args, "run_dir", None):
        return train_in_run_dir(args, viewer)
    if args.resume:
        overrides = _split_resume_args(args)  # argument errors first, then the folder
        return _resume_run(RunDir.open(args.resume), overrides, bool(args.fallback), viewer)
    if args.fallback:
        raise UsageError("--fallback only applies together with --resume RUN_DIR")
    config, overrides = args.config, list(args.overrides or [])
    if config and "=" in config and not Path(config).is_file():
        config, overrides = None, [config, *overrides]  # `dreamperp train prompt=...` with schema defaults
    if config is None and not overrides:
        raise UsageError("give a config file (e.g. configs/tiny.yaml) or --resume RUN_DIR")

    # 2. The config, naming the hub model id that will load.
    cfg = load_config(config, overrides)
    pinned = pin_hub_model(cfg)
    if pinned:
        say(pinned)

    # 3. Build everything (model weights, dataset) before the run folder exists, so a bad model id
    #    or dataset path leaves nothing behind.
    trainer = Trainer(cfg)

    # 4. Create the run folder; train under its lock, then export.
    run = RunDir.create(cfg)
    say(f"run folder {run.root}")
    with run.lock():
        return _fit_and_export(trainer, run, viewer)


# ----------------------------------------------------------------------- --run-dir (dreamperp batch)
# A run folder chosen by the caller instead of output_dir/name/<timestamp>-<slug>/, so that a batch
# can give every job a fixed folder: the first call creates the run there, a later call with the
# same config resumes it from its newest checkpoint (or starts over when none was saved yet).
def config_differences(a: Config, b: Config, ignore: Tuple[str, ...] = NOT_PART_OF_A_RUN) -> List[str]:
    """Dotted keys whose values differ between ``a`` and ``b`` (``ignore``d keys left out)."""
    fa, fb = flat_dict(a), flat_dict(b)
    return [k for k in sorted(set(fa) | set(fb)) if k not in ignore and fa.get(k) != fb.get(k)]


RUN_DIR_CONTENT = ("ckpts", "val", "export", "tensorboard", CONFIG_NAME, METRICS_NAME, LOCK_NAME)


def train_in_run_dir(args: argparse.Namespace, viewer: Optional[ViewerFactory] = None) -> int:
    """``dreamperp train CONFIG [key=value ...] --run-dir PATH``: train the run exactly in PATH."""
    if args.resume:
        raise UsageError("give either --run-dir PATH or --resume RUN_DIR, not both")
    if not args.config:
        raise UsageError("--run-dir needs a config file (e.g. configs/tiny.yaml)")
    cfg = load_config(args.config, list(args.overrides or []))
    pinned = pin_hub_model(cfg)  # said below for a new run; a resumed one says it itself
    root = Path(args.run_dir).expanduser()
    if root.exists() and not root.is_dir():
        raise UsageError(f"--run-dir '{root}' is a file, not a folder")
    run = RunDir(root)
    if run.config_path.is_file() and list_checkpoints(run.ckpt_dir):
        saved = run.load_config()
        pin_hub_model(saved)  # a run started before its model id was withdrawn is the same run
        different = config_differences(saved, cfg)
        if different:
            raise UsageError(f"--run-dir '{root}' holds a different run: its config.yaml differs in {', '.join(different[:5])} (use another folder)")
        return _resume_run(run, [f"trainer.max_steps={cfg.trainer.max_steps}"], bool(args.fallback), viewer)
    if root.is_dir() and any(p.name not in RUN_DIR_CONTENT for p in root.iterdir()):
        raise UsageError(f"--run-dir '{root}' is not empty and not a dreamperp run folder (use an empty or new folder)")
    if args.fallback:
        raise UsageError(f"--fallback: run folder '{root}' has no checkpoint yet")
    if pinned:
        say(pinned)
    trainer = Trainer(cfg)  # everything built before the folder exists, as for a new run
    try:
        for sub in (run.ckpt_dir, run.val_dir, run.export_dir):
            sub.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UsageError(f"cannot create the run folder '{root}': {err.strerror}") from None
    with run.lock():
        truncate_metrics(run.metrics_path, 0)  # records of a start that died before its first save
        run.write_config(cfg)
        say(f"run folder {run.root}")
        return _fit_and_export(trainer, run, viewer)
