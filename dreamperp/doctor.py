"""``dreamperp doctor``: what this machine runs for a config and why, and a timed step (docs/design.md §13).

A command (docs/design.md §1), beside ``train_command``. :func:`diagnose` gathers one report (a
plain dict, the ``--json`` output, versioned by :data:`SCHEMA_VERSION`): Python and torch, each
GPU, what ``scene.encoding: auto`` and ``render.estimator: auto`` resolve to here and why,
imageio-ffmpeg and Ray, the config's prior (cached or not, size, gated, a withdrawn id's
successor), free disk under ``output_dir`` and the run's estimated peak memory against what is
free. Exit 0 when the config can run here, else 2 with the one thing to fix.

The probes never build anything: nerfacc's CUDA extension is reported as prebuilt, already built,
buildable (``nvcc`` found), locked (torch's build lock left by a killed build) or unavailable from
the files alone, using :mod:`dreamperp.scene.nerfacc_cuda`. The memory estimate builds the prior on
PyTorch's ``meta`` device (shapes only, no weights, no memory) and counts its parameters, the
activations the VAE encoder keeps for the backward pass and the UNet's largest intermediate; the
scene's share comes from one small render on the CPU, scaled to the training resolution.

``--bench`` times training steps stage by stage (:func:`bench`); ``tools/bench_step.py`` calls it.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from dreamperp import __version__
from dreamperp.config import Config, load_config
from dreamperp.errors import UsageError, first_line

#: Version of the ``--json`` report's layout: bump it when a key changes meaning or goes away.
SCHEMA_VERSION = 1
#: Top-level keys of the report, in order (tests pin them: scripts read them).
REPORT_KEYS = (
    "schema", "dreamperp", "config", "python", "torch", "gpus", "device", "encoding", "nerfacc", "estimator",
    "ffmpeg", "ray", "model", "disk", "memory", "ok", "problem", "problems", "warnings",
)
GIB = 2**30
MIN_FREE_DISK = 2 * GIB  # checkpoints, validation grids, a mesh and a video of one run
DEFAULT_BENCH_PROMPT = "a DSLR photo of a corgi"
# Dense fp16/bf16 tensor-core peak in TFLOP/s (vendor data sheets, without sparsity), by name part.
GPU_PEAK_TFLOPS: Tuple[Tuple[str, float], ...] = (
    ("H200", 989.0), ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0),  # "H100 80GB HBM3" is the SXM card
    ("GH200", 989.0), ("B200", 2250.0), ("A100", 312.0), ("A800", 312.0), ("L40S", 362.0), ("L40", 181.0),
    ("L4", 121.0), ("A10G", 70.0), ("A10", 125.0), ("RTX 4090", 165.0), ("RTX 3090", 71.0), ("V100", 125.0), ("T4", 65.0),
)


# ------------------------------------------------------------------------------------- probes
# Each probe is a module-level function so tests can stand in for a CUDA machine (monkeypatch).
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
    try:
        prebuilt = importlib.util.find_spec("nerfacc.csrc") is not None
    except (ImportError, ValueError):
        prebuilt = False
    if prebuilt:
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


def hub_model_facts(model_id: str) -> Optional[Dict[str, Any]]:
    """Gated or not and the download size of what dreamperp fetches, from the hub; None offline or
    on any failure (the hub is optional here)."""
    from dreamperp.models.loading import hub_offline

    if hub_offline():
        return None
    try:
        from huggingface_hub import HfApi
        from huggingface_hub.errors import RepositoryNotFoundError

        info = HfApi().model_info(model_id, files_metadata=True, timeout=10)
    except RepositoryNotFoundError:
        return {"gated": None, "download_bytes": None, "error": f"model '{model_id}' was not found on the Hugging Face hub"}
    except Exception as err:  # unreachable hub, gated without a token, ...: reported, not fatal
        return {"gated": None, "download_bytes": None, "error": f"the Hugging Face hub could not be asked about '{model_id}' ({first_line(err)[:120]})"}
    wanted = ("model_index.json", "unet/", "vae/", "text_encoder/", "tokenizer/", "scheduler/")
    size = 0
    for f in info.siblings or []:
        name = f.rfilename
        if name.startswith(wanted) and ".fp16." not in name and not name.endswith((".bin", ".ckpt", ".msgpack", ".onnx")):
            size += int(getattr(f, "size", 0) or 0)
    return {"gated": bool(info.gated), "download_bytes": size or None, "error": None}


# ------------------------------------------------------------------------------------ sections
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


def folder_bytes(folder: Path) -> int:
    """Bytes of the files under ``folder``, symlinks followed (the hub cache links into blobs/)."""
    total = 0
    for p in folder.rglob("*"):
        try:
            if p.is_file():
                total += p.stat().st_size
        except OSError:
            pass
    return total


def model_section(cfg: Config) -> Tuple[Dict[str, Any], Optional[str]]:
    """The prior of ``cfg``: where it comes from and whether it is here. Returns (section, problem)."""
    from dreamperp.models import loading
    from dreamperp.models.tiny import MODEL_NAMES, tiny_model_path

    model = str(cfg.guidance.model).strip()
    sec: Dict[str, Any] = {"name": model, "kind": None, "loads": model, "withdrawn": False, "successor": None,
                           "cached": None, "path": None, "size_bytes": None, "gated": None, "download_bytes": None}
    if cfg.data.type != "text":
        return {**sec, "kind": "none", "loads": None, "why": "data.type=multiview trains without a prior"}, None
    if model in MODEL_NAMES:
        path = tiny_model_path(layout=MODEL_NAMES[model])  # seconds, offline: what any run does first
        return {**sec, "kind": "tiny", "cached": True, "path": str(path), "size_bytes": folder_bytes(path), "gated": False}, None
    if model == "toy":
        path = loading.toy_prior_path()
        if not (path / "model_index.json").is_file():
            return {**sec, "kind": "toy", "cached": False}, f"the toy prior is missing from '{path}'"
        return {**sec, "kind": "toy", "cached": True, "path": str(path), "size_bytes": folder_bytes(path), "gated": False}, None
    if Path(model).expanduser().exists() or loading.looks_like_path(model):
        folder = Path(model).expanduser()
        sec.update(kind="folder", path=str(folder))
        try:
            loading.check_pipeline_folder(folder)
        except UsageError as err:
            return {**sec, "cached": False}, str(err)
        return {**sec, "cached": True, "size_bytes": folder_bytes(folder), "gated": False}, None
    sec.update(kind="hub", successor=loading.WITHDRAWN_MODELS.get(model), withdrawn=model in loading.WITHDRAWN_MODELS)
    try:
        choice = loading.choose_hub_model(model)
    except UsageError as err:  # withdrawn, neither cached, offline
        return {**sec, "cached": False}, str(err)
    sec["loads"] = choice.model
    if choice.note:
        sec["note"] = choice.note
    snapshot = loading.cached_snapshot(choice.model)
    facts = hub_model_facts(choice.model) if snapshot is None or not choice.successor else None
    if facts:
        sec.update(gated=facts["gated"], download_bytes=facts["download_bytes"])
    if snapshot is not None:
        return {**sec, "cached": True, "path": str(snapshot), "size_bytes": folder_bytes(snapshot)}, None
    sec["cached"] = False
    if loading.hub_offline():
        return sec, (
            f"model '{choice.model}' is not in the Hugging Face cache and the hub is offline (HF_HUB_OFFLINE=1): fetch it once "
            f"with network access, `HF_HUB_OFFLINE=0 dreamperp doctor --fetch {choice.model}`"
        )
    if facts and facts["error"]:
        if "not found" in facts["error"]:
            return sec, f"{facts['error']}: check guidance.model, or point it at a local diffusers folder"
        sec["why"] = f"{facts['error']}: the first run downloads the weights and needs it"
    if facts and facts["gated"] and not os.environ.get("HF_TOKEN"):
        sec["why"] = "gated: accept its licence on the hub and run `hf auth login` before the first run"
    return sec, None


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


# ------------------------------------------------------------------------------ memory estimate
def _read_json(path: Path) -> Dict[str, Any]:
    return {k: v for k, v in json.loads(path.read_text(encoding="utf-8")).items() if not k.startswith("_")}


def _meta_prior(model_section_: Dict[str, Any], dtype: Any) -> Tuple[Any, Any, Any, str]:
    """UNet, VAE (None in pixel space) and text encoder of the prior on the meta device, from the
    model folder's configs, or the SD 2.1-base architecture when the weights are not here."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.utils import logging as diffusers_logging

    from dreamperp.models.full_size import SD21_BASE_TEXT, SD21_BASE_UNET, SD21_BASE_VAE

    folder = Path(model_section_["path"]) if model_section_.get("path") else None
    verbosity = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    try:
        with torch.device("meta"):
            if folder is None:
                import transformers

                unet = UNet2DConditionModel(**SD21_BASE_UNET)
                vae = AutoencoderKL(**SD21_BASE_VAE)
                text = transformers.CLIPTextModel(transformers.CLIPTextConfig(**SD21_BASE_TEXT))
                source = "SD 2.1-base architecture (weights not here)"
            else:
                import transformers

                unet = UNet2DConditionModel.from_config(_read_json(folder / "unet" / "config.json"))
                vae = AutoencoderKL.from_config(_read_json(folder / "vae" / "config.json")) if (folder / "vae").is_dir() else None
                text_cfg = transformers.AutoConfig.from_pretrained(folder / "text_encoder")
                text = transformers.AutoModel.from_config(text_cfg)
                source = "the model's configs"
        for m in (unet, vae, text):
            if m is not None:
                m.to(dtype).requires_grad_(False)
    finally:
        diffusers_logging.set_verbosity(verbosity)
    return unet, vae, text, source


