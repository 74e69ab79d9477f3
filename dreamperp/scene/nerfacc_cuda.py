"""Whether nerfacc's CUDA kernels load: probed once per process, bounded by torch's build lock (docs/design.md §6).

``nerfacc.cuda._backend`` loads a prebuilt ``nerfacc.csrc``, or JIT-builds the kernels with
``torch.utils.cpp_extension.load`` when ``nvcc`` is on the PATH (minutes the first time). torch
serialises such builds with a ``FileBaton``: the first process creates
``<TORCH_EXTENSIONS_DIR or ~/.cache/torch_extensions/py3X_cuXXX>/nerfacc_cuda/lock`` with
``O_CREAT | O_EXCL``, builds, and removes it; every other process polls until the file is gone,
without a time limit. A build that was killed (Ctrl-C, OOM, a lost job) leaves the lock behind and
every later import waits forever. So before importing, :func:`probe` waits a bounded time for an
existing lock to go away and otherwise reports it by name. Python does not remember a failed
import, so the result (failure included) is cached for the process: :func:`nerfacc_cuda_status`.
"""

from __future__ import annotations

import functools
import importlib.util
import shutil
import time
from pathlib import Path
from typing import Any, Optional, Tuple

from dreamperp.errors import first_line

EXTENSION = "nerfacc_cuda"  # nerfacc's name for its JIT extension (its build folder's name)
LOCK_WAIT_S = 60.0  # a concurrent first build takes minutes; a stale lock never goes away
_POLL_S = 0.25


def build_lock_path() -> Path:
    """torch's build lock of nerfacc's JIT extension (``<build folder>/lock``)."""
    from torch.utils.cpp_extension import _get_build_directory  # the folder nerfacc itself builds in

    return Path(_get_build_directory(EXTENSION, verbose=False)) / "lock"


def prebuilt() -> bool:
    """Whether nerfacc's CUDA extension is installed prebuilt (``nerfacc.csrc``)."""
    try:
        return importlib.util.find_spec("nerfacc.csrc") is not None
    except (ImportError, ValueError):
        return False


def jit_build_possible() -> bool:
    """Whether importing nerfacc's backend would JIT-build (and so take torch's lock): no prebuilt
    ``nerfacc.csrc`` and an ``nvcc`` on the PATH (nerfacc's own test)."""
    return not prebuilt() and shutil.which("nvcc") is not None


def wait_for_build_lock(lock: Path, wait_s: float) -> Optional[str]:
    """Wait up to ``wait_s`` seconds for ``lock`` to disappear. None when it is (or becomes) absent,
    else a one-line message naming the lock folder."""
    deadline = time.monotonic() + wait_s
    while lock.exists():
        if time.monotonic() >= deadline:
            return (
                f"torch's build lock {lock} of nerfacc's CUDA extension is still there after {wait_s:.0f} s: a build was "
                f"interrupted (or another process is still building it); if no other process is building, delete the "
                f"folder {lock.parent} and run again"
            )
        time.sleep(min(_POLL_S, max(deadline - time.monotonic(), 0.0)))
    return None


def import_backend() -> Any:
    """nerfacc's CUDA module ``_C`` (None when there is neither a prebuilt build nor nvcc)."""
    from nerfacc.cuda._backend import _C

    return _C


def probe(wait_s: Optional[float] = None) -> Tuple[bool, str]:
    """``(True, "")`` when nerfacc's CUDA kernels load, else ``(False, why)`` in one line. Uncached.
    ``wait_s``: how long an existing build lock may stay (default :data:`LOCK_WAIT_S`)."""
    wait_s = LOCK_WAIT_S if wait_s is None else wait_s
    if jit_build_possible():
        try:
            lock = build_lock_path()
        except OSError as err:
            return False, f"nerfacc's CUDA extension has no usable build folder ({first_line(err)})"
        problem = wait_for_build_lock(lock, wait_s)
        if problem is not None:
            return False, problem
    try:
        backend = import_backend()
    except Exception as err:  # a failed JIT build raises here (CalledProcessError, RuntimeError, ImportError)
        return False, f"nerfacc's CUDA extension failed to build or load ({first_line(err)[:200]})"
    if backend is None:
        return False, "nerfacc's CUDA extension is unavailable (no prebuilt build, and no nvcc to build it)"
    return True, ""


@functools.cache
def nerfacc_cuda_status() -> Tuple[bool, str]:
    """:func:`probe`, once per process: a failed build is not retried by every ``Scene.from_config``."""
    return probe()


def nerfacc_cuda_available() -> bool:
    """Whether nerfacc's CUDA kernels load (probed once per process)."""
    return nerfacc_cuda_status()[0]
