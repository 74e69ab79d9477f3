"""Checkpoints (docs/design.md §8): full training state, written atomically, verified on load; loading a run.

A checkpoint ``ckpts/step-000100.pt`` holds the state after 100 complete steps: the scene's
``state_dict`` (field, background, occupancy grid), optimizer, grad scaler, step, every RNG state
(torch CPU, CUDA, numpy, python ``random``), the guidance state (SEGA momentum, key ``prior``),
trainer counters and the resolved config as YAML. It is a plain ``torch.save`` file (loadable with
``torch.load(weights_only=True)``) that also carries a SHA-256 over its contents, so a truncated
*or* bit-flipped file is detected instead of silently resuming from garbage.

Writes go to a temp file in the same folder, are flushed and fsynced, renamed over the final name
and the folder is fsynced: a crash or ``kill -9`` at any moment leaves either the old set of
checkpoints or the new one, never a half-written ``step-*.pt``.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch

from dreamperp.config import Config
from dreamperp.device import resolve_device
from dreamperp.errors import UsageError, first_line
from dreamperp.files import TEMP_MARK, atomic_write
from dreamperp.runs.folder import RunDir

FORMAT = "dreamperp-checkpoint"
VERSION = 1
_NAME = re.compile(r"^step-(\d+)\.pt$")
_TMP_PREFIX = ".step-"


def checkpoint_name(step: int) -> str:
    """``step-000100.pt``."""
    return f"step-{step:06d}.pt"


def list_checkpoints(ckpt_dir: Path) -> List[Path]:
    """``step-*.pt`` files in ``ckpt_dir``, oldest (lowest step) first; temp files are ignored."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in ckpt_dir.iterdir() if (m := _NAME.match(p.name)) and p.is_file()]
    return [p for _, p in sorted(found)]


def remove_stale_temp_files(ckpt_dir: Path) -> None:
    """Delete temp files a killed process left behind (they never became checkpoints)."""
    ckpt_dir = Path(ckpt_dir)
    if ckpt_dir.is_dir():
        for p in ckpt_dir.iterdir():
            if p.name.startswith(_TMP_PREFIX) and TEMP_MARK in p.name:
                p.unlink(missing_ok=True)