def _rows_per_sample(cfg: Config) -> int:
    """UNet rows per sample in the one batched call: uncond, positive, the Perp-Neg negatives, SEGA concepts."""
    g = cfg.guidance
    return 2 + (2 if g.perp_neg.enabled else 0) + len(g.sega.concepts)


def prior_costs(cfg: Config, model_sec: Dict[str, Any], dtype: Any) -> Dict[str, Any]:
    """Parameter bytes, the encoder's saved activations, the UNet's largest intermediate and the
    FLOPs of one step's prior work (UNet forward on every row; VAE encoder forward and backward to
    its input), all traced on the meta device."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    unet, vae, text, source = _meta_prior(model_sec, dtype)
    b = cfg.data.batch_size
    vae_scale = 2 ** (len(vae.config.block_out_channels) - 1) if vae is not None else 1
    size = int(unet.config.sample_size) * vae_scale
    rows = _rows_per_sample(cfg) * b

    def nbytes(m: Any) -> int:
        return sum(p.numel() * p.element_size() for p in m.parameters()) if m is not None else 0

    saved: Dict[int, int] = {}
    largest = [0]

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved[id(t)] = t.numel() * t.element_size()
        return t

    encode_flops = 0
    if vae is not None:
        x = torch.empty(b, 3, size, size, device="meta", dtype=dtype, requires_grad=True)
        with FlopCounterMode(display=False) as fc:
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                z = vae.encode(x).latent_dist.mean
            z.sum().backward()
        encode_flops = fc.get_total_flops()

    def watch(_m: Any, _i: Any, out: Any) -> None:
        if isinstance(out, torch.Tensor):
            largest[0] = max(largest[0], out.numel() * out.element_size())

    hooks = [m.register_forward_hook(watch) for m in unet.modules()]
    latent = int(unet.config.sample_size)
    cross = unet.config.cross_attention_dim
    cross = cross[0] if isinstance(cross, (list, tuple)) else cross
    try:
        with FlopCounterMode(display=False) as fc, torch.no_grad():
            unet(torch.empty(rows, unet.config.in_channels, latent, latent, device="meta", dtype=dtype),
                 torch.zeros(rows, device="meta", dtype=torch.long),
                 encoder_hidden_states=torch.empty(rows, 77, int(cross), device="meta", dtype=dtype))
        unet_flops = fc.get_total_flops()
    finally:
        for h in hooks:
            h.remove()
    return {
        "source": source, "resolution": size, "unet_rows": rows,
        "unet_bytes": nbytes(unet), "vae_bytes": nbytes(vae), "text_encoder_bytes": nbytes(text),
        "encode_saved_bytes": sum(saved.values()), "encode_largest_bytes": max(saved.values(), default=0),
        "unet_largest_bytes": largest[0], "flops": int(unet_flops + encode_flops),
        "unet_flops": int(unet_flops), "encode_flops": int(encode_flops),
    }


def scene_bytes(cfg: Config) -> int:
    """Scene parameters with their gradients and Adam moments, plus the tensors one training render
    keeps for backward: measured on the CPU at 16x16 pixels and scaled to the training size (the dense
    sampler's sample count; the occupancy grid on CUDA keeps fewer)."""
    import torch

    from dreamperp.cameras import camera_rays, sample_cameras
    from dreamperp.scene import Scene, render

    saved: Dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        try:
            storage = t.untyped_storage()
            saved[storage.data_ptr()] = storage.nbytes()
        except (RuntimeError, NotImplementedError):
            saved[id(t)] = t.numel() * t.element_size()
        return t

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # the same cameras every time: the estimate does not wander
        scene = Scene.from_config(_cpu_scene_config(cfg), device=torch.device("cpu"))
        cams = sample_cameras(cfg.data, 1, 16, 16, torch.device("cpu"), step=0)
        o, d = camera_rays(cams)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            render(scene, o, d, shading="lambertian", light_pos=cams.c2w[:, :3, 3], train=True, need_normals=True)
    params = sum(p.numel() * p.element_size() for p in scene.parameters())
    h, w = cfg.data.height, cfg.data.width
    if cfg.data.upscale_step >= 0:
        h, w = max(h, cfg.data.upscale_height), max(w, cfg.data.upscale_width)
    scale = h * w * cfg.data.batch_size / 256.0
    return int(4 * params + sum(saved.values()) * scale)


def _cpu_scene_config(cfg: Config) -> Config:
    import copy

    local = copy.deepcopy(cfg)
    local.device = "cpu"
    local.scene.encoding = "torch"
    local.render.estimator = "dense"
    return local


def memory_section(cfg: Config, device_type: str, model_sec: Dict[str, Any], gpus: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Estimated peak memory of one training step against the free memory of the run's device."""
    import torch

    from dreamperp.models.loading import as_dtype

    dtype = as_dtype(cfg.guidance.dtype, torch.device(device_type))
    parts: Dict[str, Any] = {}
    if cfg.data.type == "text" and model_sec.get("kind") != "none":
        costs = prior_costs(cfg, model_sec, dtype)
        parts["prior"] = costs
        weights = costs["unet_bytes"] + costs["vae_bytes"]
        # Backward through the encoder holds its saved tensors plus about two gradient buffers of the largest.
        activations = costs["encode_saved_bytes"] + 2 * costs["encode_largest_bytes"] + 3 * costs["unet_largest_bytes"]
        start = weights + costs["text_encoder_bytes"]  # the text encoder leaves the GPU after the prompts are encoded
        if device_type != "cuda":
            weights += costs["text_encoder_bytes"]
    else:
        weights = activations = start = 0
    scene = scene_bytes(cfg)
    context = int(0.5 * GIB) if device_type == "cuda" else 0  # CUDA context, cuBLAS/cuDNN workspaces
    peak = max(start, weights + activations + scene)
    estimate = int(1.1 * peak) + context  # allocator rounding and fragmentation
    free = gpus[0]["free_bytes"] if device_type == "cuda" and gpus else host_free_memory()
    return {"device": device_type, "estimated_peak_bytes": estimate, "free_bytes": free,
            "parts": {"weights": weights, "activations": activations, "scene": scene, "context": context}, "dtype": str(dtype).replace("torch.", ""),
            "prior": parts.get("prior")}


# ------------------------------------------------------------------------------------- report
def _gib(n: Optional[float]) -> str:
    if n is None:
        return "?"
    return f"{n / GIB:.2f} GiB" if n >= GIB / 4 else f"{n / 2**20:.0f} MiB"


def diagnose(cfg: Optional[Config], config_label: Optional[str] = None, *, estimate_memory: bool = True) -> Dict[str, Any]:
    """The doctor's report for ``cfg`` on this machine (``cfg`` None: the machine only)."""
    report: Dict[str, Any] = {k: None for k in REPORT_KEYS}
    problems: List[str] = []
    warnings: List[str] = []
    gpus = gpu_info()
    report.update(
        schema=SCHEMA_VERSION, dreamperp=__version__, config=config_label,
        python={"version": platform.python_version(), "executable": sys.executable},
        torch=torch_info(), gpus=gpus, ffmpeg=ffmpeg_info(), ray=ray_info(), nerfacc=nerfacc_info(),
    )
    setting = cfg.device if cfg is not None else "auto"
    if setting in ("auto", None):
        device_type = "cuda" if gpus else "cpu"
    else:
        device_type = "cuda" if str(setting).startswith("cuda") else str(setting)
        if device_type == "cuda" and not gpus:
            problems.append("device=cuda but this machine has no usable CUDA device: set device=auto or device=cpu")
            device_type = "cpu"
    report["device"] = {"setting": setting, "resolves_to": device_type}
    enc = cfg.scene.encoding if cfg is not None else "auto"
    est = cfg.render.estimator if cfg is not None else "auto"
    report["encoding"] = encoding_choice(enc, device_type)
    report["estimator"] = estimator_choice(est, device_type, report["nerfacc"])
    if report["encoding"]["resolves_to"] is None:
        problems.append(f"scene.encoding=tcnn but {report['encoding']['why']}: set scene.encoding=auto")
    if report["estimator"]["resolves_to"] is None:
        problems.append(f"render.estimator=occgrid but {report['estimator']['why']}: set render.estimator=auto")
    if cfg is not None:
        model_sec, problem = model_section(cfg)
        report["model"] = {**model_sec, "problem": problem}
        if problem:
            problems.append(problem)
        for key in ("note", "why"):
            if model_sec.get(key) and model_sec.get("kind") in ("hub",):
                warnings.append(model_sec[key])
        report["disk"] = disk_section(cfg.output_dir)
        free_disk = report["disk"]["free_bytes"]
        if free_disk is not None and free_disk < MIN_FREE_DISK:
            problems.append(f"only {_gib(free_disk)} free under output_dir '{cfg.output_dir}': free some space or set output_dir elsewhere")
        if cfg.trainer.video_at_end and not report["ffmpeg"]["available"]:
            warnings.append("imageio-ffmpeg is missing: the run trains but writes no video (pip install imageio-ffmpeg)")
        if estimate_memory:
            mem = memory_section(cfg, device_type, model_sec, gpus)
            report["memory"] = mem
            if mem["free_bytes"] is not None and mem["estimated_peak_bytes"] > mem["free_bytes"]:
                where = "GPU" if device_type == "cuda" else "host"
                problems.append(
                    f"too little {where} memory: the run needs about {_gib(mem['estimated_peak_bytes'])}, {_gib(mem['free_bytes'])} is free; "
                    f"lower data.width/data.height, data.batch_size or render.num_samples, or use guidance.dtype=float16"
                )
    report["ok"] = not problems
    report["problem"] = problems[0] if problems else None
    report["problems"] = problems
    report["warnings"] = warnings
    return report


def format_report(report: Dict[str, Any]) -> str:
    """The report as a two-column table (what, finding) and a verdict line."""
    rows: List[Tuple[str, str]] = []
    t = report["torch"]
    rows.append(("dreamperp", str(report["dreamperp"])))
    rows.append(("python", f"{report['python']['version']} ({report['python']['executable']})"))
    rows.append(("torch", f"{t['version']}, {t['build']}"))
    if not report["gpus"]:
        rows.append(("GPU", "none (CUDA not available to torch)"))
    for g in report["gpus"]:
        rows.append((f"GPU {g['index']}", f"{g['name']}, {_gib(g['memory_bytes'])} ({_gib(g['free_bytes'])} free), "
                                          f"compute {g['capability']}, bf16 {'yes' if g['bf16'] else 'no'}, fp16 {'yes' if g['fp16'] else 'no'}"))
    d = report["device"]
    rows.append(("device", f"{d['setting']} -> {d['resolves_to']}"))
    e = report["encoding"]
    rows.append(("scene.encoding", f"{e['setting']} -> {e['resolves_to'] or 'cannot run'} ({e['why']}; tinycudann "
                                   f"{'importable' if e['tinycudann'] else 'not importable'})"))
    n = report["nerfacc"]
    rows.append(("nerfacc CUDA ext", f"{n['state']}: {n['why']}"))
    r = report["estimator"]
    rows.append(("render.estimator", f"{r['setting']} -> {r['resolves_to'] or 'cannot run'} ({r['why']})"))
    f = report["ffmpeg"]
    rows.append(("imageio-ffmpeg", f["path"] if f["available"] else f"missing ({f['why']}): no videos"))
    ray = report["ray"]
    rows.append(("ray", f"{ray['version'] or 'installed'}" if ray["installed"] else "not installed (dreamperp batch --engine ray needs it)"))
    m = report["model"]
    if m is not None:
        if m["kind"] == "none":
            rows.append(("guidance.model", m["why"]))
        else:
            where = f"cached, {_gib(m['size_bytes'])} in {m['path']}" if m["cached"] else "not in the cache"
            if not m["cached"] and m.get("download_bytes"):
                where += f" (downloads {_gib(m['download_bytes'])} on first use)"
            gated = {True: "gated", False: "not gated", None: "gated: unknown (hub not asked)"}[m["gated"]] if m["kind"] == "hub" else ""
            rows.append(("guidance.model", f"{m['name']} ({m['kind']}): {where}" + (f"; {gated}" if gated else "")))
            if m["withdrawn"]:
                rows.append(("withdrawn id", f"{m['name']} -> {m['successor']}; loads {m['loads'] or m['successor']}"))
    if report["disk"] is not None:
        rows.append(("free disk", f"{_gib(report['disk']['free_bytes'])} under {report['disk']['output_dir']}"))
    mem = report["memory"]
    if mem is not None:
        p = mem["parts"]
        rows.append(("peak memory", f"~{_gib(mem['estimated_peak_bytes'])} estimated on {mem['device']} ({mem['dtype']}; weights {_gib(p['weights'])}, "
                                    f"prior activations {_gib(p['activations'])}, scene {_gib(p['scene'])}) vs {_gib(mem['free_bytes'])} free"))
    width = max(len(k) for k, _ in rows)
    lines = [f"{k.ljust(width)}  {v}" for k, v in rows]
    lines += [f"warning: {w}" for w in report["warnings"]]
    lines.append("verdict: this config can run here" if report["ok"] else f"verdict: cannot run here: {report['problem']}")
    if report["config"] is None:
        lines[-1] = "verdict: machine checked; give a CONFIG to check a run" if report["ok"] else lines[-1]
    return "\n".join(lines)


# -------------------------------------------------------------------------------------- bench
STAGES = ["camera+render", "encode", "unet", "combine", "backward", "optimizer", "other"]


class StepClock:
    """Marks named instants of a step; on CUDA each mark synchronises first (benchmarks only)."""

    def __init__(self, device: Any):
        self.device = device
        self.marks: List[Tuple[str, float]] = []
        self.unet_rows = 0

    def mark(self, name: str) -> None:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.marks.append((name, time.perf_counter()))

    def wrap(self, fn: Callable, begin: str, end: str) -> Callable:
        def timed(*args: Any, **kwargs: Any) -> Any:
            self.mark(begin)
            out = fn(*args, **kwargs)
            self.mark(end)
            return out

        return timed

    def stages(self) -> Dict[str, float]:
        """Seconds per stage from the marks of one step."""
        t: Dict[str, float] = {}
        for name, at in self.marks:
            t.setdefault(name, at)  # first occurrence
        last = {name: at for name, at in self.marks}
        out = {
            "camera+render": t["encode_begin"] - t["step_begin"],
            "encode": last["encode_end"] - t["encode_begin"],
            "unet": sum(b - a for (n1, a), (n2, b) in zip(self.marks, self.marks[1:]) if n1 == "unet_begin" and n2 == "unet_end"),
            "backward": t["opt_begin"] - last["sds_end"],
            "optimizer": last["opt_end"] - t["opt_begin"],
        }
        out["combine"] = (last["sds_end"] - t["encode_begin"]) - out["encode"] - out["unet"]
        out["other"] = (last["step_end"] - t["step_begin"]) - sum(out.values())
        out["total"] = last["step_end"] - t["step_begin"]
        return out


def instrument(trainer: Any, clock: StepClock) -> None:
    """Time the prior's stages by wrapping its methods, and the optimizer by hooks (training code unchanged)."""
    prior = trainer.prior
    prior.backend.encode_images = clock.wrap(prior.backend.encode_images, "encode_begin", "encode_end")
    prior.sds = clock.wrap(prior.sds, "sds_begin", "sds_end")
    unet = clock.wrap(prior.unet_forward, "unet_begin", "unet_end")

    def counting_unet(x: Any, *args: Any, **kwargs: Any) -> Any:
        clock.unet_rows = x.shape[0]
        return unet(x, *args, **kwargs)

    prior.unet_forward = counting_unet
    trainer.optimizer.register_step_pre_hook(lambda *a: clock.mark("opt_begin"))
    trainer.optimizer.register_step_post_hook(lambda *a: clock.mark("opt_end"))


RANDOM_TAESD = "taesd-random-v1"  # folder name under the dreamperp cache


def tiny_encoder_here(model: str) -> bool:
    """Whether AutoencoderTiny ``model`` (hub id or folder) loads without the network."""
    if Path(model).expanduser().is_dir():
        return True
    from huggingface_hub import try_to_load_from_cache

    from dreamperp.models.loading import hub_cache_dir

    try:
        return isinstance(try_to_load_from_cache(model, "config.json", cache_dir=hub_cache_dir()), str)
    except (OSError, ValueError):
        return False


def random_tiny_encoder() -> Path:
    """A folder with diffusers' AutoencoderTiny (the TAESD architecture) in random weights, written
    once into the dreamperp cache: speed does not depend on weight values."""
    import tempfile

    import torch
    from diffusers import AutoencoderTiny

    from dreamperp.models.tiny import cache_root

    final = cache_root() / RANDOM_TAESD
    if (final / "config.json").is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=final.name + ".tmp-", dir=final.parent))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        AutoencoderTiny().save_pretrained(tmp)
    try:
        os.rename(tmp, final)
    except OSError:  # another process was first
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def build_bench_trainer(cfg: Config, full_size: bool) -> Any:
    """A Trainer for ``cfg``; with ``full_size`` its prior is the SD 2.1-base architecture with random
    weights. ``guidance.encoder: tiny`` without TAESD's weights here gets TAESD with random weights
    (``cfg.guidance.tiny_encoder_model`` is pointed at it)."""
    from dreamperp.train.trainer import Trainer

    if cfg.data.type != "text":
        raise UsageError("--bench times text-to-3D steps: use a config with data.type=text")
    if cfg.guidance.encoder == "tiny" and not tiny_encoder_here(cfg.guidance.tiny_encoder_model):
        cfg.guidance.tiny_encoder_model = str(random_tiny_encoder())
    prior = None
    if full_size:
        from dreamperp.device import resolve_device
        from dreamperp.guidance.prior import load_prior
        from dreamperp.models.full_size import full_size_components

        device = resolve_device(cfg.device)
        prior = load_prior(cfg.guidance, cfg.prompt, cfg.negative_prompt, device, components=full_size_components(device, cfg.guidance.dtype))
    return Trainer(cfg, prior=prior)


