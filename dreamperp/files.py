"""Atomic file output (docs/design.md §8): a reader (or a resumed run) never sees a half-written file.

Every file dreamperp writes into a run folder (checkpoints, config, metrics rewrites, validation
grids, meshes, videos, renders) goes through :func:`atomic_output`: the data is written to a
temporary file next to the target, flushed and fsynced, renamed over the target, and the folder is
fsynced so the rename itself survives a crash. A failure at any point leaves the old file (or
none) and removes the temporary file.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator

from dreamperp.errors import UsageError

TEMP_MARK = ".tmp"  # temporary names are ".{stem}.tmp{pid}{suffix}": hidden, and never a valid target name


def make_output_folder(folder: Path) -> None:
    """Create ``folder`` (and parents); UsageError naming it when that is impossible (a file in the way)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"output folder '{folder}' is a file: move or delete it, then run again")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UsageError(f"cannot create the output folder '{folder}': {err.strerror or err} (check the path and its permissions)") from None


def fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (no-op where directories cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def temp_path(path: Path) -> Path:
    """The temporary name :func:`atomic_output` uses for ``path`` (same folder, same suffix)."""
    # Keep the suffix: writers such as ffmpeg and PIL pick the format from it.
    return path.with_name(f".{path.stem}{TEMP_MARK}{os.getpid()}{path.suffix}")


@contextlib.contextmanager
def atomic_output(path: Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path`` (its folder is created); when the block ends without
    an exception, fsync the file and rename it over ``path``. For writers that need a file name."""
    path = Path(path)
    make_output_folder(path.parent)
    tmp = temp_path(path)
    try:
        yield tmp
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    fsync_dir(path.parent)


def atomic_write(path: Path, write: Callable[[BinaryIO], Any]) -> Path:
    """:func:`atomic_output` for a writer that takes an open binary file: ``write(file)``."""
    with atomic_output(path) as tmp:
        with open(tmp, "wb") as f:
            write(f)
    return Path(path)


def atomic_write_bytes(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: Path, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


@contextlib.contextmanager
def pid_lock(path: Path, busy: Callable[[str], str]) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``path`` (created if needed, holding our pid) for the block.

    When another process holds it, raise UsageError(``busy(owner_pid)``). The OS drops the lock when
    the process dies, even by ``kill -9``. No-op where ``fcntl`` is missing (Windows).
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no advisory locks, no protection
        yield
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise UsageError(busy(owner)) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)  # closing releases the lock
