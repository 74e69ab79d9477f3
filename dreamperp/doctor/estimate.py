"""The run's peak memory and the prior's FLOPs per step, estimated without weights (docs/design.md §13).

The prior is built on PyTorch's ``meta`` device (shapes only, no weights, no memory): its
parameters are counted, and the activations the VAE encoder keeps for the backward pass and the
UNet's largest intermediate are traced, with torch's FLOP counter running. The scene's share comes
from one small render on the CPU, scaled to the training resolution.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Tuple

from dreamperp.config import Config
from dreamperp.doctor.probes import GIB, host_free_memory


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
