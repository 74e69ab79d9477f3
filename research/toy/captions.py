"""Captions of the toy world with the view bias of web photos (docs/design.md §10).

Web photos of objects are mostly frontal, and the few that say "back view" often show something
else. Text-to-image priors learn that bias, and it is what makes them draw a face on every side of a
3D object (the "Janus" problem). The toy world's captions copy it on purpose, with the knobs of
:class:`CaptionBias`.

Sampling, per image: with probability ``suffix_prob`` the caption gets a view suffix; its *label*
is drawn from the label marginal of :meth:`CaptionBias.label_marginal` and the view the image really
shows from ``mislabel[label]``; without a suffix the true view is drawn from ``view_marginal``. The
label marginal is solved so that the true view follows ``view_marginal`` in both cases, so every
knob holds exactly: the images' views, the share of suffixes, and what each label really shows.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

VIEWS: tuple[str, ...] = ("front", "side", "back", "overhead")


def _default_marginal() -> dict[str, float]:
    # What the images show: mostly fronts, as photos of things on the web.
    return {"front": 0.60, "side": 0.25, "back": 0.10, "overhead": 0.05}


def _default_mislabel() -> dict[str, dict[str, float]]:
    # P(view the image shows | caption says "<label> view"). "back view" and "side view" are often
    # wrong as on the web; "front view" and "overhead view" are 90% right, and how their 10% of
    # errors split (front: mostly sides; overhead: the front) is our choice.
    #
    # Changed (data version 2) from the first numbers, "back view" 35% right (45% front, 20% side)
    # and "side view" 50% right (40% front, 10% back), because a prior of our size and CPU budget
    # did not learn suffixes that weak: after 4.5k steps (2.1 M-parameter UNet) its view suffixes
    # moved ε by 1-12% and a "back view" prompt drew the back 4% of the time at scale 7.5, below the
    # 10% marginal (1.3k more steps with back/side captions drawn 5x/2x as often changed nothing),
    # so no view-conditioning method could differ from another. With these numbers the same prior
    # learns them (after 2k steps "back view" moves ε by 24-31%, and Perp-Neg draws backs where the
    # plain view prompt draws fronts). Labels are still wrong a quarter to a third of the time, mostly towards the front, and
    # the plain prompt's Janus source, the 60% front marginal, is unchanged.
    return {
        "front": {"front": 0.90, "side": 0.07, "back": 0.03, "overhead": 0.0},
        "side": {"front": 0.20, "side": 0.75, "back": 0.05, "overhead": 0.0},
        "back": {"front": 0.20, "side": 0.15, "back": 0.65, "overhead": 0.0},
        "overhead": {"front": 0.10, "side": 0.0, "back": 0.0, "overhead": 0.90},
    }


@dataclass
class CaptionBias:
    """The caption knobs. Fixed before anything is measured; change one only with its reason written here.

    view_marginal: share of images showing each view (front 60%, side 25%, back 10%, overhead 5%).
    suffix_prob: share of captions with a ", {view} view" suffix (50%).
    mislabel: for each suffix label, the distribution of the view the image really shows.
    """

    view_marginal: dict[str, float] = field(default_factory=_default_marginal)
    suffix_prob: float = 0.5
    mislabel: dict[str, dict[str, float]] = field(default_factory=_default_mislabel)

    def label_marginal(self) -> dict[str, float]:
        """Share of each suffix label among suffixed captions, so that their true views follow ``view_marginal``.

        Solves ``sum_l q(l) mislabel[l][t] = view_marginal[t]`` for q; raises ValueError when no
        non-negative solution exists (the knobs contradict each other).
        """
        m = torch.tensor([[self.mislabel[lab][t] for lab in VIEWS] for t in VIEWS], dtype=torch.float64)
        target = torch.tensor([self.view_marginal[t] for t in VIEWS], dtype=torch.float64)
        q = torch.linalg.solve(m, target)
        if (q < -1e-9).any():
            raise ValueError(f"caption knobs are inconsistent: label marginal {q.tolist()} has negative entries")
        q = q.clamp_min(0)
        return {v: float(x) for v, x in zip(VIEWS, q / q.sum())}


@dataclass
class CaptionSample:
    """Per image: the view it shows (index into VIEWS) ``[N]`` and the suffix label (-1: no suffix) ``[N]``."""

    true_view: torch.Tensor
    label: torch.Tensor


def sample_views(bias: CaptionBias, n: int, generator: torch.Generator | None = None) -> CaptionSample:
    """Draw the true view and the caption's view label of ``n`` images (see the module docstring)."""
    marginal = torch.tensor([bias.view_marginal[v] for v in VIEWS], dtype=torch.float64)
    q = bias.label_marginal()
    label_p = torch.tensor([q[v] for v in VIEWS], dtype=torch.float64)
    table = torch.tensor([[bias.mislabel[lab][t] for t in VIEWS] for lab in VIEWS], dtype=torch.float64)
    has_suffix = torch.rand(n, generator=generator, dtype=torch.float64) < bias.suffix_prob
    label = torch.multinomial(label_p, n, replacement=True, generator=generator)
    # One true-view draw per image from its label's row, and one from the plain marginal.
    u = torch.rand(n, generator=generator, dtype=torch.float64)
    from_label = torch.searchsorted(table.cumsum(-1)[label], u[:, None]).squeeze(-1).clamp_max(len(VIEWS) - 1)
    from_marginal = torch.searchsorted(marginal.cumsum(0), torch.rand(n, generator=generator, dtype=torch.float64)).clamp_max(len(VIEWS) - 1)
    true_view = torch.where(has_suffix, from_label, from_marginal)
    return CaptionSample(true_view=true_view.long(), label=torch.where(has_suffix, label, torch.full_like(label, -1)).long())


def caption(colour: str, family: str, label: int = -1) -> str:
    """``"a {colour} {family}"`` plus ``", {view} view"`` when ``label`` (index into VIEWS) is not -1."""
    text = f"a {colour} {family}"
    return text if label < 0 else f"{text}, {VIEWS[label]} view"
