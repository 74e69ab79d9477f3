"""``dreamperp video RUN_DIR``: a turntable video of a trained run into ``RUN_DIR/export/``
(the rendering and the file format are :mod:`dreamperp.export.video`'s)."""

from __future__ import annotations

import argparse
from pathlib import Path

from dreamperp.export.common import positive_int
from dreamperp.export.video import parse_modes, write_turntable
from dreamperp.runs.checkpoint import load_run


def check_inputs(args: argparse.Namespace) -> None:
    """The flags that can be checked without the run: UsageError naming the flag. The rest (even
    ``--size`` for mp4, ``--elevation``) is checked by :func:`write_turntable` with the run's defaults."""
    for flag, value, lo in (("--frames", args.frames, 1), ("--fps", args.fps, 1), ("--size", args.size, 2)):
        if value is not None:
            positive_int(value, flag, lo)
    if args.modes is not None:
        parse_modes(args.modes)


def video_command(args: argparse.Namespace) -> int:
    """``dreamperp video RUN_DIR [--frames N] [--fps N] [--elevation DEG] [--size N] [--modes ...] [--format mp4|gif]``."""
    # 1. Check the flags, before the (slow) run loading.
    check_inputs(args)

    # 2. Load the run: its newest checkpoint, or --checkpoint.
    run = load_run(args.run_dir, checkpoint=args.checkpoint)

    # 3. Render and write RUN_DIR/export/turntable.<format>; a flag left out takes the run's export.video_*.
    fmt = args.format or run.cfg.export.video_format
    path = write_turntable(
        run.scene,
        run.cfg,
        Path(run.run_dir) / "export" / f"turntable.{fmt}",
        frames=args.frames,
        fps=args.fps,
        elevation=args.elevation,
        size=args.size,
        modes=args.modes,
        format=fmt,
    )
    print(path)
    return 0
