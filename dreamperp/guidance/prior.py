"""The prior of a run: a model-family backend paired with the guided score (docs/design.md §9).

``dreamperp sample`` and ``dreamperp train`` both get their prior here, so both use the same two
pieces: :func:`~dreamperp.guidance.backends.make_backend` (chosen by the model folder's layout) and
:class:`~dreamperp.guidance.score.GuidedScore` (view conditioning, the one UNet call, Perp-Neg,
SEGA, SDS).
"""

from __future__ import annotations

from typing import Any

from dreamperp.config import GuidanceConfig
from dreamperp.device import resolve_device
from dreamperp.guidance.backends import make_backend
from dreamperp.guidance.score import GuidedScore


def load_prior(cfg: GuidanceConfig, prompt: str, negative_prompt: str = "", device: Any = "cpu", components: Any = None) -> GuidedScore:
    """The guided score of ``cfg.model`` for ``prompt``.

    ``device``: torch device or 'auto'; ``components``: already loaded
    :class:`~dreamperp.models.loading.DiffusionComponents` (else ``cfg.model`` is loaded in
    ``cfg.dtype``). The text encoder is used once, here, to cache every prompt's embedding.
    """
    GuidedScore.check_inputs(cfg, prompt)  # before loading any weights
    backend = make_backend(cfg, resolve_device(device), components)
    return GuidedScore(backend, cfg, prompt, negative_prompt)
