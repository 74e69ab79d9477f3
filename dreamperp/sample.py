"""2D text-to-image sampling with Perp-Neg and SEGA guidance (``dreamperp sample``).

The denoising loop uses the prior's guided score (:mod:`dreamperp.guidance.score`) and its backend
(decode, sampling shape), so the guidance is the code SDS trains with, for every model family.
With SEGA concepts and no view it reproduces diffusers' ``SemanticStableDiffusionPipeline``
(same noise from the seed, scheduler, guidance and 8-bit rounding).
"""

from __future__ import annotations

import argparse
import inspect
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any, List, Sequence

import numpy as np

from dreamperp.config import Config, SampleConfig, check_prompt, load_config
from dreamperp.errors import ConfigError, UsageError
from dreamperp.files import atomic_write_bytes
from dreamperp.images import make_grid, png_bytes, to_uint8

#: Keys of the ``sample`` section that may be given without the ``sample.`` prefix.
SHORTHAND_KEYS = tuple(f.name for f in fields(SampleConfig))


def rewrite_shorthand(overrides: Sequence[str]) -> List[str]:
    """``view=back`` → ``sample.view=back`` (same for azimuth, elevation, steps, num_images, ...)."""
    out = []
    for item in overrides:
        key, sep, value = item.partition("=")
        out.append(f"sample.{key.strip()}{sep}{value}" if sep and key.strip() in SHORTHAND_KEYS else item)
    return out


def scheduler_class(name: str) -> Any:
    """The diffusers scheduler class called ``name``, or None for ''. ConfigError for anything else."""
    if not name:
        return None
    import diffusers
    from diffusers.schedulers.scheduling_utils import SchedulerMixin

    cls = getattr(diffusers, name, None)
    if not (isinstance(cls, type) and issubclass(cls, SchedulerMixin)):
        raise ConfigError(
            "sample.scheduler",
            f"unknown diffusers scheduler {name!r} (e.g. DDIMScheduler, EulerDiscreteScheduler, DPMSolverMultistepScheduler; empty: the model's own)",
        )
    return cls


def make_scheduler(default: Any, name: str, **overrides: Any) -> Any:
    """A fresh scheduler: ``default``'s class, or the diffusers class ``name``, with ``default``'s
    config updated by ``overrides`` (e.g. the backend's ``prediction_type='epsilon'``)."""
    cls = scheduler_class(name) or type(default)
    return cls.from_config(default.config, **overrides)


def _step_kwargs(scheduler: Any, generator: Any, eta: float) -> dict:
    # Same as diffusers' prepare_extra_step_kwargs: only pass what the scheduler's step accepts.
    params = set(inspect.signature(scheduler.step).parameters)
    kwargs = {}
    if "eta" in params:
        kwargs["eta"] = eta
    if "generator" in params:
        kwargs["generator"] = generator
    return kwargs


def view_weights(cfg: Config, batch: int) -> tuple[Any, Any]:
    """``(pos_mix, neg_weights)`` ``[batch, 4]`` on the CPU for ``sample.view``/``sample.azimuth``, or (None, None)."""
    import torch

    from dreamperp.guidance.views import named_view_mix, view_mix

    s, pn = cfg.sample, cfg.guidance.perp_neg
    if s.view:
        return named_view_mix(s.view, batch, pn, s.elevation, use_perp_neg=pn.enabled)
    if s.azimuth is not None:
        az = torch.full((batch,), float(s.azimuth))
        el = torch.full((batch,), float(s.elevation))
        return view_mix(pn, az, el)  # a requested azimuth is view-conditioned even without view_dependent
    return None, None


def _progress(items: Any, show: bool) -> Any:
    if not show:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc="sampling", leave=False)


def sample_images(cfg: Config, device: Any = None, prior: Any = None, show_progress: bool = False) -> np.ndarray:
    """Generate ``cfg.sample.num_images`` images; float32 ``[N, H, W, 3]`` in [0, 1].

    Noise comes from a CPU ``torch.Generator`` seeded with ``cfg.seed`` (as diffusers pipelines do
    with ``generator=torch.Generator().manual_seed(seed)``), so the images do not depend on the device.
    SEGA warm-up/cool-down count denoising steps here.
    """
    from dreamperp.device import resolve_device
    from dreamperp.guidance.prior import load_prior

    device = resolve_device(device if device is not None else cfg.device)
    if prior is None:
        prior = load_prior(cfg.guidance, cfg.prompt, cfg.negative_prompt, device)
    pos_mix, neg_weights = view_weights(cfg, cfg.sample.num_images)
    return denoise(prior, cfg.sample, pos_mix, neg_weights, cfg.sample.num_images, cfg.seed, show_progress)


def x0_limits(scheduler_config: Any) -> dict | None:
    """The x0 clipping rule of a pixel-space scheduler config, or None (latent models: no rule).

    ``{"clip": r}`` for ``clip_sample`` (x0 clamped to [-r, r]); ``{"ratio": p, "max": m}`` for
    ``thresholding`` (Imagen's dynamic thresholding, as DeepFloyd IF uses).
    """
    get = scheduler_config.get  # a diffusers scheduler's FrozenDict config
    if get("thresholding", False):
        return {"ratio": float(get("dynamic_thresholding_ratio", 0.995)), "max": float(get("sample_max_value", 1.0))}
    if get("clip_sample", False):
        return {"clip": float(get("clip_sample_range", 1.0))}
    return None