def peak_tflops(gpu_name: str) -> Optional[float]:
    """Dense fp16/bf16 tensor-core peak of a GPU by name (None when unknown)."""
    for part, tflops in GPU_PEAK_TFLOPS:
        if part.lower() in gpu_name.lower():
            return tflops
    return None


def physical_floor(flops: float, tflops: float, step_s: float) -> Tuple[float, float]:
    """(seconds the step's ``flops`` take at ``tflops`` TFLOP/s, that time over the measured ``step_s``)."""
    floor = flops / (tflops * 1e12)
    return floor, floor / step_s


def bench(cfg: Config, steps: int = 30, warmup: int = 5, full_size: bool = False, flops: Optional[int] = None) -> Dict[str, Any]:
    """Time ``steps`` training steps of ``cfg`` after ``warmup`` untimed ones. Returns the per-stage
    medians (seconds), it/s, peak memory, and for a GPU the fraction of the physical floor (``flops``
    of the prior's work in one step over the GPU's peak)."""
    import torch

    if steps < 1 or warmup < 0:
        raise UsageError(f"--steps must be >= 1 and --warmup >= 0, got {steps} and {warmup}")
    trainer = build_bench_trainer(cfg, full_size)
    random_encoder = cfg.guidance.encoder == "tiny" and cfg.guidance.tiny_encoder_model.endswith(RANDOM_TAESD)
    device = trainer.device
    clock = StepClock(device)
    instrument(trainer, clock)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    rows: List[Dict[str, float]] = []
    for i in range(warmup + steps):
        clock.marks.clear()
        clock.mark("step_begin")
        trainer.train_step()
        clock.mark("step_end")
        if i >= warmup:
            rows.append(clock.stages())
    med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    if device.type == "cuda":
        peak = int(torch.cuda.max_memory_allocated(device))
        name = torch.cuda.get_device_name(device)
    else:
        import resource

        peak = int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)  # Linux: KiB
        name = platform.processor() or platform.machine()
    result: Dict[str, Any] = {
        "device": device.type, "device_name": name, "torch": torch.__version__, "cuda": getattr(torch.version, "cuda", None),
        "threads": torch.get_num_threads(), "prior": "SD 2.1-base architecture, random weights" if full_size else cfg.guidance.model,
        "dtype": str(trainer.prior.dtype).replace("torch.", ""), "resolution": trainer.prior.resolution,
        "render": [cfg.data.width, cfg.data.height], "batch_size": cfg.data.batch_size, "perp_neg": cfg.guidance.perp_neg.enabled,
        "compile": cfg.guidance.compile, "sampler": trainer.scene.sampler,
        "encoder": cfg.guidance.encoder + (" (random weights)" if random_encoder else ""),
        "warmup": warmup, "steps": len(rows), "unet_rows_per_sample": clock.unet_rows // cfg.data.batch_size,
        "stages_s": {k: med[k] for k in STAGES}, "step_s": med["total"],
        "it_s": len(rows) / sum(r["total"] for r in rows), "it_s_median": 1.0 / med["total"],
        "outside_prior_share": (med["camera+render"] + med["backward"] + med["optimizer"]) / med["total"],
        "peak_memory_bytes": peak, "peak_memory_kind": "GPU (max allocated)" if device.type == "cuda" else "process (max RSS)",
        "flops": flops, "peak_tflops": None, "floor_s": None, "floor_fraction": None,
    }
    if device.type == "cuda" and flops:
        tflops = peak_tflops(name)
        if tflops:
            floor, fraction = physical_floor(flops, tflops, med["total"])
            result.update(peak_tflops=tflops, floor_s=floor, floor_fraction=fraction)
    return result


