"""SEGA semantic guidance (docs/design.md §4): edit-concept terms with thresholding and momentum.

One implementation for 2D sampling and SDS. It reproduces, operation for operation, the guidance
of diffusers' ``SemanticStableDiffusionPipeline`` (0.2x–0.4x), including its quirks:

- a concept is *warm* at step i when ``i >= warmup`` and *cooled down* when ``i >= cooldown``
  (cooled-down concepts contribute zero and get weight 0);
- while only some concepts are warm, the warm ones are applied with their weights normalised to
  sum 1 and without momentum;
- once all are warm, the sum of all concept terms with their raw weights plus
  ``momentum_scale · ν`` is applied;
- the momentum ``ν ← β·ν + (1−β)·γ`` is updated at every step, during warm-up too.

The one deliberate difference: diffusers divides by a zero weight sum (NaN image) when all warm
concepts have weight 0 during a partial warm-up; here that term is zero instead.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch

from dreamperp.plan import sega_phases


def sega_guidance(
    eps_uncond: torch.Tensor,
    eps_concepts: torch.Tensor,
    concepts: Sequence[Any],
    step: int,
    momentum: Optional[torch.Tensor],
    momentum_scale: float,
    momentum_beta: float,
) -> tuple[Optional[torch.Tensor], torch.Tensor]:
    """The SEGA term ``γ`` to add to the guided prediction, and the updated momentum.

    ``eps_uncond``: ``[B, C, H, W]``; ``eps_concepts``: ``[K, B, C, H, W]`` (concept k's prediction on
    every sample's own noisy latent); ``concepts``: K objects with ``scale, threshold, warmup,
    cooldown, reverse, weight`` (e.g. :class:`~dreamperp.config.SegaConcept`); ``step``: denoising
    step (2D) or optimisation step (SDS); ``momentum``: ``[B, C, H, W]`` or None (zeros).
    Returns ``(γ [B, C, H, W] or None when no concept is warm yet, momentum [B, C, H, W])``.
    """
    num = len(concepts)
    dtype, device = eps_uncond.dtype, eps_uncond.device
    batch = eps_uncond.shape[0]
    if momentum is None:
        momentum = torch.zeros_like(eps_uncond)
    concept_weights = torch.zeros((num, batch), device=device, dtype=dtype)
    edits = torch.zeros((num, *eps_uncond.shape), device=device, dtype=dtype)
    is_warm, is_cooled = sega_phases(concepts, step)  # the step plan's SEGA phases
    warm = [c for c in range(num) if is_warm[c]]
    for c, concept in enumerate(concepts):
        if is_cooled[c]:
            continue  # cooled down: zero term, zero weight
        psi = eps_concepts[c] - eps_uncond
        if concept.reverse:
            psi = psi * -1
        concept_weights[c, :] = float(concept.weight)
        psi = psi * float(concept.scale)
        # Threshold per sample and channel over the spatial dims; torch.quantile wants float32.
        thr = torch.quantile(psi.abs().flatten(start_dim=2).float(), float(concept.threshold), dim=2, keepdim=False).to(dtype)
        edits[c] = torch.where(psi.abs() >= thr[:, :, None, None], psi, torch.zeros_like(psi))

    gamma: Optional[torch.Tensor] = None
    if 0 < len(warm) < num:
        idx = torch.tensor(warm).to(device, non_blocking=True)  # non_blocking: no stream sync on CUDA
        w = torch.index_select(concept_weights, 0, idx)
        w = torch.where(w < 0, torch.zeros_like(w), w)
        total = w.sum(dim=0)
        w = torch.where(total > 0, w / total, torch.zeros_like(w))
        gamma = torch.einsum("cb,cbijk->bijk", w, torch.index_select(edits, 0, idx))

    w_all = torch.nan_to_num(torch.where(concept_weights < 0, torch.zeros_like(concept_weights), concept_weights))
    edit = torch.einsum("cb,cbijk->bijk", w_all, edits)
    edit = edit + momentum_scale * momentum
    momentum = momentum_beta * momentum + (1 - momentum_beta) * edit
    if len(warm) == num:
        gamma = edit
    return gamma, momentum
