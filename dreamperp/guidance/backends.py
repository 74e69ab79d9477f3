"""Diffusion backends: what differs between model families, behind one small contract (docs/design.md §9).

The guided score (:mod:`dreamperp.guidance.score`) is written once; a backend supplies, for its
model family:

- text encoding (prompts → encoder hidden states ``[N, L, D]``);
- image → model input: renders ``[B, 3, H, W]`` in [0, 1] → ``x0 [B, C, h, w]`` with gradients
  flowing to the render (latent: resize to ``resolution`` + VAE encode; pixel: resize to the UNet's
  ``sample_size`` and map to [-1, 1]);
- model output → ε (learned-variance UNets, ``out_channels == 2 * in_channels``: the first half;
  v-prediction converted with ``ε = √ᾱ_t·v + √(1−ᾱ_t)·x_t``);
- ``alphas_cumprod``, the sampling shape and scheduler settings, and decode for 2D sampling;
- its own modules (UNet, VAE, text encoder) on its device in its dtype.

:class:`LatentDiffusionBackend` is Stable Diffusion 1.x/2.x; :class:`PixelDiffusionBackend` is the
DeepFloyd IF stage I layout and the toy prior. :func:`make_backend` picks one from the loaded
components; a new family is a new class here, the guided score does not change.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Protocol, Sequence, runtime_checkable

import torch
import torch.nn.functional as F

from dreamperp.errors import UsageError, first_line

#: Tokens per prompt: CLIP's context, and the length DeepFloyd IF pads its T5 prompts to.
MAX_TEXT_TOKENS = 77


@runtime_checkable
class DiffusionBackend(Protocol):
    """The model-family half of a prior; every implementation passes ``tests/test_backends.py``.

    Attributes: ``unet`` (called by the guided score as ``unet(x, t, encoder_hidden_states=emb).sample``),
    ``scheduler`` (the model's own), ``device``, ``dtype``, ``resolution`` (image side in pixels the
    model expects), ``num_train_timesteps`` and ``alphas_cumprod`` (``[T]`` float32 on ``device``).
    """

    unet: Any
    scheduler: Any
    device: torch.device
    dtype: torch.dtype
    resolution: int
    num_train_timesteps: int
    alphas_cumprod: torch.Tensor

    def encode_text(self, prompts: Sequence[str]) -> torch.Tensor:
        """Encoder hidden states ``[N, L, D]`` in ``dtype`` on ``device``."""
        ...

    def release_text_encoder(self) -> None:
        """Free the text encoder's accelerator memory (prompts are encoded once and cached)."""
        ...

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Renders ``[B, 3, H, W]`` in [0, 1] → clean model input ``x0 [B, C, h, w]`` (differentiable)."""
        ...

    def to_epsilon(self, out: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """UNet output ``[N, C', h, w]`` on noisy input ``x_t [N, C, h, w]`` at timesteps ``t [N]`` → ε ``[N, C, h, w]``."""
        ...

    def sample_shape(self, height: int, width: int) -> tuple[int, int, int]:
        """``(C, h, w)`` of the model input for a ``height`` x ``width`` image."""
        ...

    def sampling_scheduler_overrides(self) -> Dict[str, Any]:
        """Scheduler config entries for 2D sampling, whose denoiser returns ε (see :meth:`to_epsilon`)."""
        ...

    def decode(self, x0: torch.Tensor) -> torch.Tensor:
        """Model input ``[B, C, h, w]`` → images ``[B, 3, H, W]`` in [0, 1]."""
        ...


@torch.no_grad()
def encode_prompts(tokenizer: Any, text_encoder: Any, prompts: Sequence[str], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Last hidden states ``[N, L, D]`` of ``text_encoder`` (CLIP or T5) for ``prompts``, padded to
    ``L = min(model_max_length, 77)``. T5 gets the attention mask (as DeepFloyd IF's pipeline does),
    CLIP none (as Stable Diffusion's does, unless its config asks for one)."""
    max_length = min(int(tokenizer.model_max_length), MAX_TEXT_TOKENS)
    tok = tokenizer(list(prompts), padding="max_length", max_length=max_length, truncation=True, return_tensors="pt")
    enc_device = next(text_encoder.parameters()).device
    config = text_encoder.config
    mask = None
    if getattr(config, "model_type", "") == "t5" or getattr(config, "use_attention_mask", False):
        mask = tok.attention_mask.to(enc_device)
    return text_encoder(tok.input_ids.to(enc_device), attention_mask=mask)[0].to(device, dtype)


class _UNetBackend:
    """What every UNet family shares: text encoding, ``alphas_cumprod`` and output → ε."""

    def __init__(self, components: Any) -> None:
        self.unet = components.unet
        self.scheduler = components.scheduler
        self.tokenizer = components.tokenizer
        self.text_encoder = components.text_encoder
        self.device: torch.device = torch.device(components.device)
        self.dtype: torch.dtype = components.dtype
        self.resolution: int = int(components.resolution)
        self.in_channels = int(self.unet.config.in_channels)
        out_channels = int(self.unet.config.out_channels or self.in_channels)
        #: Learned-variance UNets (DeepFloyd IF) predict [ε, variance] stacked on the channels.
        self.learned_variance = out_channels == 2 * self.in_channels
        self.num_train_timesteps = int(self.scheduler.config.num_train_timesteps)
        self.prediction_type = str(getattr(self.scheduler.config, "prediction_type", "epsilon"))
        if self.prediction_type not in ("epsilon", "v_prediction"):
            raise UsageError(f"guidance.model: prediction type {self.prediction_type!r} is not supported (use an epsilon or v-prediction model)")
        self.alphas_cumprod = self.scheduler.alphas_cumprod.to(self.device, torch.float32)

    def encode_text(self, prompts: Sequence[str]) -> torch.Tensor:
        return encode_prompts(self.tokenizer, self.text_encoder, prompts, self.device, self.dtype)

    def release_text_encoder(self) -> None:
        if self.device.type == "cuda":
            self.text_encoder.to("cpu")

    def to_epsilon(self, out: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.learned_variance:
            out = out[:, : self.in_channels]  # the variance half only matters to a DDPM sampler
        if self.prediction_type == "v_prediction":
            # Float timesteps (Euler sampling) are rounded to the nearest trained one for ᾱ_t.
            idx = t.to(self.alphas_cumprod.device).round().long().clamp(0, self.num_train_timesteps - 1)
            a = self.alphas_cumprod[idx].view(-1, *([1] * (out.dim() - 1)))
            acc = torch.promote_types(out.dtype, torch.float32)
            out = (a.sqrt() * out.to(acc) + (1.0 - a).sqrt() * x_t.to(acc)).to(out.dtype)
        return out

    def sampling_scheduler_overrides(self) -> Dict[str, Any]:
        over: Dict[str, Any] = {"prediction_type": "epsilon"}
        if str(getattr(self.scheduler.config, "variance_type", "")).startswith("learned"):
            over["variance_type"] = "fixed_small"  # the guided ε carries no variance channels
        return over

    def _resize(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[-2:] != (self.resolution, self.resolution):
            images = F.interpolate(images, size=(self.resolution, self.resolution), mode="bilinear", align_corners=False)
        return images


class LatentDiffusionBackend(_UNetBackend):
    """Stable Diffusion 1.x/2.x: a VAE between images and the UNet's latents.

    ``encoder``: 'vae' (the model's, posterior sampled with torch's global RNG) or 'tiny' (the
    AutoencoderTiny of ``tiny_encoder_model``: faster, less exact; decoding stays with the VAE).
    """

    def __init__(self, components: Any, encoder: str = "vae", tiny_encoder_model: str = "madebyollin/taesd") -> None:
        super().__init__(components)
        self.vae = components.vae
        self.vae_scale_factor = int(components.vae_scale_factor)
        self.scaling_factor = float(self.vae.config.scaling_factor)
        self.tiny_encoder = _load_tiny_encoder(tiny_encoder_model, self.device, self.dtype) if encoder == "tiny" else None

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        x = (self._resize(images) * 2.0 - 1.0).to(self.device, self.dtype)
        if self.tiny_encoder is not None:
            return self.tiny_encoder.encode(x).latents * float(self.tiny_encoder.config.scaling_factor)
        return self.vae.encode(x).latent_dist.sample() * self.scaling_factor

    def sample_shape(self, height: int, width: int) -> tuple[int, int, int]:
        return self.in_channels, height // self.vae_scale_factor, width // self.vae_scale_factor

    def decode(self, x0: torch.Tensor) -> torch.Tensor:
        image = self.vae.decode(x0 / self.scaling_factor, return_dict=False)[0]
        return (image * 0.5 + 0.5).clamp(0, 1)


class PixelDiffusionBackend(_UNetBackend):
    """Pixel space (DeepFloyd IF stage I layout, the toy prior): the UNet denoises the image itself,
    in [-1, 1] at ``unet.config.sample_size``. It samples at that size whatever height/width asks."""

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        return (self._resize(images) * 2.0 - 1.0).to(self.device, self.dtype)

    def sample_shape(self, height: int, width: int) -> tuple[int, int, int]:
        return self.in_channels, self.resolution, self.resolution

    def decode(self, x0: torch.Tensor) -> torch.Tensor:
        return (x0 * 0.5 + 0.5).clamp(0, 1)


def make_backend(cfg: Any, device: Any = "cpu", components: Any = None) -> DiffusionBackend:
    """The backend for ``cfg`` (the ``guidance`` section): loads ``cfg.model`` unless ``components``
    (:class:`~dreamperp.models.loading.DiffusionComponents`) are given; the folder layout decides."""
    if components is None:
        from dreamperp.models.loading import load_components

        components = load_components(cfg.model, device, cfg.dtype)
    if components.vae is not None:
        return LatentDiffusionBackend(components, cfg.encoder, cfg.tiny_encoder_model)
    if cfg.encoder == "tiny":
        raise UsageError(f"guidance.encoder=tiny needs a latent (VAE) model, and '{cfg.model}' is a pixel-space model: set guidance.encoder=vae")
    return PixelDiffusionBackend(components)


def _load_tiny_encoder(model: str, device: torch.device, dtype: torch.dtype) -> Optional[Any]:
    """AutoencoderTiny (TAESD) from a hub id or folder, frozen; UsageError when unavailable."""
    from diffusers import AutoencoderTiny

    try:
        enc = AutoencoderTiny.from_pretrained(model, torch_dtype=dtype)
    except (OSError, ValueError, EnvironmentError) as err:
        first = first_line(err)
        raise UsageError(
            f"guidance.tiny_encoder_model: cannot load AutoencoderTiny '{model}' ({first[:200]}); "
            f"download it once, point it at a local folder, or set guidance.encoder=vae"
        ) from None
    enc.to(device)
    enc.eval()
    enc.requires_grad_(False)
    return enc
