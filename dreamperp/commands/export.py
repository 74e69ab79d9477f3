"""``dreamperp export RUN_DIR``: the mesh of a trained run into ``RUN_DIR/export/``, with its fidelity
against the scene (the pipeline is :func:`dreamperp.export.mesh.export_mesh`, docs/design.md §14)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dreamperp.export.mesh import check_args, export_mesh
from dreamperp.runs.checkpoint import load_run

FLAGS = ("formats", "resolution", "threshold", "faces", "texture", "texture_size")


def _log(message: str) -> None:
    print(f"dreamperp export: {message}", file=sys.stderr, flush=True)


def export_command(args: argparse.Namespace) -> int:
    """``dreamperp export RUN_DIR [--format F ...] [--resolution N] [--threshold auto|X] [--faces N]
    [--texture on|off] [--texture-size S] [--checkpoint PATH]``: paths on stdout; the chosen
    threshold, the per-stage timings and the fidelity line on stderr."""
    # 1. Check the flags, before the (slow) run loading; a flag left out takes the run's export.*.
    given = {k: getattr(args, k, None) for k in FLAGS}
    check_args(**given)

    # 2. Load the run: its newest checkpoint, or --checkpoint.
    run = load_run(args.run_dir, checkpoint=args.checkpoint)

    # 3. Extract, decimate, texture, write and check the mesh against the scene.
    for path in export_mesh(run.scene, run.cfg, Path(run.run_dir) / "export", **given, log=_log):
        print(path)
    return 0
