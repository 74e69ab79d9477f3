"""Pixel-space x0 clipping in 2D sampling (docs/design.md §9): the clipped x0 and the ε the scheduler
steps with agree, for static clipping and for dynamic thresholding; checked by hand in float64,
against diffusers' own thresholding, and against diffusers' DDIM with ``use_clipped_model_output``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from dreamperp.config import GuidanceConfig, SampleConfig
from dreamperp.guidance.prior import load_prior
from dreamperp.sample import clipped_epsilon, denoise, x0_limits


def test_static_clip_by_hand() -> None:
    # ᾱ = 0.25: x0 = (x - √0.75 ε) / 0.5. Choose x0 = [2, 0.5, -3] with ε = [1, -1, 0.5].
    a = torch.tensor(0.25, dtype=torch.float64)
    eps = torch.tensor([1.0, -1.0, 0.5], dtype=torch.float64).view(1, 3, 1, 1)
    x0 = torch.tensor([2.0, 0.5, -3.0], dtype=torch.float64).view(1, 3, 1, 1)
    x = 0.5 * x0 + 0.75**0.5 * eps
    out = clipped_epsilon(eps, x, a, {"clip": 1.0})
    assert out.dtype == torch.float64
    x0_out = (x - 0.75**0.5 * out) / 0.5
    assert torch.allclose(x0_out.flatten(), torch.tensor([1.0, 0.5, -1.0], dtype=torch.float64), atol=1e-12)
    # in range: ε unchanged; clipped: ε moves by (x0 - x0') √ᾱ / √(1-ᾱ) = 1 · 0.5 / √0.75 for the first entry
    assert abs(float(out.flatten()[1]) - -1.0) < 1e-12
    assert abs(float(out.flatten()[0]) - (1.0 + 0.5 / 0.75**0.5)) < 1e-12
    assert abs(float(out.flatten()[2]) - (0.5 - 2.0 * 0.5 / 0.75**0.5)) < 1e-12


def test_dynamic_thresholding_matches_diffusers() -> None:
    from diffusers import DDPMScheduler

    sched = DDPMScheduler(thresholding=True, dynamic_thresholding_ratio=0.9, sample_max_value=1.5)
    limits = x0_limits(sched.config)
    assert limits == {"ratio": 0.9, "max": 1.5}
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(3, 3, 8, 8, generator=g, dtype=torch.float64) * torch.tensor([0.3, 1.2, 4.0], dtype=torch.float64).view(3, 1, 1, 1)
    eps = torch.randn(3, 3, 8, 8, generator=g, dtype=torch.float64)
    a = torch.tensor(0.6, dtype=torch.float64)
    x = a.sqrt() * x0 + (1 - a).sqrt() * eps
    out = clipped_epsilon(eps, x, a, limits)
    x0_out = (x - (1 - a).sqrt() * out) / a.sqrt()
    ref = sched._threshold_sample(x0.clone())  # diffusers' implementation (Imagen's rule) as the reference
    assert torch.allclose(x0_out, ref, atol=1e-12)
    assert torch.allclose(out[0], eps[0], atol=1e-12)  # |x0| well below 1: nothing to threshold


def test_limits_follow_the_scheduler(tiny_model_dir: Path, tiny_pixel_dir: Path, tiny_if_dir: Path) -> None:
    from diffusers import DDIMScheduler, DDPMScheduler

    assert x0_limits(DDIMScheduler.from_pretrained(tiny_model_dir / "scheduler").config) is None  # latent SD: no rule
    assert x0_limits(DDPMScheduler.from_pretrained(tiny_pixel_dir / "scheduler").config) == {"clip": 1.0}
    assert "ratio" in x0_limits(DDPMScheduler.from_pretrained(tiny_if_dir / "scheduler").config)


def test_denoise_equals_diffusers_ddim_with_clipped_model_output(tiny_pixel_dir: Path) -> None:
    """At a high guidance scale the sampler equals diffusers' DDIM with clip_sample and
    use_clipped_model_output=True (the consistent variant), and differs from its default."""
    from diffusers import DDIMScheduler
    from diffusers.utils.torch_utils import randn_tensor

    prior = load_prior(GuidanceConfig(model=str(tiny_pixel_dir), scale=30.0, view_dependent=False), "a red bird", "", torch.device("cpu"))
    s = SampleConfig(steps=6, scheduler="DDIMScheduler")
    ours = denoise(prior, s, None, None, 2, seed=3)

    def reference(consistent: bool) -> np.ndarray:
        sched = DDIMScheduler.from_config(prior.backend.scheduler.config, clip_sample=True, clip_sample_range=1.0)
        sched.set_timesteps(s.steps)
        size = prior.backend.sample_shape(s.height, s.width)
        x = randn_tensor((2, *size), generator=torch.Generator().manual_seed(3), dtype=torch.float32)
        with torch.no_grad():
            for i, t in enumerate(sched.timesteps):
                eps, _ = prior.guided_prediction(x, t.reshape(1).expand(2), None, None, i, None)
                x = sched.step(eps, t, x, eta=0.0, use_clipped_model_output=consistent).prev_sample
            return prior.backend.decode(x).permute(0, 2, 3, 1).numpy()

    # fp32 with the same operations in a different order: differences of a few ulps per step, far below 1e-4
    assert np.abs(ours - reference(True)).max() < 1e-4
    assert np.abs(ours - reference(False)).max() > 1e-2  # the default DDIM is a different (inconsistent) sampler
