"""Guidance: how a frozen diffusion model's scores become gradients for the scene (docs/design.md §3–5, §9).

One name for one thing:

* the **guidance** is :class:`~dreamperp.guidance.score.GuidedScore` — view conditioning, the one
  UNet call, Perp-Neg, SEGA and SDS; its entry point ``guidance(rgb, azimuth, elevation, *, step,
  state)`` returns ``{"loss_sds", ..., "state"}``; the caller owns the state. The trainer and
  checkpoints call it the run's ``prior`` (the checkpoint key holds its state), and :func:`~dreamperp.guidance.prior.load_prior` builds it;
* a **backend** (:mod:`~dreamperp.guidance.backends`) is what differs between model families
  (text encoder, VAE or pixels, ε/v prediction) behind one small protocol;
* :mod:`~dreamperp.guidance.views`, :mod:`~dreamperp.guidance.perpneg`,
  :mod:`~dreamperp.guidance.sega` and :mod:`~dreamperp.guidance.sds` are its formulas.
"""
