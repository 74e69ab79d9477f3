"""``dreamperp tiny-model PATH``: write a tiny random offline diffusion pipeline (the pipeline itself
is :func:`dreamperp.models.tiny.build_tiny_pipeline`'s)."""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path

from dreamperp.errors import UsageError
from dreamperp.models.tiny import build_tiny_pipeline, is_tiny_model_dir


def check_inputs(args: argparse.Namespace) -> Path:
    """The seed and PATH (absent, an empty folder, or a tiny model to replace): UsageError naming what is wrong. Returns PATH."""
    out = Path(args.path)
    if args.seed < 0:
        raise UsageError(f"--seed must be >= 0, got {args.seed}")
    if out.exists() and not out.is_dir():
        raise UsageError(f"'{out}' exists and is not a folder: choose another PATH")
    if out.is_dir() and any(out.iterdir()) and not is_tiny_model_dir(out):
        raise UsageError(f"folder '{out}' is not empty and is not a tiny model: choose an empty or new PATH")
    return out


def tiny_model_command(args: argparse.Namespace) -> int:
    """``dreamperp tiny-model PATH [--seed N] [--layout sd|if|pixel]``."""
    # 1. Check the seed and PATH.
    out = check_inputs(args)

    # 2. Create PATH (and its parents), where the model will be swapped in.
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:  # e.g. a parent is a file, or not writable
        raise UsageError(f"cannot create the folder '{out}': {err.strerror} (choose another PATH)") from None

    # 3. Build beside it and swap it in, so a crash never leaves a half-written model at PATH, and a
    #    previous tiny model is replaced wholesale (no stale file of another version survives).
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    try:
        build_tiny_pipeline(tmp, seed=args.seed, layout=getattr(args, "layout", "sd"))
        os.rename(out, old)
        os.rename(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    print(out)
    return 0
