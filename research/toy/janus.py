"""Janus metrics of a turntable, from per-frame toy-classifier outputs (docs/design.md §10).

Pure metric code: no rendering, no training. A turntable is N frames at known azimuths (degrees,
any order, together covering the full circle, e.g. the 36 orbit frames ``10·i``) at one elevation,
each classified by :class:`~research.toy.classifier.ToyClassifier` into view probabilities
``[N, 4]`` (VIEWS: front, side, back, overhead) and family / colour predictions. Per run:

* **view consistency**: the share of frames whose predicted view (argmax) equals the true view of
  its camera, by the toy world's rule (:func:`~research.toy.world.view_of`: front |a| < 45°,
  side 45°-135°, back > 135°, overhead above 60° elevation);
* **Janus**: any frame in the back sector (|a| > 135°) has p(front) > 0.5, or the frames predicted
  "front" form more than one contiguous arc on the circle (frames sorted by azimuth, the last one
  adjacent to the first: an arc across ±180° is one arc);
* **identity**: the share of frames predicted as the prompted family *and* colour;
* **one face**: not Janus and exactly one front arc: a face was formed, and is seen from the front
  only (a run with no frame predicted "front" has no face, and is not Janus either).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

from dreamperp.cameras import wrap_azimuth
from dreamperp.config import BACK_MIN_AZIMUTH_DEG
from dreamperp.errors import UsageError
from research.toy.captions import VIEWS
from research.toy.world import COLOUR_NAMES, FAMILIES, view_of

FRONT, SIDE, BACK, OVERHEAD = (VIEWS.index(v) for v in ("front", "side", "back", "overhead"))
BACK_SECTOR_DEG = BACK_MIN_AZIMUTH_DEG  # |azimuth| above this is the back sector of the Janus test (the view rule's back)
JANUS_FRONT_PROB = 0.5  # a back-sector frame with p(front) above this makes the run Janus


@dataclass
class TurntableScore:
    """The metrics of one turntable (see the module docstring); shares in [0, 1]."""

    frames: int
    view_consistency: float
    janus: bool
    back_front_frames: int  # back-sector frames with p(front) > 0.5
    front_arcs: int  # contiguous arcs of predicted-front frames on the circle
    identity: float  # share predicted as the prompted family and colour
    family_share: float  # share predicted as the prompted family (any colour)
    colour_share: float  # share predicted as the prompted colour (any family)
    one_face: bool  # not Janus, and the front frames form exactly one arc

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_toy_prompt(prompt: str) -> tuple[int, int]:
    """``"a red bird"`` (any view suffix after a comma ignored) → (family, colour) indices into FAMILIES, COLOUR_NAMES.

    UsageError when the prompt names no toy family or colour, or several of either.
    """
    words = re.findall(r"[a-z]+", prompt.split(",")[0].lower())
    fams = sorted({FAMILIES.index(w) for w in words if w in FAMILIES})
    cols = sorted({COLOUR_NAMES.index(w) for w in words if w in COLOUR_NAMES})
    if len(fams) != 1 or len(cols) != 1:
        raise UsageError(
            f"prompt {prompt!r} is not a toy-world prompt: it needs exactly one family ({', '.join(FAMILIES)}) "
            f"and one colour ({', '.join(COLOUR_NAMES)}), e.g. 'a red bird'"
        )
    return fams[0], cols[0]


def _index(x: Tensor | Any, name: str, n: int) -> Tensor:
    """Predictions as indices ``[N]``: indices are kept, probabilities / logits ``[N, K]`` are argmaxed."""
    x = torch.as_tensor(x)
    if x.dim() == 2:
        x = x.argmax(-1)
    if x.shape != (n,):
        raise ValueError(f"{name}: expected {n} predictions (indices [N] or scores [N, K]), got shape {tuple(x.shape)}")
    return x.long()


def is_one_face(janus: bool, front_arcs: int) -> bool:
    """A face that formed and shows only at the front: no Janus, one arc of predicted-front frames."""
    return not janus and front_arcs == 1


def front_arcs(azimuth_deg: Tensor, is_front: Tensor) -> int:
    """Number of contiguous arcs of True in ``is_front [N]`` around the circle, frames ordered by azimuth.

    The frame with the largest wrapped azimuth is adjacent to the one with the smallest, so an arc
    crossing ±180° counts once; all frames front is one arc, none is zero.
    """
    is_front = torch.as_tensor(is_front, dtype=torch.bool).reshape(-1)
    order = torch.argsort(wrap_azimuth(torch.as_tensor(azimuth_deg, dtype=torch.float64).reshape(-1)), stable=True)
    f = is_front[order]
    if f.numel() == 0 or not bool(f.any()):
        return 0
    if bool(f.all()):
        return 1
    # An arc starts where a front frame follows a non-front one (the previous of frame 0 is the last).
    return int((f & ~torch.roll(f, 1)).sum())


def score_turntable(
    azimuth_deg: Tensor,
    view_probs: Tensor,
    family_pred: Tensor,
    colour_pred: Tensor,
    family: int,
    colour: int,
    elevation_deg: float | Tensor = 15.0,
) -> TurntableScore:
    """Score one turntable.

    ``azimuth_deg [N]`` degrees (wrapped here), ``view_probs [N, 4]`` probabilities over VIEWS (rows
    sum to 1), ``family_pred``/``colour_pred`` indices ``[N]`` or scores ``[N, K]``, ``family``/``colour``
    the prompted indices, ``elevation_deg`` scalar or ``[N]`` (decides only the overhead rule).
    """
    az = wrap_azimuth(torch.as_tensor(azimuth_deg, dtype=torch.float64).reshape(-1))
    n = az.numel()
    probs = torch.as_tensor(view_probs, dtype=torch.float64)
    if probs.shape != (n, len(VIEWS)):
        raise ValueError(f"view_probs: expected shape ({n}, {len(VIEWS)}), got {tuple(probs.shape)}")
    if n == 0:
        raise ValueError("a turntable needs at least one frame")
    elev = torch.as_tensor(elevation_deg, dtype=torch.float64).expand(n)
    fam, col = _index(family_pred, "family_pred", n), _index(colour_pred, "colour_pred", n)
    pred_view = probs.argmax(-1)
    true_view = view_of(az, elev)
    back_front = int(((az.abs() > BACK_SECTOR_DEG) & (probs[:, FRONT] > JANUS_FRONT_PROB)).sum())
    arcs = front_arcs(az, pred_view == FRONT)
    fam_ok, col_ok = fam == int(family), col == int(colour)
    janus = back_front > 0 or arcs > 1
    return TurntableScore(
        frames=n,
        view_consistency=float((pred_view == true_view).double().mean()),
        janus=janus,
        back_front_frames=back_front,
        front_arcs=arcs,
        identity=float((fam_ok & col_ok).double().mean()),
        family_share=float(fam_ok.double().mean()),
        colour_share=float(col_ok.double().mean()),
        one_face=is_one_face(janus, arcs),
    )


@torch.no_grad()
def classify_frames(classifier: Any, images: Tensor, chunk: int = 64) -> dict[str, Tensor]:
    """Softmax probabilities per head of a ToyClassifier for ``images [N, 3, H, W]`` in [0, 1]
    (any size: the classifier area-resizes): view ``[N, 4]``, family ``[N, 3]``, colour ``[N, 4]``, on the CPU."""
    was = classifier.training
    classifier.eval()
    device = next(classifier.parameters()).device
    out: dict[str, list[Tensor]] = {}
    try:
        for i in range(0, images.shape[0], chunk):
            logits = classifier(images[i : i + chunk].to(device, torch.float32))
            for k, v in logits.items():
                out.setdefault(k, []).append(v.float().softmax(-1).cpu())
    finally:
        classifier.train(was)
    return {k: torch.cat(v) for k, v in out.items()}


def score_images(
    classifier: Any, images: Tensor, azimuth_deg: Tensor, family: int, colour: int, elevation_deg: float | Tensor = 15.0
) -> tuple[TurntableScore, dict[str, Tensor]]:
    """Classify turntable frames ``images [N, 3, H, W]`` and score them; returns the score and the probabilities."""
    probs = classify_frames(classifier, images)
    return score_turntable(azimuth_deg, probs["view"], probs["family"], probs["colour"], family, colour, elevation_deg), probs
