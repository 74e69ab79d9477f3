"""The toy world: camera conventions, caption statistics, and the shipped prior and classifier."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from dreamperp.cameras import make_cameras
from dreamperp.errors import UsageError
from dreamperp.toy.assets import toy_asset_path
from research.toy.captions import VIEWS, CaptionBias, caption, sample_views
from research.toy.world import (
    COLOUR_NAMES,
    FAMILIES,
    PART,
    render,
    sample_toy_batch,
    view_of,
)

FRONT_ONLY = ("face", "eye")  # parts that must not show from behind


def _cams(azimuth: list[float], elevation: list[float], size: int = 32):
    n = len(azimuth)
    return make_cameras(torch.tensor(elevation), torch.tensor(azimuth), torch.full((n,), 1.75), torch.full((n,), 55.0), size, size)


def _part_pixels(family: int, azimuth: list[float], elevation: list[float]) -> dict[str, torch.Tensor]:
    """Pixel count of each part ``[n]`` in part masks of ``family`` seen from the given angles."""
    n = len(azimuth)
    _, parts = render(torch.full((n,), family), torch.zeros(n, dtype=torch.long), _cams(azimuth, elevation), supersample=2, return_parts=True)
    return {name: (parts == i).flatten(1).sum(1) for name, i in PART.items()}


@pytest.mark.parametrize("family", range(len(FAMILIES)))
def test_front_faces_azimuth_zero_and_the_back_hides_it(family: int) -> None:
    # Up to 30 degrees: from higher behind, the top edge of the bird's face mask shows over its head.
    elev = [-10.0, 15.0, 30.0]
    counts = _part_pixels(family, [a for a in (0.0, 180.0, 90.0, -90.0) for _ in elev], elev * 4)
    front, back, left, right = ({k: v[i * 3:(i + 1) * 3] for k, v in counts.items()} for i in range(4))
    for name in FRONT_ONLY:
        assert (front[name] > 20).all(), (FAMILIES[family], name, front[name])  # the face and eyes are big from the front
        assert (back[name] == 0).all(), (FAMILIES[family], name, back[name])  # and absent from behind
    # The front view shows more face than either side; the mirror-symmetric sides show the same amounts.
    assert (front["face"] > left["face"]).all() and (front["face"] > right["face"]).all()
    # (a pixel may flip where a ray grazes an edge, so up to 2 of ~1000)
    assert (left["face"] - right["face"]).abs().max() <= 2 and (left["body"] - right["body"]).abs().max() <= 2
    if FAMILIES[family] != "cat":  # the cat's back is plain; the bird's tail and the robot's pack are big
        assert (back["back"] > 3 * front["back"].clamp_min(1)).all()
        assert (back["back"] > 60).all()


def test_renders_are_antialiased_on_white() -> None:
    img = render(torch.tensor([0, 1, 2]), torch.tensor([0, 1, 2]), _cams([30.0, 100.0, 170.0], [10.0, 20.0, 30.0]))
    assert img.shape == (3, 3, 32, 32) and img.min() >= 0 and img.max() <= 1
    assert torch.allclose(img[:, :, 0, 0], torch.ones(3, 3))  # corners are background
    values = img.flatten(2)
    # Supersampling gives edge pixels between object and background colours, not only the two.
    assert ((values < 0.97) & (values > 0.5)).any(-1).any(-1).all()


def test_view_rule() -> None:
    az = torch.tensor([0.0, 44.0, -46.0, 90.0, 134.0, 136.0, -179.0, 180.0, 10.0])
    el = torch.tensor([15.0] * 8 + [61.0])
    assert [VIEWS[i] for i in view_of(az, el)] == ["front", "front", "side", "side", "side", "back", "back", "back", "overhead"]


def test_toy_batch_ground_truth_matches_its_cameras() -> None:
    b = sample_toy_batch(24, generator=torch.Generator().manual_seed(3), supersample=1)
    assert b.images.shape == (24, 3, 32, 32)
    assert torch.equal(b.view, view_of(b.azimuth, b.elevation))
    assert (b.azimuth > -180).all() and (b.azimuth <= 180).all()
    for i in range(24):
        assert b.captions[i] == caption(COLOUR_NAMES[b.colour[i]], FAMILIES[b.family[i]], int(b.label[i]))
    non_overhead = b.view != 3
    assert (b.elevation[non_overhead] >= -10).all() and (b.elevation[non_overhead] <= 45).all()
    assert (b.radius >= 1.5).all() and (b.radius <= 2.0).all() and (b.fovy >= 40).all() and (b.fovy <= 70).all()


def _within(count: int, n: int, p: float, sigmas: float = 4.5) -> bool:
    """``count`` of ``n`` Bernoulli(p) draws lies within ``sigmas`` binomial standard deviations of ``n p``."""
    return abs(count - n * p) <= sigmas * math.sqrt(max(n * p * (1 - p), 1e-12)) + 1e-9


def test_caption_statistics_match_the_knobs() -> None:
    bias = CaptionBias()
    assert bias.view_marginal == {"front": 0.60, "side": 0.25, "back": 0.10, "overhead": 0.05}
    assert bias.suffix_prob == 0.5
    assert bias.mislabel["back"] == {"front": 0.20, "side": 0.15, "back": 0.65, "overhead": 0.0}
    assert bias.mislabel["side"] == {"front": 0.20, "side": 0.75, "back": 0.05, "overhead": 0.0}
    assert bias.mislabel["front"]["front"] == 0.90 and bias.mislabel["overhead"]["overhead"] == 0.90
    n = 10_000
    s = sample_views(bias, n, torch.Generator().manual_seed(0))
    has = s.label >= 0
    assert _within(int(has.sum()), n, bias.suffix_prob)
    for i, v in enumerate(VIEWS):
        assert _within(int((s.true_view == i).sum()), n, bias.view_marginal[v]), v
    q = bias.label_marginal()
    for li, lab in enumerate(VIEWS):
        rows = s.label == li
        n_lab = int(rows.sum())
        assert _within(n_lab, int(has.sum()), q[lab]), lab
        for ti, t in enumerate(VIEWS):
            assert _within(int((s.true_view[rows] == ti).sum()), n_lab, bias.mislabel[lab][t]), (lab, t)


def test_missing_assets_name_the_tool_that_rebuilds_them(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="tools/train_toy_prior.py"):
        toy_asset_path("toy-prior", root=tmp_path)
    with pytest.raises(UsageError, match="tools/train_toy_classifier.py"):
        toy_asset_path("toy-classifier", root=tmp_path)


def test_shipped_classifier_reads_fresh_renders() -> None:
    from research.toy.classifier import ToyClassifier

    model = ToyClassifier.load(toy_asset_path("toy-classifier"))
    g = torch.Generator().manual_seed(123)
    n = 48
    family = torch.arange(n) % len(FAMILIES)
    colour = (torch.arange(n) // len(FAMILIES)) % len(COLOUR_NAMES)
    # Azimuths at least 10 degrees from the view boundaries: a small sample should not hinge on them.
    centre = torch.tensor([0.0, 90.0, 180.0, -90.0])[torch.arange(n) % 4]
    az = centre + (torch.rand(n, generator=g) * 2 - 1) * 35
    el = torch.rand(n, generator=g) * 40 - 5
    cams = make_cameras(el, az, 1.5 + 0.5 * torch.rand(n, generator=g), 40 + 30 * torch.rand(n, generator=g), 32, 32)
    pred = model.predict(render(family, colour, cams))
    acc = {k: float((pred[k] == truth).float().mean()) for k, truth in (("view", view_of(cams.azimuth_deg, el)), ("family", family), ("colour", colour))}
    assert acc["view"] >= 0.9 and acc["family"] >= 0.95 and acc["colour"] >= 0.95, acc


def test_shipped_prior_loads_and_runs() -> None:
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    path = toy_asset_path("toy-prior")
    index = json.loads((path / "model_index.json").read_text())
    assert index["unet"] == ["diffusers", "UNet2DConditionModel"] and index["text_encoder"] == ["transformers", "CLIPTextModel"]
    assert index["tokenizer"] == ["transformers", "CLIPTokenizer"] and index["scheduler"] == ["diffusers", "DDPMScheduler"]
    assert "vae" not in index and not (path / "vae").exists()
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    assert size <= 21e6
    unet = UNet2DConditionModel.from_pretrained(path / "unet")
    text = CLIPTextModel.from_pretrained(path / "text_encoder")
    tok = CLIPTokenizer.from_pretrained(path / "tokenizer")
    sched = DDPMScheduler.from_pretrained(path / "scheduler")
    assert sched.config.beta_schedule == "squaredcos_cap_v2" and sched.config.prediction_type == "epsilon"
    assert unet.config.in_channels == 3 and unet.config.sample_size == 32
    prompts = ["a red bird", "a blue cat, back view", "a yellow robot, side view", ""]
    ids = tok(prompts, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        cond = text(ids).last_hidden_state
        eps = unet(torch.randn(4, 3, 32, 32), torch.tensor([10, 200, 500, 900]), encoder_hidden_states=cond).sample
    assert eps.shape == (4, 3, 32, 32) and torch.isfinite(eps).all()