# ------------------------------------------------------------------------------------- RNG state
def rng_state() -> Dict[str, Any]:
    """Every RNG the training step may draw from, in a form ``torch.load(weights_only=True)`` accepts."""
    np_state = np.random.get_state()
    state: Dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [str(np_state[0]), [int(x) for x in np_state[1]], int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "python": random.getstate(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured (CUDA states only when this machine has as many GPUs)."""
    torch.set_rng_state(state["torch"].cpu())
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda])


# -------------------------------------------------------------------------------------- checksum
def _digest(obj: Any, h: "hashlib._Hash") -> None:
    """Feed a canonical byte form of ``obj`` (nested dicts/lists/tensors/scalars) into ``h``."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif isinstance(obj, dict):
        h.update(f"D{len(obj)}".encode())
        for k, v in obj.items():
            h.update(repr(k).encode())
            _digest(v, h)
    elif isinstance(obj, (list, tuple)):
        h.update(f"L{len(obj)}".encode())
        for v in obj:
            _digest(v, h)
    else:
        h.update(repr(obj).encode())


def state_checksum(state: Dict[str, Any]) -> str:
    """SHA-256 over everything in ``state`` except its ``checksum`` entry."""
    h = hashlib.sha256()
    _digest({k: v for k, v in state.items() if k != "checksum"}, h)
    return h.hexdigest()


# ------------------------------------------------------------------------------------ save / load
def save_checkpoint(ckpt_dir: Path, state: Dict[str, Any], keep: int) -> Path:
    """Write ``state`` (must hold ``step``) as ``ckpt_dir/step-XXXXXX.pt`` atomically; keep the newest ``keep``."""
    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    state = {"format": FORMAT, "version": VERSION, **state}
    state["checksum"] = state_checksum(state)
    path = ckpt_dir / checkpoint_name(int(state["step"]))
    atomic_write(path, lambda f: torch.save(state, f))  # the temp name ".step-….tmp…" is ignored by list_checkpoints
    for old in list_checkpoints(ckpt_dir)[:-keep] if keep > 0 else []:
        old.unlink(missing_ok=True)
    return path


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> Dict[str, Any]:
    """Read and verify a checkpoint. A missing, truncated, corrupt or foreign file → UsageError naming it."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"checkpoint '{path}' is a folder: pass a .pt file inside it (e.g. the newest ckpts/step-NNNNNN.pt)")
    if not path.is_file():
        raise UsageError(f"checkpoint '{path}' does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # zip/pickle/EOF errors come in many types
        first = first_line(err).split(". ")[0]  # torch's hints run on
        raise UsageError(f"checkpoint '{path}' is truncated or corrupt and cannot be read ({first[:120]})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UsageError(f"'{path}' is not a dreamperp checkpoint")
    if state.get("checksum") != state_checksum(state):
        raise UsageError(f"checkpoint '{path}' is corrupt (its contents do not match the checksum written with it)")
    return state


def _warn(message: str) -> None:
    print(f"dreamperp train: warning: {message}", file=sys.stderr)


def resume_checkpoint(run: RunDir, fallback: bool = False, log: Callable[[str], None] = _warn) -> Tuple[Path, Dict[str, Any]]:
    """The newest loadable checkpoint of ``run`` and its state.

    A corrupt newest checkpoint is an error that suggests ``--fallback``; with ``fallback`` the
    corrupt file is renamed to ``*.corrupt`` (kept for inspection, out of the way of later resumes)
    and the previous one is used, saying so through ``log``.
    """
    remove_stale_temp_files(run.ckpt_dir)
    ckpts = list_checkpoints(run.ckpt_dir)[::-1]
    if not ckpts:
        raise UsageError(
            f"run '{run.root}' has no checkpoints in {run.ckpt_dir.name}/ to resume from (it stopped before the first save); start a new run instead"
        )
    for i, path in enumerate(ckpts):
        try:
            return path, load_checkpoint(path)
        except UsageError as err:
            older = ckpts[i + 1] if i + 1 < len(ckpts) else None
            if not fallback:
                hint = f"; pass --fallback to resume from the previous checkpoint '{older.name}'" if older else "; there is no older checkpoint to fall back to"
                raise UsageError(f"{err}{hint}") from None
            corrupt = path.with_name(path.name + ".corrupt")
            os.replace(path, corrupt)
            if older is None:
                raise UsageError(f"{err}; no older checkpoint to fall back to in '{run.ckpt_dir}' (renamed it to {corrupt.name})") from None
            log(f"{err}; renamed it to {corrupt.name} and falling back to {older.name}")
    raise AssertionError("unreachable")  # pragma: no cover


# ------------------------------------------------------------------------------------ load a run
@dataclass
class LoadedRun:
    """A trained scene ready for evaluation (``scene.eval()``, on ``scene.device``)."""

    cfg: Config
    scene: Any  # dreamperp.scene.Scene
    step: int
    run_dir: Path
    ckpt_path: Path


def _evaluable(cfg: Config, scene_state: Dict[str, Any], device: torch.device) -> Config:
    """``cfg`` for building the scene of ``scene_state`` on ``device`` for evaluation: the hash-grid
    back end the checkpoint holds (a torch-grid run stays on the torch grid where tinycudann is
    installed; a tinycudann checkpoint where it cannot run → UsageError), and a pinned occupancy grid
    relaxed to 'auto' (without it the dense sampler renders the same field)."""
    from dreamperp.scene import pin_encoding
    from dreamperp.scene.encoding import has_hash_grid

    cfg = pin_encoding(cfg, scene_state, device)
    render, scene = cfg.render, cfg.scene
    if render.estimator == "occgrid":
        render = replace(render, estimator="auto")
    if scene.encoding == "tcnn" and not has_hash_grid(scene_state):
        scene = replace(scene, encoding="auto")  # no grid in the state (not a real checkpoint): do not insist
    return replace(cfg, render=render, scene=scene)


def load_run(run_dir: str | os.PathLike, checkpoint: Optional[str | os.PathLike] = None, device: Any = None) -> LoadedRun:
    """Load a run folder's config and scene from its newest checkpoint (or ``checkpoint``).

    ``device``: torch device or name (default ``"auto"``: CUDA when available). A folder that is not
    a run, a run without checkpoints, or an unreadable checkpoint → UsageError.
    """
    from dreamperp.scene import Scene

    run = RunDir.open(run_dir)
    cfg = run.load_config()
    if checkpoint is None:
        ckpts = list_checkpoints(run.ckpt_dir)
        if not ckpts:
            raise UsageError(f"run '{run.root}' has no checkpoints in {run.ckpt_dir.name}/ yet (train it first, or wait for the first save)")
        path = ckpts[-1]
    else:
        path = Path(checkpoint)
    try:
        state = load_checkpoint(path)
    except UsageError as err:
        if checkpoint is None:
            others = [p.name for p in list_checkpoints(run.ckpt_dir)[:-1]]
            if others:
                raise UsageError(f"{err}; pass --checkpoint {run.ckpt_dir / others[-1]} to use the previous one") from None
        raise
    dev = resolve_device(device if device is not None else "auto")
    try:
        evaluable = _evaluable(cfg, state["scene"], dev)
    except UsageError as err:
        raise UsageError(f"checkpoint '{path}': {err}") from None
    scene = Scene.from_config(evaluable, device=dev)
    try:
        scene.load_state_dict(state["scene"])
    except RuntimeError as err:  # missing/unexpected keys or shape mismatches: a checkpoint of another run
        if "Error(s) in loading state_dict" not in str(err):  # e.g. CUDA out of memory: not a mismatch
            raise
        raise UsageError(f"checkpoint '{path}' does not fit run '{run.root}' (its scene.* settings differ): pass a checkpoint from {run.ckpt_dir}") from None
    scene.eval()
    return LoadedRun(cfg=cfg, scene=scene, step=int(state["step"]), run_dir=run.root, ckpt_path=path)
