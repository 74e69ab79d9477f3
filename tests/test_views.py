"""View conditioning: Perp-Neg weight schedules (hand-checked), nearest view, view prompts."""

from __future__ import annotations

import math

import pytest
import torch

from dreamperp.config import PerpNegConfig
from dreamperp.errors import UsageError
from dreamperp.guidance.views import (
    named_view_mix,
    nearest_view,
    perpneg_params,
    perpneg_weights,
    view_prompts,
    wrap_azimuth,
)

E = math.exp


def ts(a: float, b: float, c: float, r: float) -> float:
    return a * E(-b * r) + c


def f_fs(r: float) -> float:
    return ts(4, 0.5, -2.426, r)


def f_sb(r: float) -> float:
    return ts(1, 0.5, -0.606, r)


def f_fsb(r: float) -> float:
    return ts(1, 0.5, 0.967, r)


# azimuth: (pos_mix front, side, back), (neg front, neg side) — computed by hand from docs/design.md §3.
THREESTUDIO = {
    0.0: ((1, 0, 0), (f_fs(1), f_fs(0))),  # front: front weight 4e^-0.5-2.426 ≈ 1.2e-4, side 1.574
    45.0: ((0.5, 0.5, 0), (f_fs(0.5), f_fs(0.5))),
    -45.0: ((0.5, 0.5, 0), (f_fs(0.5), f_fs(0.5))),
    9.0: ((0.9, 0.1, 0), (f_fs(0.9), f_fs(0.1))),
    90.0: ((0, 1, 0), (f_fsb(1), f_sb(1))),  # side: |a| >= 90 branch, r = 1
    -90.0: ((0, 1, 0), (f_fsb(1), f_sb(1))),
    135.0: ((0, 0.5, 0.5), (f_fsb(0.5), f_sb(0.5))),
    -135.0: ((0, 0.5, 0.5), (f_fsb(0.5), f_sb(0.5))),
    180.0: ((0, 0, 1), (1 + 0.967, 1 - 0.606)),
    -180.0: ((0, 0, 1), (1.967, 0.394)),
    360.0: ((1, 0, 0), (f_fs(1), f_fs(0))),
    270.0: ((0, 1, 0), (f_fsb(1), f_sb(1))),
}

# stable-dreamfusion, negative_w=2, front_decay=2, side_decay=10.
SDF = {
    0.0: ((1, 0, 0), (0.0, 2.0)),  # r = 1 > 0.8: no front negative; side e^0·2
    9.0: ((0.9, 0.1, 0), (0.0, 2 * E(-1.0))),
    45.0: ((0.5, 0.5, 0), (2 * E(-1.0), 2 * E(-5.0))),
    -45.0: ((0.5, 0.5, 0), (2 * E(-1.0), 2 * E(-5.0))),
    81.0: ((0.1, 0.9, 0), (2 * E(-0.2), 0.0)),  # r = 0.1 < 0.2: no side negative
    90.0: ((0, 1, 0), (2.0, 0.0)),
    -90.0: ((0, 1, 0), (2.0, 0.0)),
    135.0: ((0, 0.5, 0.5), (2.0, E(-5.0))),
    -135.0: ((0, 0.5, 0.5), (2.0, E(-5.0))),
    171.0: ((0, 0.1, 0.9), (2.0, E(-1.0))),
    180.0: ((0, 0, 1), (2.0, 1.0)),
    -180.0: ((0, 0, 1), (2.0, 1.0)),
}


@pytest.mark.parametrize("schedule,table", [("threestudio", THREESTUDIO), ("stable-dreamfusion", SDF)])
def test_schedule_hand_values(schedule: str, table: dict) -> None:
    az = torch.tensor(list(table))
    pos, neg = perpneg_weights(az, torch.zeros_like(az), schedule=schedule)
    assert pos.shape == (len(table), 4) and neg.shape == (len(table), 4)
    want_pos = torch.tensor([[*p, 0.0] for p, _ in table.values()])
    want_neg = torch.tensor([[max(f, 0), max(s, 0), 0.0, 0.0] for _, (f, s) in table.values()])
    assert torch.allclose(pos, want_pos, atol=1e-6)
    assert torch.allclose(neg, want_neg, atol=1e-5), (neg, want_neg)


