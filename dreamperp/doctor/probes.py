"""What this machine has, and what ``auto`` resolves to on it (docs/design.md §13).

Python, torch, each GPU, tinycudann, nerfacc's CUDA extension, imageio-ffmpeg, Ray and free disk.
Each probe is a module-level function so tests can stand in for a CUDA machine (monkeypatch). The
probes never build anything: nerfacc's CUDA extension is reported as prebuilt, already built,
buildable (``nvcc`` found), locked (torch's build lock left by a killed build) or unavailable from
the files alone, using :mod:`dreamperp.scene.nerfacc_cuda`.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path
from typing import Any, Dict, List, Optional

from dreamperp.errors import first_line

GIB = 2**30


def gpu_info() -> List[Dict[str, Any]]:
    """Every CUDA device: name, total and free memory (bytes), compute capability, bf16/fp16."""
    import torch

    if not torch.cuda.is_available():
        return []
    gpus = []
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        free, total = torch.cuda.mem_get_info(i)
        major, minor = props.major, props.minor
        gpus.append({
            "index": i, "name": props.name, "memory_bytes": int(total), "free_bytes": int(free),
            "capability": f"{major}.{minor}",
            "bf16": bool(major >= 8), "fp16": bool(major >= 6),  # bf16 tensor cores from Ampere, fast fp16 from Pascal
        })
    return gpus


def torch_info() -> Dict[str, Any]:
    import torch

    cuda = getattr(torch.version, "cuda", None)
    return {"version": torch.__version__, "cuda": cuda, "build": f"CUDA {cuda}" if cuda else "CPU only"}


def host_free_memory() -> Optional[int]:
    """MemAvailable of /proc/meminfo in bytes (None where there is no such file)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def nerfacc_info() -> Dict[str, Any]:
    """nerfacc and its CUDA extension, from the files alone (no import of the backend, no build).

    ``state``: 'prebuilt' (``nerfacc.csrc`` installed), 'built' (a JIT build in torch's extension
    folder), 'buildable' (``nvcc`` on the PATH: built on first use, minutes), 'locked' (torch's build
    lock is there: a killed build, or one in progress), 'unavailable' or 'not installed'."""
    from dreamperp.scene import nerfacc_cuda

    info: Dict[str, Any] = {"installed": importlib.util.find_spec("nerfacc") is not None, "nvcc": shutil.which("nvcc")}
    if not info["installed"]:
        return {**info, "state": "not installed", "why": "nerfacc is not installed"}
    if nerfacc_cuda.prebuilt():
        return {**info, "state": "prebuilt", "why": "nerfacc's CUDA extension is installed prebuilt"}
    if not nerfacc_cuda.jit_build_possible():
        return {**info, "state": "unavailable", "why": "no prebuilt nerfacc CUDA extension, and no nvcc to build it"}
    try:
        lock = nerfacc_cuda.build_lock_path()
    except OSError as err:
        return {**info, "state": "unavailable", "why": f"nerfacc's CUDA extension has no usable build folder ({first_line(err)})"}
    info["build_dir"] = str(lock.parent)
    if lock.exists():
        return {**info, "state": "locked", "lock": str(lock),
                "why": f"torch's build lock {lock} is there: a build was killed (or is running); if none is running, delete {lock.parent}"}
    if any(lock.parent.glob(f"{nerfacc_cuda.EXTENSION}*.so")):
        return {**info, "state": "built", "why": f"nerfacc's CUDA extension was built before in {lock.parent}"}
    return {**info, "state": "buildable", "why": f"nvcc found ({info['nvcc']}): nerfacc's CUDA extension builds on first use (minutes, once)"}


def tcnn_importable() -> bool:
    from dreamperp.scene import encoding

    return encoding.tcnn_available()


def ffmpeg_info() -> Dict[str, Any]:
    try:
        import imageio_ffmpeg

        return {"available": True, "path": imageio_ffmpeg.get_ffmpeg_exe(), "why": ""}
    except Exception as err:  # not installed, or its binary is missing for this platform
        return {"available": False, "path": None, "why": first_line(err)}


def ray_info() -> Dict[str, Any]:
    from importlib import metadata

    if importlib.util.find_spec("ray") is None:
        return {"installed": False, "version": None}
    try:
        return {"installed": True, "version": metadata.version("ray")}
    except metadata.PackageNotFoundError:
        return {"installed": True, "version": None}


def encoding_choice(setting: str, device_type: str) -> Dict[str, Any]:
    """``scene.encoding`` → the hash-grid back end on this machine, and why."""
    tcnn = tcnn_importable()
    out = {"setting": setting, "tinycudann": tcnn}
    if setting == "torch":
        return {**out, "resolves_to": "torch", "why": "set in the config"}
    if setting == "tcnn":
        ok = device_type == "cuda" and tcnn
        why = "set in the config" if ok else ("needs a CUDA device" if device_type != "cuda" else "tinycudann is not installed")
        return {**out, "resolves_to": "tcnn" if ok else None, "why": why}
    if device_type != "cuda":
        return {**out, "resolves_to": "torch", "why": "no CUDA device"}
    if tcnn:
        return {**out, "resolves_to": "tcnn", "why": "tinycudann is importable"}
    return {**out, "resolves_to": "torch", "why": "tinycudann is not installed (pure-PyTorch hash grid, slower)"}


def estimator_choice(setting: str, device_type: str, nerfacc: Dict[str, Any]) -> Dict[str, Any]:
    """``render.estimator`` → 'occgrid' or 'dense' on this machine, and why (as the renderer decides)."""
    usable = nerfacc["state"] in ("prebuilt", "built", "buildable")
    if setting == "dense":
        return {"setting": setting, "resolves_to": "dense", "why": "set in the config"}
    if device_type != "cuda":
        ok = setting == "auto"
        return {"setting": setting, "resolves_to": "dense" if ok else None, "why": "no CUDA device" if ok else "occgrid needs a CUDA device"}
    if usable:
        return {"setting": setting, "resolves_to": "occgrid", "why": nerfacc["why"]}
    if setting == "occgrid":
        return {"setting": setting, "resolves_to": None, "why": nerfacc["why"]}
    extra = " (the run waits 60 s for the lock, then falls back)" if nerfacc["state"] == "locked" else ""
    return {"setting": setting, "resolves_to": "dense", "why": nerfacc["why"] + extra}


def disk_section(output_dir: str) -> Dict[str, Any]:
    """Free bytes on the file system that holds ``output_dir`` (or its nearest existing parent)."""
    path = Path(output_dir).expanduser().absolute()
    probe = path
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    try:
        free = shutil.disk_usage(probe).free
    except OSError:
        free = None
    return {"output_dir": str(path), "free_bytes": free}
