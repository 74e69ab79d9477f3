"""The frozen Stable Diffusion prior: cached view embeddings, one batched guided UNet call, SDS.

Guidance per sample (docs/design.md §3–5)::

    ε̂ = ε_u + s·(Δ_pos − Σ_k w_k·perp(Δ_k, Δ_pos)) + γ_sega

evaluated with ONE UNet call whose batch is the blocks ``[uncond, positive, neg_1..neg_K,
concept_1..concept_C]``, each block holding the B samples in order, with the noisy latents and
timesteps repeated per block so that every row sees its own sample's latent and timestep.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence

import torch
import torch.nn.functional as F

from dreamperp.config import GuidanceConfig
from dreamperp.device import resolve_device
from dreamperp.errors import ConfigError, UsageError, first_line
from dreamperp.guidance.perpneg import perpneg_guidance
from dreamperp.guidance.sds import (
    sample_timesteps,
    sds_grad,
    sds_loss,
    sds_weight,
    timestep_bounds,
)
from dreamperp.guidance.sega import sega_guidance
from dreamperp.guidance.views import (
    NEGATIVE_VIEWS,
    nearest_view_mix,
    perpneg_params,
    perpneg_weights,
    view_prompts,
)


class StableDiffusionPrior:
    """Frozen SD components plus the guidance of this project (Perp-Neg, view prompts, SEGA, SDS).

    ``cfg``: the ``guidance`` section; ``prompt``: the object prompt (view prompts are derived
    from it); ``negative_prompt``: replaces "" in the unconditional branch; ``device``: torch device
    or 'auto'. ``components``: already loaded :class:`~dreamperp.models.loading.SDComponents` (else
    ``load_components(cfg.model, device, cfg.dtype)``). The text encoder is only used here, once.

    Attributes: ``resolution`` (image pixels the model expects, e.g. 512), ``dtype`` (UNet/VAE
    dtype: fp16 on CUDA for dtype 'auto', fp32 on CPU), ``unet``, ``vae``, ``scheduler`` (the
    model's own), ``latent_channels``, ``vae_scale_factor``, ``num_train_timesteps``.
    """

    def __init__(
        self,
        cfg: GuidanceConfig,
        prompt: str,
        negative_prompt: str = "",
        device: Any = "cpu",
        components: Any = None,
    ) -> None:
        if not str(prompt).strip():
            raise ConfigError("prompt", 'is required: pass prompt="a photo of a corgi" or set it in the config file')
        for i, concept in enumerate(cfg.sega.concepts):
            if not str(concept.prompt).strip():
                raise ConfigError(f"guidance.sega.concepts.{i}.prompt", "is required: every SEGA concept needs a prompt")
        self.cfg = cfg
        self.device = resolve_device(device)
        if components is None:
            from dreamperp.models.loading import load_components

            components = load_components(cfg.model, self.device, cfg.dtype)
        self.unet = components.unet
        self.vae = components.vae
        self.scheduler = components.scheduler
        self.tokenizer = components.tokenizer
        self.dtype: torch.dtype = components.dtype
        self.resolution: int = int(components.resolution)
        self.vae_scale_factor: int = int(components.vae_scale_factor)
        self.latent_channels: int = int(components.latent_channels)
        self.scaling_factor = float(self.vae.config.scaling_factor)
        self.num_train_timesteps = int(self.scheduler.config.num_train_timesteps)
        self.prediction_type = str(getattr(self.scheduler.config, "prediction_type", "epsilon"))
        if self.prediction_type not in ("epsilon", "v_prediction"):
            raise UsageError(f"guidance.model: prediction type {self.prediction_type!r} is not supported (use an epsilon or v-prediction SD model)")
        self.alphas_cumprod = self.scheduler.alphas_cumprod.to(self.device, torch.float32)
        self.concepts = list(cfg.sega.concepts)

        text_encoder = components.text_encoder
        # Encoded in the groups diffusers uses (prompt, uncond, concepts together) so 2D sampling
        # reproduces SemanticStableDiffusionPipeline bit for bit.
        self.emb_prompt = self.encode_text([prompt], text_encoder)  # [1, L, D]
        self.emb_uncond = self.encode_text([negative_prompt or ""], text_encoder)  # [1, L, D]
        self.emb_views = self.encode_text(view_prompts(prompt), text_encoder)  # [4, L, D]
        # The view mix is formed in at least fp32 (fp16 sums of mixed embeddings lose the small weights).
        self.emb_views_mix = self.emb_views.to(torch.promote_types(self.dtype, torch.float32))
        self.emb_concepts = self.encode_text([c.prompt for c in self.concepts], text_encoder) if self.concepts else None  # [C, L, D]
        if self.device.type == "cuda":
            text_encoder.to("cpu")  # no longer needed: free its GPU memory

        # What guided_prediction calls: the UNet, or its torch.compile'd version (tests may wrap it).
        self.unet_forward = self.unet
        if self.device.type == "cuda":
            if cfg.channels_last:
                self.unet.to(memory_format=torch.channels_last)
            if cfg.compile:
                self.unet_forward = torch.compile(self.unet)
        self.encoder = None
        if cfg.encoder == "tiny":
            self.encoder = _load_tiny_encoder(cfg.tiny_encoder_model, self.device, self.dtype)
        self._momentum: Optional[torch.Tensor] = None

    # ------------------------------------------------------------------------------------ text
    @torch.no_grad()
    def encode_text(self, prompts: Sequence[str], text_encoder: Any) -> torch.Tensor:
        """CLIP last hidden states ``[N, L, D]`` (``L`` = tokenizer max length) in ``self.dtype``."""
        ids = self.tokenizer(
            list(prompts), padding="max_length", max_length=self.tokenizer.model_max_length, truncation=True, return_tensors="pt"
        ).input_ids
        device = next(text_encoder.parameters()).device
        return text_encoder(ids.to(device))[0].to(self.device, self.dtype)

    # ---------------------------------------------------------------------------- view weights
    def view_conditioning(
        self, azimuth_deg: Optional[torch.Tensor], elevation_deg: Optional[torch.Tensor] = None
    ) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
        """``(pos_mix [B, 4], neg_weights [B, 4])`` for the cameras, on the azimuth's device.

        Perp-Neg on: the schedule of ``perp_neg``. Off: the nearest view prompt and no negatives
        when ``view_dependent``, else ``(None, None)`` (the plain prompt).
        """
        if azimuth_deg is None:
            return None, None
        pn = self.cfg.perp_neg
        if pn.enabled:
            return perpneg_weights(azimuth_deg, elevation_deg, **perpneg_params(pn))
        if self.cfg.view_dependent:
            return nearest_view_mix(azimuth_deg, elevation_deg, pn.overhead_threshold)
        return None, None

    # ---------------------------------------------------------------------------- guided UNet
    def guided_prediction(
        self,
        latents: torch.Tensor,
        t: torch.Tensor,
        pos_mix: Optional[torch.Tensor],
        neg_weights: Optional[torch.Tensor],
        step: int,
        momentum: Optional[torch.Tensor] = None,
    ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Guided model output ``[B, C, h, w]`` (ε, or v for v-prediction models) and the new SEGA momentum.

        ``latents``: noisy (scheduler-scaled) model input ``[B, C, h, w]``; ``t``: ``[B]`` timesteps;
        ``pos_mix``/``neg_weights``: ``[B, 4]`` from :meth:`view_conditioning` (None: plain prompt,
        no negatives); ``step``: counts SEGA warm-up/cool-down; ``momentum``: SEGA momentum or None.
        One UNet call under no_grad. Negative views whose weight is zero for the whole batch are
        left out of it when the weights are on the CPU (deciding that for device tensors would
        stall on a host sync; then the views a schedule can weight, front and side, are kept).
        """
        B = latents.shape[0]
        dev, dtype = self.device, self.dtype
        with torch.no_grad():
            if pos_mix is None:
                emb_pos = self.emb_prompt.expand(B, -1, -1)
            else:
                mix = pos_mix.to(dev, self.emb_views_mix.dtype, non_blocking=True)
                emb_pos = torch.einsum("bv,vld->bld", mix, self.emb_views_mix).to(dtype)
            neg_cols: list[int] = []
            if neg_weights is not None:
                if neg_weights.device.type == "cpu":
                    neg_cols = [j for j in range(neg_weights.shape[1]) if bool(neg_weights[:, j].any())]
                else:
                    neg_cols = list(NEGATIVE_VIEWS)
            blocks = [self.emb_uncond.expand(B, -1, -1), emb_pos]
            blocks += [self.emb_views[j : j + 1].expand(B, -1, -1) for j in neg_cols]
            if self.emb_concepts is not None:
                blocks += [self.emb_concepts[c : c + 1].expand(B, -1, -1) for c in range(len(self.concepts))]
            n = len(blocks)
            x = torch.cat([latents.to(dtype)] * n)
            tt = t.to(dev).reshape(-1).expand(B).repeat(n)
            out = self.unet_forward(x, tt, encoder_hidden_states=torch.cat(blocks)).sample
            out = out.reshape(n, B, *out.shape[1:])  # [block, sample, C, h, w]
            eps_u, eps_pos = out[0], out[1]
            k = len(neg_cols)
            eps_neg = w_neg = None
            if k:
                eps_neg = out[2 : 2 + k].transpose(0, 1)  # [B, K, C, h, w]
                # Column slices, not a list index: indexing a CUDA tensor with a list copies it host→device and syncs.
                w_neg = torch.stack([neg_weights[:, j] for j in neg_cols], dim=1).to(dev, non_blocking=True)  # type: ignore[index]
            guidance = perpneg_guidance(eps_u, eps_pos, eps_neg, w_neg, self.cfg.scale)
            if self.concepts:
                sega = self.cfg.sega
                if momentum is not None and momentum.shape != eps_u.shape:
                    momentum = None  # batch size changed: start the momentum afresh
                gamma, momentum = sega_guidance(eps_u, out[2 + k :], self.concepts, step, momentum, sega.momentum_scale, sega.momentum_beta)
                if gamma is not None:
                    guidance = guidance + gamma
            return eps_u + guidance, momentum

    # -------------------------------------------------------------------------------------- SDS
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Renders ``[B, 3, H, W]`` in [0, 1] → scaled latents ``[B, C, res/8, res/8]`` (grads flow to the input).

        Bilinear resize to ``resolution``; the VAE posterior is sampled (torch's global RNG).
        """
        x = images
        if x.shape[-2:] != (self.resolution, self.resolution):
            x = F.interpolate(x, size=(self.resolution, self.resolution), mode="bilinear", align_corners=False)
        x = (x * 2.0 - 1.0).to(self.device, self.dtype)
        if self.encoder is not None:
            return self.encoder.encode(x).latents * float(self.encoder.config.scaling_factor)
        return self.vae.encode(x).latent_dist.sample() * self.scaling_factor

    def sds(
        self, images: torch.Tensor, azimuth_deg: torch.Tensor, elevation_deg: Optional[torch.Tensor], step: int
    ) -> tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """SDS loss of renders ``[B, 3, H, W]`` in [0, 1] seen from ``azimuth_deg``/``elevation_deg`` ``[B]``.

        Returns ``(loss, info)``: ``loss`` is a float32 scalar whose gradient w.r.t. the latents is
        ``w(t)·(ε̂ − ε)/B``; ``info`` holds tensors (no host sync): ``t`` [B], ``w`` [B],
        ``grad_norm`` (scalar, L2 norm of the whole SDS gradient), ``t_max`` (scalar, annealed bound).
        ``step`` is the optimisation step (t_max anneal, SEGA warm-up/cool-down). Pass the angles as
        CPU tensors to let the UNet call drop negative views whose weight is zero for the batch.
        """
        return self.sds_latents(self.encode_images(images), azimuth_deg, elevation_deg, step)

    def sds_latents(
        self,
        latents: torch.Tensor,
        azimuth_deg: Optional[torch.Tensor],
        elevation_deg: Optional[torch.Tensor],
        step: int,
        *,
        t: Optional[torch.Tensor] = None,
        noise: Optional[torch.Tensor] = None,
        return_terms: bool = False,
    ) -> tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """:meth:`sds` from latents ``[B, C, h, w]``; ``t`` [B] and ``noise`` default to fresh samples
        (torch's global RNG). ``return_terms`` adds ``eps_hat``, ``noise`` and ``grad`` to ``info``."""
        cfg = self.cfg
        B = latents.shape[0]
        lo, hi = timestep_bounds(cfg.t_min, cfg.t_max, self.num_train_timesteps, step, cfg.t_max_final, cfg.t_anneal_steps)
        if t is None:
            t = sample_timesteps(B, lo, hi, latents.device)
        t = t.to(self.device)
        if noise is None:
            noise = torch.randn(latents.shape, device=latents.device, dtype=torch.float32)
        with torch.no_grad():
            a = self.alphas_cumprod[t].view(-1, *([1] * (latents.dim() - 1)))
            noisy = (a.sqrt() * latents.detach().float() + (1.0 - a).sqrt() * noise.float()).to(self.dtype)
            pos_mix, neg_weights = self.view_conditioning(azimuth_deg, elevation_deg)
            out, self._momentum = self.guided_prediction(noisy, t, pos_mix, neg_weights, step, self._momentum)
            out = out.float()
            eps_hat = a.sqrt() * out + (1.0 - a).sqrt() * noisy.float() if self.prediction_type == "v_prediction" else out
            w = sds_weight(self.alphas_cumprod, t, cfg.weighting)
            grad = sds_grad(eps_hat, noise, w, cfg.grad_clip)
        loss = sds_loss(latents, grad)
        info: Dict[str, torch.Tensor] = {
            "t": t,
            "w": w,
            "grad_norm": grad.norm(),
            "t_max": torch.tensor(hi / self.num_train_timesteps),
        }
        if return_terms:
            info.update(eps_hat=eps_hat, noise=noise.float(), grad=grad)
        return loss, info

    # ------------------------------------------------------------------------------------ state
    def state_dict(self) -> Dict[str, Any]:
        """SEGA momentum (the only state that lives across SDS steps), on the CPU; None when unused."""
        m = self._momentum
        return {"sega_momentum": None if m is None else m.detach().cpu().clone()}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        m = state.get("sega_momentum")
        self._momentum = None if m is None else m.to(self.device, self.dtype)


def _load_tiny_encoder(model: str, device: torch.device, dtype: torch.dtype) -> Any:
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