def test_threestudio_overhead_and_clamp() -> None:
    az = torch.tensor([0.0, 0.0, 180.0])
    el = torch.tensor([61.0, 60.0, 80.0])
    pos, neg = perpneg_weights(az, el)
    assert torch.equal(pos[0], torch.tensor([0.0, 0.0, 0.0, 1.0])) and torch.equal(neg[0], torch.zeros(4))
    assert pos[1, 0] == 1.0  # 60 is not above the threshold
    assert torch.equal(pos[2], torch.tensor([0.0, 0.0, 0.0, 1.0]))
    # threshold is overridable; stable-dreamfusion has no overhead rule
    pos, _ = perpneg_weights(az, el, overhead_threshold=85.0)
    assert pos[2, 2] == 1.0
    pos, _ = perpneg_weights(az, el, schedule="stable-dreamfusion")
    assert pos[:, 3].abs().sum() == 0
    # a schedule constant that makes a weight negative is clamped to 0
    _, neg = perpneg_weights(torch.tensor([0.0]), f_fs=(1.0, 0.5, -5.0))
    assert neg.min() == 0.0


def test_constants_are_overridable() -> None:
    az = torch.tensor([45.0, 180.0])
    _, neg = perpneg_weights(az, schedule="stable-dreamfusion", negative_w=3.0, front_decay=1.0, side_decay=4.0)
    assert torch.allclose(neg[0, :2], torch.tensor([3 * E(-0.5), 3 * E(-2.0)]))
    assert torch.allclose(neg[1, :2], torch.tensor([3.0, 1.5]))
    _, neg = perpneg_weights(az, f_fs=(2.0, 1.0, 0.0), f_sf=(1.0, 0.0, 0.5), f_fsb=(0.0, 0.0, 0.25), f_sb=(0.0, 0.0, 0.75))
    assert torch.allclose(neg[0, :2], torch.tensor([2 * E(-0.5), 1.5]))
    assert torch.allclose(neg[1, :2], torch.tensor([0.25, 0.75]))
    # the config section maps onto the keyword arguments
    cfg = PerpNegConfig(schedule="stable-dreamfusion", negative_w=3.0, front_decay=1.0, side_decay=4.0)
    _, neg2 = perpneg_weights(az, **perpneg_params(cfg))
    _, neg3 = perpneg_weights(az, schedule="stable-dreamfusion", negative_w=3.0, front_decay=1.0, side_decay=4.0)
    assert torch.equal(neg2, neg3)


def test_vectorised_batch_of_1000() -> None:
    g = torch.Generator().manual_seed(0)
    az = torch.rand(1000, generator=g) * 720 - 360
    el = torch.rand(1000, generator=g) * 100 - 10
    for schedule in ("threestudio", "stable-dreamfusion"):
        pos, neg = perpneg_weights(az, el, schedule=schedule)
        assert pos.shape == (1000, 4) and neg.shape == (1000, 4)
        assert torch.allclose(pos.sum(1), torch.ones(1000), atol=1e-6)
        assert (pos >= 0).all() and (neg >= 0).all()
        assert (neg[:, 2:] == 0).all()  # only front and side are ever negatives
        # same as evaluating each sample alone (to rounding: a batch of 1 takes ATen's scalar loop,
        # a batch of 1000 its vectorised exp, and the two may differ in the last bit)
        for i in (0, 17, 999):
            p1, n1 = perpneg_weights(az[i : i + 1], el[i : i + 1], schedule=schedule)
            assert torch.allclose(p1[0], pos[i], rtol=1e-6, atol=1e-7) and torch.allclose(n1[0], neg[i], rtol=1e-6, atol=1e-7)


def test_unknown_schedule() -> None:
    with pytest.raises(UsageError, match="schedule"):
        perpneg_weights(torch.zeros(1), schedule="magic")


def test_nearest_view_and_prompts() -> None:
    az = torch.tensor([0.0, 44.0, 45.0, -90.0, 135.0, 136.0, -179.0, 350.0, 10.0])
    el = torch.tensor([0.0] * 8 + [70.0])
    assert nearest_view(az, el).tolist() == [0, 0, 1, 1, 1, 2, 2, 0, 3]
    assert nearest_view(az).tolist()[-1] == 0
    assert view_prompts("a corgi") == ["a corgi, front view", "a corgi, side view", "a corgi, back view", "a corgi, overhead view"]
    assert torch.allclose(wrap_azimuth(torch.tensor([180.0, -180.0, 190.0, 360.0, -540.0])), torch.tensor([180.0, 180.0, -170.0, 0.0, 180.0]))


def test_named_views() -> None:
    pn = PerpNegConfig()
    pos, neg = named_view_mix("overhead", 2, pn)
    assert torch.equal(pos, torch.tensor([[0.0, 0, 0, 1]] * 2)) and neg.abs().sum() == 0
    pos, neg = named_view_mix("back", 1, pn)
    assert pos[0, 2] == 1.0 and torch.allclose(neg[0, :2], torch.tensor([1.967, 0.394]))
    pos, neg = named_view_mix("side", 1, pn, use_perp_neg=False)
    assert torch.equal(pos[0], torch.tensor([0.0, 1, 0, 0])) and neg.abs().sum() == 0
