"""The guided score: view conditioning, one block-batched UNet call, Perp-Neg, SEGA and SDS.

Written once for every model family; what differs between families (text encoder, VAE or pixels,
learned variance, v-prediction) lives in a :class:`~dreamperp.guidance.backends.DiffusionBackend`.
Per sample (docs/design.md §3–5)::

    ε̂ = ε_u + s·(Δ_pos − Σ_k w_k·perp(Δ_k, Δ_pos)) + γ_sega

evaluated with ONE UNet call whose batch is the blocks ``[uncond, positive, neg_1..neg_K,
concept_1..concept_C]``, each block holding the B samples in order, with the noisy model inputs and
timesteps repeated per block so that every row sees its own sample's input and timestep. Every
block's output is turned into ε by the backend before it is combined, so the combination (and
2D sampling, which then steps an epsilon scheduler) is the same for every family.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

import torch

from dreamperp.config import GuidanceConfig, check_concepts, check_prompt
from dreamperp.guidance.backends import DiffusionBackend
from dreamperp.guidance.perpneg import perpneg_guidance
from dreamperp.guidance.sds import (
    sample_timesteps,
    sds_grad,
    sds_loss,
    sds_weight,
    timestep_bounds,
)
from dreamperp.guidance.sega import sega_guidance
from dreamperp.guidance.views import NEGATIVE_VIEWS, view_mix, view_prompts


class GuidedScore:
    """Perp-Neg + SEGA guided ε of a frozen diffusion model, and the SDS loss built on it.

    ``backend``: the model family (see :mod:`dreamperp.guidance.backends`); ``cfg``: the
    ``guidance`` section; ``prompt``: the object prompt (view prompts are derived from it);
    ``negative_prompt``: replaces "" in the unconditional branch. All prompts are encoded once here
    and cached (``emb_prompt``, ``emb_uncond`` ``[1, L, D]``, ``emb_views`` ``[4, L, D]``,
    ``emb_concepts`` ``[C, L, D]`` or None).

    One entry point for SDS, shaped like threestudio's guidance: :meth:`__call__` takes the renders,
    the camera angles, the step and the guidance state (``{"sega_momentum": [B, C, h, w] or None}``)
    and returns ``{"loss_sds", ..., "state"}``; the caller owns the state (the trainer keeps it,
    checkpoints it and drops it through :func:`finite_state` after a bad step). :meth:`sds` and
    :meth:`sds_latents` are the same computation with the state kept on this object between calls
    (:meth:`state_dict`), for the unit tests of 2D SDS that need fixed ``t``/``noise``.
    """

    @staticmethod
    def check_inputs(cfg: GuidanceConfig, prompt: str) -> None:
        """ConfigError for an empty prompt or SEGA concept (cheap: call it before loading weights)."""
        check_prompt(prompt)
        check_concepts(cfg.sega.concepts)

    def __init__(self, backend: DiffusionBackend, cfg: GuidanceConfig, prompt: str, negative_prompt: str = "") -> None:
        self.check_inputs(cfg, prompt)
        self.backend = backend
        self.cfg = cfg
        self.device: torch.device = backend.device
        self.dtype: torch.dtype = backend.dtype
        self.concepts = list(cfg.sega.concepts)

        # Encoded in the groups diffusers uses (prompt, uncond, concepts separately) so 2D sampling
        # reproduces SemanticStableDiffusionPipeline bit for bit.
        self.emb_prompt = backend.encode_text([prompt])  # [1, L, D]
        self.emb_uncond = backend.encode_text([negative_prompt or ""])  # [1, L, D]
        self.emb_views = backend.encode_text(view_prompts(prompt))  # [4, L, D]
        # The view mix is formed in at least fp32 (fp16 sums of mixed embeddings lose the small weights).
        self.emb_views_mix = self.emb_views.to(torch.promote_types(self.dtype, torch.float32))
        self.emb_concepts = (
            backend.encode_text([c.prompt for c in self.concepts]) if self.concepts else None
        )  # [C, L, D]
        backend.release_text_encoder()

        # What guided_prediction calls: the UNet, or its torch.compile'd version (tests may wrap it).
        self.unet_forward = backend.unet
        if self.device.type == "cuda":
            if cfg.channels_last:
                backend.unet.to(memory_format=torch.channels_last)
            if cfg.compile:
                self.unet_forward = torch.compile(backend.unet)
        self._state: Dict[str, Any] = {"sega_momentum": None}  # sds()/sds_latents()'s only; __call__ keeps none

    @property
    def resolution(self) -> int:
        """Image side in pixels the model expects (renders are resized to it)."""
        return self.backend.resolution

    # ---------------------------------------------------------------------------- view weights
    def view_conditioning(
        self, azimuth_deg: Optional[torch.Tensor], elevation_deg: Optional[torch.Tensor] = None
    ) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
        """``(pos_mix [B, 4], neg_weights [B, 4])`` for the cameras, on the azimuth's device.

        Perp-Neg on: the schedule of ``perp_neg``. Off: the nearest view prompt and no negatives
        when ``view_dependent``, else ``(None, None)`` (the plain prompt).
        """
        return view_mix(self.cfg.perp_neg, azimuth_deg, elevation_deg, view_dependent=self.cfg.view_dependent)

    # ---------------------------------------------------------------------------- guided UNet
    def guided_prediction(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        pos_mix: Optional[torch.Tensor],
        neg_weights: Optional[torch.Tensor],
        step: int,
        momentum: Optional[torch.Tensor] = None,
    ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Guided ε̂ ``[B, C, h, w]`` and the new SEGA momentum.

        ``x_t``: noisy (scheduler-scaled) model input ``[B, C, h, w]``; ``t``: ``[B]`` timesteps;
        ``pos_mix``/``neg_weights``: ``[B, 4]`` from :meth:`view_conditioning` (None: plain prompt,
        no negatives); ``step``: counts SEGA warm-up/cool-down; ``momentum``: SEGA momentum or None.
        One UNet call under no_grad. Negative views whose weight is zero for the whole batch are
        left out of it when the weights are on the CPU (deciding that for device tensors would
        stall on a host sync; then the views a schedule can weight, front and side, are kept).
        """
        B = x_t.shape[0]
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
            x = torch.cat([x_t.to(dtype)] * n)
            tt = t.to(dev).reshape(-1).expand(B).repeat(n)
            out = self.unet_forward(x, tt, encoder_hidden_states=torch.cat(blocks)).sample
            eps = self.backend.to_epsilon(out, x, tt)
            eps = eps.reshape(n, B, *eps.shape[1:])  # [block, sample, C, h, w]
            eps_u, eps_pos = eps[0], eps[1]
            k = len(neg_cols)
            eps_neg = w_neg = None
            if k:
                eps_neg = eps[2 : 2 + k].transpose(0, 1)  # [B, K, C, h, w]
                # Column slices, not a list index: indexing a CUDA tensor with a list copies it host→device and syncs.
                w_neg = torch.stack([neg_weights[:, j] for j in neg_cols], dim=1).to(dev, non_blocking=True)  # type: ignore[index]
            guidance = perpneg_guidance(eps_u, eps_pos, eps_neg, w_neg, self.cfg.scale, self.cfg.perp_neg.projection)
            if self.concepts:
                sega = self.cfg.sega
                if momentum is not None and momentum.shape != eps_u.shape:
                    momentum = None  # batch size changed: start the momentum afresh
                gamma, momentum = sega_guidance(
                    eps_u, eps[2 + k :], self.concepts, step, momentum, sega.momentum_scale, sega.momentum_beta
                )
                if gamma is not None:
                    guidance = guidance + gamma
            return eps_u + guidance, momentum

    # -------------------------------------------------------------------------------------- SDS
    def __call__(
        self,
        rgb: torch.Tensor,
        azimuth_deg: Optional[torch.Tensor],
        elevation_deg: Optional[torch.Tensor],
        *,
        step: int,
        state: Optional[Dict[str, Any]] = None,
    ) -> Dict[str, Any]:
        """The SDS objective of renders ``rgb [B, 3, H, W]`` in [0, 1] seen from ``azimuth_deg`` /
        ``elevation_deg`` ``[B]`` at optimisation ``step`` (t_max anneal, SEGA phases), with the
        guidance ``state`` of the previous step (None: fresh).

        Returns ``{"loss_sds", "grad_norm", "t", "w", "t_max", "state"}``: ``loss_sds`` is a float32
        scalar whose gradient w.r.t. the model input is ``w(t)·(ε̂ − ε)/B``; the others are tensors
        (no host sync) and ``state`` the guidance state to pass to the next step. Nothing is kept
        on ``self``. Pass the angles as CPU tensors to let the UNet call drop negative views whose
        weight is zero for the whole batch.
        """
        loss, info, state = self._sds(self.backend.encode_images(rgb), azimuth_deg, elevation_deg, step, state)
        return {"loss_sds": loss, **info, "state": state}

    def sds(
        self, images: torch.Tensor, azimuth_deg: torch.Tensor, elevation_deg: Optional[torch.Tensor], step: int
    ) -> tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """:meth:`__call__` with the state kept on this object between calls (see :meth:`state_dict`).
        Returns ``(loss, info)``."""
        return self.sds_latents(self.backend.encode_images(images), azimuth_deg, elevation_deg, step)

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
        """:meth:`sds` from the clean model input ``[B, C, h, w]`` (latents, or pixels in [-1, 1]);
        ``t`` [B] and ``noise`` default to fresh samples (torch's global RNG). ``return_terms`` adds
        ``eps_hat``, ``noise`` and ``grad`` to ``info``."""
        loss, info, self._state = self._sds(
            latents, azimuth_deg, elevation_deg, step, self._state, t=t, noise=noise, return_terms=return_terms
        )
        return loss, info

    def _sds(
        self,
        latents: torch.Tensor,
        azimuth_deg: Optional[torch.Tensor],
        elevation_deg: Optional[torch.Tensor],
        step: int,
        state: Optional[Dict[str, Any]],
        *,
        t: Optional[torch.Tensor] = None,
        noise: Optional[torch.Tensor] = None,
        return_terms: bool = False,
    ) -> tuple[torch.Tensor, Dict[str, torch.Tensor], Dict[str, Any]]:
        """The SDS loss, its info and the next state, from the clean model input: state in, state out."""
        cfg = self.cfg
        B = latents.shape[0]
        T = self.backend.num_train_timesteps
        alphas_cumprod = self.backend.alphas_cumprod
        lo, hi = timestep_bounds(cfg.t_min, cfg.t_max, T, step, cfg.t_max_final, cfg.t_anneal_steps)
        if t is None:
            t = sample_timesteps(B, lo, hi, latents.device)
        t = t.to(self.device)
        if noise is None:
            noise = torch.randn(latents.shape, device=latents.device, dtype=torch.float32)
        momentum = (state or {}).get("sega_momentum")
        with torch.no_grad():
            a = alphas_cumprod[t].view(-1, *([1] * (latents.dim() - 1)))
            noisy = (a.sqrt() * latents.detach().float() + (1.0 - a).sqrt() * noise.float()).to(self.dtype)
            pos_mix, neg_weights = self.view_conditioning(azimuth_deg, elevation_deg)
            eps_hat, momentum = self.guided_prediction(noisy, t, pos_mix, neg_weights, step, momentum)
            eps_hat = eps_hat.float()
            w = sds_weight(alphas_cumprod, t, cfg.weighting)
            grad = sds_grad(eps_hat, noise, w, cfg.grad_clip)
        loss = sds_loss(latents, grad)
        info: Dict[str, torch.Tensor] = {
            "t": t,
            "w": w,
            "grad_norm": grad.norm(),
            "t_max": torch.tensor(hi / T),
        }
        if return_terms:
            info.update(eps_hat=eps_hat, noise=noise.float(), grad=grad)
        return loss, info, {"sega_momentum": momentum}

    # ------------------------------------------------------------------------------------ state
    @property
    def sega_momentum(self) -> Optional[torch.Tensor]:
        """The SEGA momentum ``[B, C, h, w]`` the stateful :meth:`sds` carries, or None."""
        return self._state.get("sega_momentum")

    def state_dict(self) -> Dict[str, Any]:
        """The state the stateful :meth:`sds` carries, as :func:`saved_state` writes it."""
        return saved_state(self._state)

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self._state = restored_state(state, self.device, self.dtype)


