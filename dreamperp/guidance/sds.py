"""Score Distillation Sampling pieces (docs/design.md §5): timesteps, weights, gradient, loss."""

from __future__ import annotations

from typing import Optional

import torch

from dreamperp.plan import annealed


def timestep_bounds(
    t_min: float,
    t_max: float,
    num_train_timesteps: int,
    step: int = 0,
    t_max_final: Optional[float] = None,
    t_anneal_steps: int = 0,
) -> tuple[int, int]:
    """Inclusive integer range ``[lo, hi]`` of SDS timesteps at optimisation ``step``.

    ``t_max`` moves linearly to ``t_max_final`` over ``t_anneal_steps`` steps (0: no anneal); fractions
    are of ``T = num_train_timesteps`` and rounded (so 0.98 of 1000 is 980, not 979 by float error).
    """
    T = int(num_train_timesteps)
    hi_frac = annealed(t_max, t_max_final, t_anneal_steps, step)  # the step plan's t_max
    lo = min(max(int(round(t_min * T)), 0), T - 1)
    hi = min(max(int(round(hi_frac * T)), lo), T - 1)
    return lo, hi


def sample_timesteps(
    batch: int, lo: int, hi: int, device: torch.device | str, generator: Optional[torch.Generator] = None
) -> torch.Tensor:
    """``t ~ U{lo, ..., hi}`` per sample, ``[batch]`` long on ``device`` (torch's global RNG by default)."""
    return torch.randint(lo, hi + 1, (batch,), device=device, generator=generator, dtype=torch.long)


def sds_weight(alphas_cumprod: torch.Tensor, t: torch.Tensor, weighting: str = "sds") -> torch.Tensor:
    """``w(t)`` per sample, ``[B]`` float32: ``'sds'`` = 1 − ᾱ_t, ``'uniform'`` = 1."""
    if weighting == "sds":
        return 1.0 - alphas_cumprod.to(t.device)[t].float()
    if weighting == "uniform":
        return torch.ones(t.shape, device=t.device, dtype=torch.float32)
    raise ValueError(f"unknown SDS weighting {weighting!r}: use 'sds' or 'uniform' (guidance.weighting)")


def sds_grad(eps_hat: torch.Tensor, noise: torch.Tensor, w: torch.Tensor, clip: float = 0.0) -> torch.Tensor:
    """``grad = w(t)·(ε̂ − ε)`` in float32, ``[B, C, H, W]``; non-finite entries zeroed, then clipped
    elementwise to ``[-clip, clip]`` when ``clip > 0``."""
    grad = w.float().view(-1, *([1] * (eps_hat.dim() - 1))) * (eps_hat.float() - noise.float())
    grad = torch.where(torch.isfinite(grad), grad, torch.zeros_like(grad))
    if clip > 0:
        grad = grad.clamp(-clip, clip)
    return grad


class _SDSLoss(torch.autograd.Function):
    """``0.5·‖z − sg(z − g)‖² / B`` without forming ``z − (z − g)``, whose float cancellation would
    perturb the gradient: forward gives ``0.5·‖g‖² / B``, backward exactly ``g / B``."""

    @staticmethod
    def forward(ctx, latents: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        batch = latents.shape[0]
        ctx.save_for_backward(grad)
        ctx.batch = batch
        ctx.latent_dtype = latents.dtype
        return 0.5 * grad.float().square().sum() / batch

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):  # type: ignore[override]
        (grad,) = ctx.saved_tensors
        # x * 1.0 is exact, so with the usual grad_output of 1 this is bit-exactly grad / B.
        g = (grad / ctx.batch) * grad_output
        return g.to(ctx.latent_dtype), None


def sds_loss(latents: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """SDS loss ``0.5·‖z − sg(z − grad)‖² / B`` (scalar float32): ``∂L/∂z = grad / B``.

    ``latents``: ``[B, C, H, W]`` (requires grad); ``grad``: same shape (detached).
    """
    return _SDSLoss.apply(latents, grad.detach())