def format_bench(res: Dict[str, Any], label: str = "") -> str:
    lines = [
        f"config: {label}",
        f"device: {res['device_name']} ({res['device']}, torch {res['torch']}, {res['threads']} CPU threads)",
        f"prior: {res['prior']}, dtype {res['dtype']}, resolution {res['resolution']}; render {res['render'][0]}x{res['render'][1]}, "
        f"batch {res['batch_size']}, Perp-Neg {'on' if res['perp_neg'] else 'off'}, sampler {res['sampler']}, "
        f"encoder {res['encoder']}, compile {'on' if res['compile'] else 'off'}",
        f"steps: {res['warmup']} warm-up + {res['steps']} timed (median per stage); UNet rows per sample: {res['unet_rows_per_sample']}",
        "",
        "| stage | ms | share |",
        "| --- | ---: | ---: |",
    ]
    total = res["step_s"]
    for stage in STAGES:
        s = res["stages_s"][stage]
        lines.append(f"| {stage} | {s * 1e3:.2f} | {100 * s / total:.0f}% |")
    lines.append(f"| **step** | **{total * 1e3:.2f}** | 100% |")
    lines.append("")
    lines.append(f"it/s: {res['it_s']:.2f} (mean over timed steps), {res['it_s_median']:.2f} (median step)")
    lines.append(f"outside the prior forward (render + backward + optimizer): {100 * res['outside_prior_share']:.0f}% of the step")
    if res["device"] == "cuda":
        lines.append(f"peak GPU memory: {res['peak_memory_bytes'] / GIB:.2f} GiB")
    else:
        lines.append(f"peak process memory (max RSS): {res['peak_memory_bytes'] / GIB:.2f} GiB")
    if res["flops"]:
        amount = f"{res['flops'] / 1e12:.2f} TFLOP" if res["flops"] >= 1e11 else f"{res['flops'] / 1e9:.2f} GFLOP"
        work = f"work: {amount} per step (UNet on every row + VAE encoder forward/backward)"
        if res["floor_fraction"] is not None:
            work += (f"; at {res['peak_tflops']:.0f} TFLOP/s the floor is {res['floor_s'] * 1e3:.1f} ms, "
                     f"this step runs at {100 * res['floor_fraction']:.0f}% of it")
        lines.append(work)
    return "\n".join(lines)


