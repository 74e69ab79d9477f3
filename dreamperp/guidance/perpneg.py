"""Perp-Neg: negative prompts projected perpendicular to the positive direction (docs/design.md §3).

``ε̂ = ε_u + s · (Δ_pos − Σ_i w_i · perp(Δ_i, Δ_pos))`` with ``Δ = ε − ε_u``; with
``projection=False`` the negatives are subtracted whole (plain negatives, as composable diffusion):
``ε̂ = ε_u + s · (Δ_pos − Σ_i w_i · Δ_i)``. One implementation, used by 2D sampling
(:mod:`dreamperp.sample`) and SDS, both through :mod:`dreamperp.guidance.score`.
"""

from __future__ import annotations

import torch

#: Guard on ‖y‖² so that a zero positive direction gives perp(x, 0) = x instead of NaN.
EPS_NORM2 = 1e-6


def perpendicular(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Component of ``x`` perpendicular to ``y``, per sample over all non-batch dims.

    ``x``, ``y``: ``[B, ...]`` (same shape). Returns ``x − ⟨x, y⟩ / max(‖y‖², 1e-6) · y``, so a
    zero ``y`` gives back ``x``.
    """
    return _perp(x, y, start_dim=1)


def _perp(x: torch.Tensor, y: torch.Tensor, start_dim: int) -> torch.Tensor:
    dims = tuple(range(start_dim, x.dim()))
    # Accumulate the reductions in fp32: in fp16 the squared norm of a 4x64x64 latent overflows.
    acc = torch.promote_types(x.dtype, torch.float32)
    xf, yf = x.to(acc), y.to(acc)
    dot = (xf * yf).sum(dim=dims, keepdim=True)
    norm2 = (yf * yf).sum(dim=dims, keepdim=True).clamp_min(EPS_NORM2)
    return (xf - (dot / norm2) * yf).to(x.dtype)


def perpneg_guidance(
    eps_uncond: torch.Tensor,
    eps_pos: torch.Tensor,
    eps_neg: torch.Tensor | None,
    neg_weights: torch.Tensor | None,
    scale: float,
    projection: bool = True,
) -> torch.Tensor:
    """The guidance term ``s · (Δ_pos − Σ_k w_k · perp(Δ_k, Δ_pos))`` (without ``ε_u``).

    ``eps_uncond``, ``eps_pos``: ``[B, C, H, W]``; ``eps_neg``: ``[B, K, C, H, W]`` (or None / K = 0);
    ``neg_weights``: ``[B, K]`` (>= 0; subtracted). Vectorised over B and K. ``projection=False``:
    plain negatives, ``s · (Δ_pos − Σ_k w_k · Δ_k)``.
    With no negatives this is exactly ``scale * (eps_pos − eps_uncond)``, the plain CFG term
    (bit for bit what diffusers computes).
    """
    delta_pos = eps_pos - eps_uncond
    if eps_neg is None or eps_neg.shape[1] == 0:
        return scale * delta_pos
    if neg_weights is None:
        raise ValueError("neg_weights is required with eps_neg")
    delta_neg = eps_neg - eps_uncond.unsqueeze(1)  # [B, K, C, H, W]
    if projection:
        delta_neg = _perp(delta_neg, delta_pos.unsqueeze(1), start_dim=2)  # per (sample, negative)
    w = neg_weights.to(delta_neg.dtype).reshape(*neg_weights.shape, *([1] * (delta_neg.dim() - 2)))
    return scale * (delta_pos - (w * delta_neg).sum(dim=1))


def perpneg_combine(
    eps_uncond: torch.Tensor,
    eps_pos: torch.Tensor,
    eps_neg: torch.Tensor | None,
    neg_weights: torch.Tensor | None,
    scale: float,
    projection: bool = True,
) -> torch.Tensor:
    """``ε̂ = ε_u + s · (Δ_pos − Σ_k w_k · perp(Δ_k, Δ_pos))``; shapes as :func:`perpneg_guidance`."""
    return eps_uncond + perpneg_guidance(eps_uncond, eps_pos, eps_neg, neg_weights, scale, projection)
