"""SEGA: hand-checked concept terms, and the 2D sampler against diffusers' SemanticStableDiffusionPipeline."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from dreamperp.cli import main
from dreamperp.guidance.sega import sega_guidance

CONFIGS = Path(__file__).resolve().parent.parent / "dreamperp" / "configs"


def concept(scale=1.0, threshold=0.0, warmup=0, cooldown=None, reverse=False, weight=1.0):
    return SimpleNamespace(scale=scale, threshold=threshold, warmup=warmup, cooldown=cooldown, reverse=reverse, weight=weight)


def row(*values: float) -> torch.Tensor:
    return torch.tensor(values).view(1, 1, 1, -1)


def test_threshold_scale_reverse_hand_numbers() -> None:
    eps_u = torch.zeros(1, 1, 1, 4)
    eps_c = row(1.0, -2.0, 3.0, -4.0).unsqueeze(0)  # [K=1, B, C, H, W]
    # psi·2 = (2,-4,6,-8); the 0.5-quantile of (2,4,6,8) is 5: keep the elements with |x| >= 5
    gamma, mom = sega_guidance(eps_u, eps_c, [concept(scale=2.0, threshold=0.5)], 0, None, 0.0, 0.4)
    assert torch.equal(gamma, row(0.0, 0.0, 6.0, -8.0))
    assert torch.allclose(mom, 0.6 * gamma)
    gamma, _ = sega_guidance(eps_u, eps_c, [concept(scale=2.0, threshold=0.5, reverse=True)], 0, None, 0.0, 0.4)
    assert torch.equal(gamma, row(0.0, 0.0, -6.0, 8.0))
    # threshold 0 keeps everything; weight scales the term
    gamma, _ = sega_guidance(eps_u, eps_c, [concept(scale=1.0, threshold=0.0, weight=0.5)], 0, None, 0.0, 0.4)
    assert torch.equal(gamma, row(0.5, -1.0, 1.5, -2.0))


def test_threshold_is_per_sample_and_channel() -> None:
    eps_u = torch.zeros(2, 2, 1, 4)
    eps_c = torch.tensor([[[1.0, 2, 3, 4]], [[40.0, 30, 20, 10]]])  # one sample, channels very different
    eps_c = torch.stack([eps_c, -eps_c * 0.01]).unsqueeze(0)  # [1, 2, 2, 1, 4]
    gamma, _ = sega_guidance(eps_u, eps_c, [concept(threshold=0.75)], 0, None, 0.0, 0.4)
    # 0.75-quantile of 4 sorted values sits at 3.25·step → only the largest element of each (sample, channel) survives
    keep = gamma != 0
    assert keep.sum(dim=-1).eq(1).all()
    assert gamma[0, 0, 0, 3] == 4.0 and gamma[0, 1, 0, 0] == 40.0 and gamma[1, 1, 0, 0] == pytest.approx(-0.4)


def test_warmup_momentum_and_cooldown() -> None:
    eps_u = torch.zeros(1, 1, 1, 2)
    e = row(1.0, -1.0).unsqueeze(0)
    c = [concept(warmup=1, cooldown=3)]
    # step 0: not warm: no term, but the momentum builds up: ν = 0.6·e
    gamma, mom = sega_guidance(eps_u, e, c, 0, None, 0.5, 0.4)
    assert gamma is None and torch.allclose(mom, 0.6 * row(1.0, -1.0))
    # step 1: warm: γ = e + 0.5·ν = 1.3·e; ν = 0.4·ν + 0.6·γ = (0.24 + 0.78)·e
    gamma, mom = sega_guidance(eps_u, e, c, 1, mom, 0.5, 0.4)
    assert torch.allclose(gamma, 1.3 * row(1.0, -1.0)) and torch.allclose(mom, 1.02 * row(1.0, -1.0))
    # step 3: cooled down: only the momentum is left
    gamma, mom2 = sega_guidance(eps_u, e, c, 3, mom, 0.5, 0.4)
    assert torch.allclose(gamma, 0.5 * mom)


def test_partial_warmup_normalises_weights_and_full_uses_raw_weights() -> None:
    eps_u = torch.zeros(1, 1, 1, 2)
    e = torch.stack([row(1.0, 0.0), row(0.0, 1.0)])  # two concepts
    mom = row(10.0, 10.0)
    c = [concept(weight=3.0, warmup=0), concept(weight=1.0, warmup=2)]
    # step 0: only concept 0 is warm → its weight normalised to 1, no momentum
    gamma, _ = sega_guidance(eps_u, e, c, 0, mom, 0.5, 0.4)
    assert torch.allclose(gamma, row(1.0, 0.0))
    # step 2: all warm → raw weights 3 and 1, plus 0.5·momentum
    gamma, _ = sega_guidance(eps_u, e, c, 2, mom, 0.5, 0.4)
    assert torch.allclose(gamma, row(3.0 + 5.0, 1.0 + 5.0))
    # a zero weight during partial warm-up gives a zero term instead of diffusers' 0/0 NaN
    gamma, _ = sega_guidance(eps_u, e, [concept(weight=0.0), concept(warmup=5)], 0, None, 0.5, 0.4)
    assert torch.equal(gamma, torch.zeros_like(gamma))


SEGA_OVERRIDES = [
    "prompt=a photo of a corgi",
    "seed=3",
    "guidance.scale=7.5",
    "guidance.perp_neg.enabled=false",
    "sample.height=64",
    "sample.width=64",
    "sample.steps=4",
    "sample.num_images=2",
    # Large edit scales: the tiny model's text conditioning is weak, and the edit must move the
    # 8-bit image by far more than the 1/255 tolerance for this test to mean anything.
    "guidance.sega.concepts=[{prompt: sunglasses, scale: 120.0, threshold: 0.8, warmup: 1, cooldown: 3, weight: 1.5},"
    " {prompt: a red hat, scale: 90.0, threshold: 0.9, warmup: 2, reverse: true, weight: 0.7}]",
    "guidance.sega.momentum_scale=0.3",
    "guidance.sega.momentum_beta=0.6",
]


def _read(path: Path) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(path).convert("RGB")).astype(np.int64)


def test_sample_matches_diffusers_semantic_pipeline(tiny_model_dir: Path, tmp_path: Path) -> None:
    from diffusers import SemanticStableDiffusionPipeline

    from dreamperp.models.loading import load_components

    out = tmp_path / "ours"
    assert main(["sample", str(CONFIGS / "sega-sample.yaml"), f"guidance.model={tiny_model_dir}", *SEGA_OVERRIDES, "--out", str(out)]) == 0
    ours = np.stack([_read(out / "0000.png"), _read(out / "0001.png")])

    c = load_components(str(tiny_model_dir), "cpu", "float32")
    pipe = SemanticStableDiffusionPipeline(
        vae=c.vae, text_encoder=c.text_encoder, tokenizer=c.tokenizer, unet=c.unet, scheduler=c.scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    kwargs = dict(
        height=64, width=64, num_inference_steps=4, guidance_scale=7.5, num_images_per_prompt=2, output_type="np",
        generator=torch.Generator().manual_seed(3),
    )
    ref = pipe(
        "a photo of a corgi",
        editing_prompt=["sunglasses", "a red hat"],
        edit_guidance_scale=[120.0, 90.0],
        edit_threshold=[0.8, 0.9],
        edit_warmup_steps=[1, 2],
        edit_cooldown_steps=[3, 1000],  # diffusers has no per-concept "never"
        reverse_editing_direction=[False, True],
        edit_weights=[1.5, 0.7],
        edit_momentum_scale=0.3,
        edit_mom_beta=0.6,
        **kwargs,
    ).images
    ref8 = (ref * 255).round().astype(np.int64)  # diffusers' numpy_to_pil
    assert ours.shape == ref8.shape == (2, 64, 64, 3)
    assert np.abs(ours - ref8).max() <= 1

    # The concepts matter: without them the images differ by far more than the tolerance.
    kwargs["generator"] = torch.Generator().manual_seed(3)
    plain = (pipe("a photo of a corgi", **kwargs).images * 255).round().astype(np.int64)
    assert np.abs(plain - ref8).max() > 10