def bench_config(cfg: Config) -> Config:
    """``cfg`` made ready to time: no progress bar, a prompt when it has none."""
    cfg.trainer.progress = False
    if cfg.data.type == "text" and not cfg.prompt.strip():
        cfg.prompt = DEFAULT_BENCH_PROMPT
    return cfg


def run_bench(cfg: Config, report: Dict[str, Any], steps: int, warmup: int, full_size: Optional[bool] = None) -> Dict[str, Any]:
    """:func:`bench` with the full-size random architecture when the weights are not here (or asked
    for), and the FLOPs of the prior's work taken from the meta-device trace."""
    import torch

    from dreamperp.models.loading import as_dtype

    model = report.get("model") or {}
    if full_size is None:
        full_size = model.get("kind") in ("hub", "folder") and not model.get("cached")
    device_type = report["device"]["resolves_to"]
    if full_size:
        model = {**model, "path": None}
    elif model.get("kind") == "hub" and model.get("cached"):
        cfg.guidance.model = model["loads"]  # a withdrawn id's successor: load it without the note
    costs = prior_costs(cfg, model, as_dtype(cfg.guidance.dtype, torch.device(device_type)))
    return bench(cfg, steps, warmup, full_size, flops=costs["flops"])


# ------------------------------------------------------------------------------------ command
def doctor_command(args: argparse.Namespace) -> int:
    """``dreamperp doctor [CONFIG] [key=value ...] [--json] [--bench [--steps N]] | --fetch MODEL``."""
    if getattr(args, "fetch", None):
        from dreamperp.models.loading import resolve_model

        folder = resolve_model(args.fetch)
        print(folder)
        return 0
    overrides = list(getattr(args, "overrides", None) or [])
    config = args.config
    if config and "=" in config and not Path(config).is_file():
        config, overrides = None, [config, *overrides]
    if args.bench and config is None:
        raise UsageError("--bench needs a config, e.g. dreamperp doctor configs/tiny.yaml --bench")
    cfg = load_config(config, overrides, require_prompt=False) if (config or overrides) else None
    if cfg is not None and args.bench:
        bench_config(cfg)
    report = diagnose(cfg, config or ("schema defaults" if cfg is not None else None))
    if args.bench and cfg is not None:
        model = report["model"] or {}
        substitute = bool(args.full_size) or (model.get("kind") in ("hub", "folder") and not model.get("cached"))
        # The full-size architecture with random weights stands in for weights that are not here.
        blockers = [p for p in report["problems"] if not (substitute and p == model.get("problem"))]
        if blockers:
            report["bench"] = None
        else:
            report["bench"] = run_bench(cfg, report, args.steps, args.warmup, substitute)
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=False))
    else:
        print(format_report(report))
        if "bench" in report:
            print()
            print(format_bench(report["bench"], " ".join([config or "", *overrides]).strip()))
    if report.get("bench"):
        return 0  # the timing asked for was taken (the verdict above still says what a real run lacks)
    if not report["ok"]:
        if not args.json:
            print(f"dreamperp doctor: error: {report['problem']}", file=sys.stderr)
        return 2
    return 0


def random_weight_run(config: str, overrides: List[str], run_dir: str, full_size: bool = True) -> int:
    """Train ``config`` in ``run_dir`` with the full-size prior in random weights, then export its
    mesh and video as ``dreamperp train`` does: the whole pipeline's speed and memory without the
    real weights (``tools/gpu_check.sh``). Returns the exit code."""
    from dreamperp.runs.folder import RunDir
    from dreamperp.train.loop import TrainLoop
    from dreamperp.train_command import export_at_end

    cfg = load_config(config, overrides)
    trainer = build_bench_trainer(cfg, full_size=full_size)
    run = RunDir(Path(run_dir))
    for sub in (run.ckpt_dir, run.val_dir, run.export_dir):
        sub.mkdir(parents=True, exist_ok=True)
    run.write_config(cfg)
    with run.lock():
        code = TrainLoop(trainer, run).fit()
        if code == 0:
            export_at_end(trainer, run)
    return code