def clipped_epsilon(eps: Any, x: Any, alpha_bar: Any, limits: dict) -> Any:
    """ε whose x0 estimate is clipped by ``limits`` (see :func:`x0_limits`); docs/design.md §9.

    ``x`` ``[B, C, H, W]`` is the variance-preserving noisy sample, ``alpha_bar`` the cumulative
    alpha of its timestep: x0 = (x - sqrt(1-ᾱ) ε)/sqrt(ᾱ) is clipped, then ε is re-derived from the
    clipped x0, ε' = (x - sqrt(ᾱ) x0')/sqrt(1-ᾱ), so every scheduler steps with an ε and an x0 that
    agree. (diffusers' DDIM clips x0 but keeps the raw ε for its direction term unless
    ``use_clipped_model_output``: at guidance scales above ~3 that inconsistency turns pixel-space
    samples into colour noise.)
    """
    import torch

    dtype = eps.dtype  # fp16 on a GPU: the division by sqrt(1-ᾱ) near t=0 is done in (at least) float32
    work = torch.promote_types(dtype, torch.float32)
    eps, x = eps.to(work), x.to(work)
    a = torch.as_tensor(alpha_bar, device=eps.device).to(work)
    x0 = (x - (1 - a).sqrt() * eps) / a.sqrt()
    if "clip" in limits:
        x0 = x0.clamp(-limits["clip"], limits["clip"])
    else:  # per image: s = the ratio-quantile of |x0|, in [1, max]; x0 clamped to [-s, s], divided by s
        s = torch.quantile(x0.abs().flatten(1), limits["ratio"], dim=1).clamp(1.0, limits["max"])
        s = s.view(-1, *([1] * (x0.dim() - 1)))
        x0 = torch.maximum(torch.minimum(x0, s), -s) / s
    return ((x - a.sqrt() * x0) / (1 - a).sqrt()).to(dtype)


def denoise(
    prior: Any, s: SampleConfig, pos_mix: Any, neg_weights: Any, n: int, seed: int, show_progress: bool = False
) -> np.ndarray:
    """The 2D sampling loop: ``n`` images float32 ``[n, H, W, 3]`` in [0, 1] from a guided score.

    ``prior``: a :class:`~dreamperp.guidance.score.GuidedScore`; ``s``: steps, size, scheduler and
    eta; ``pos_mix``/``neg_weights``: ``[n, 4]`` view conditioning per image (None: the plain
    prompt); noise from a CPU generator seeded with ``seed``.
    """
    import torch
    from diffusers.utils.torch_utils import randn_tensor

    backend = prior.backend
    # The guided score returns ε for every model family, so the sampler steps an epsilon scheduler.
    # Pixel-space x0 clipping is done here (clipped_epsilon), consistently for every scheduler.
    limits = x0_limits(backend.scheduler.config)
    overrides = {**backend.sampling_scheduler_overrides(), **({"clip_sample": False, "thresholding": False} if limits else {})}
    scheduler = make_scheduler(backend.scheduler, s.scheduler, **overrides)
    alphas = backend.alphas_cumprod
    generator = torch.Generator(device="cpu").manual_seed(seed)
    shape = (n, *backend.sample_shape(s.height, s.width))

    with torch.no_grad():
        scheduler.set_timesteps(s.steps, device=prior.device)
        x = randn_tensor(shape, generator=generator, device=prior.device, dtype=prior.dtype)
        x = x * scheduler.init_noise_sigma
        step_kwargs = _step_kwargs(scheduler, generator, s.eta)
        momentum = None
        for i, t in enumerate(_progress(scheduler.timesteps, show_progress)):
            model_in = scheduler.scale_model_input(x, t)
            eps, momentum = prior.guided_prediction(model_in, t.reshape(1).expand(n), pos_mix, neg_weights, i, momentum)
            if limits:
                eps = clipped_epsilon(eps, model_in, alphas[int(round(float(t)))], limits)
            x = scheduler.step(eps, t, x, **step_kwargs).prev_sample
        image = backend.decode(x)
        return image.cpu().permute(0, 2, 3, 1).float().numpy()


def write_images(images: np.ndarray, out_dir: Path) -> List[Path]:
    """Write ``0000.png, 0001.png, ...`` (and ``grid.png`` when several) into ``out_dir``, each
    atomically (an interrupted run leaves no half-written PNG)."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UsageError(f"cannot create output folder '{out_dir}': {err.strerror}") from None
    pixels = to_uint8(images)
    named = [(out_dir / f"{k:04d}.png", img) for k, img in enumerate(pixels)]
    if len(pixels) > 1:
        named.append((out_dir / "grid.png", make_grid(pixels)))
    for path, img in named:
        try:
            atomic_write_bytes(path, png_bytes(img))
        except OSError as err:
            raise UsageError(f"cannot write '{path}': {err.strerror or err}") from None
    return [path for path, _ in named]


def sample_command(args: argparse.Namespace) -> int:
    """``dreamperp sample CONFIG [key=value ...] --out DIR``."""
    cfg = load_config(args.config, rewrite_shorthand(args.overrides or []))
    check_prompt(cfg.prompt)
    scheduler_class(cfg.sample.scheduler)  # fail on a bad name before loading the model
    out_dir = Path(args.out)
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"--out '{out_dir}' exists and is not a folder")
    images = sample_images(cfg, show_progress=sys.stderr.isatty())
    paths = write_images(images, out_dir)
    print(f"wrote {len(images)} image(s) to {out_dir}" + (f" (grid: {paths[-1].name})" if len(images) > 1 else ""))
    return 0