# ------------------------------------------------------------------------------- the state
# The guidance state is ``{"sega_momentum": [B, C, h, w] tensor or None}`` (SEGA momentum, the only
# thing that lives across SDS steps); a checkpoint's ``prior`` entry holds it on the CPU.
def fresh_state() -> Dict[str, Any]:
    """The guidance state before the first step."""
    return {"sega_momentum": None}


def saved_state(state: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    """``state`` as a checkpoint holds it: detached CPU copies (None stays None)."""
    m = (state or {}).get("sega_momentum")
    return {"sega_momentum": None if m is None else m.detach().cpu().clone()}


def restored_state(saved: Optional[Dict[str, Any]], device: torch.device, dtype: Optional[torch.dtype] = None) -> Dict[str, Any]:
    """What :func:`saved_state` wrote, on ``device`` (and in ``dtype``); a fresh state for None."""
    m = (saved or {}).get("sega_momentum")
    return {"sega_momentum": None if m is None else m.to(device, dtype)}


def finite_state(state: Dict[str, Any]) -> Dict[str, Any]:
    """``state`` (a guidance state) without entries that hold non-finite values, which a bad step
    may have put there; the same object when it is clean."""
    bad = [k for k, v in state.items() if isinstance(v, torch.Tensor) and not bool(torch.isfinite(v).all())]
    return {**state, **{k: None for k in bad}} if bad else state
