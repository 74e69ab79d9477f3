"""Janus metrics of turntables (research.toy.janus), the turntable scorer of a trained run
(research.toy.turntable) and tools/bench_janus.py's bookkeeping."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dreamperp.cameras import orbit_cameras
from dreamperp.errors import UsageError
from research.toy.janus import BACK, FRONT, SIDE, front_arcs, parse_toy_prompt, score_turntable
from research.toy.world import COLOUR_NAMES, FAMILIES, render, view_of

ROOT = Path(__file__).resolve().parents[1]
AZ36 = torch.arange(36) * 10.0  # the turntable's azimuths 0, 10, ..., 350 (wrapped inside the metrics)


def one_hot_views(views: torch.Tensor, p: float = 0.9) -> torch.Tensor:
    """View probabilities ``[N, 4]``: ``p`` on the given view, the rest spread evenly."""
    probs = torch.full((views.numel(), 4), (1 - p) / 3, dtype=torch.float64)
    probs[torch.arange(views.numel()), views] = p
    return probs


def true_views(az: torch.Tensor = AZ36) -> torch.Tensor:
    from dreamperp.cameras import wrap_azimuth

    return view_of(wrap_azimuth(az), torch.full_like(az, 15.0))


# ------------------------------------------------------------------------------------ arcs
@pytest.mark.parametrize(
    "front_deg, arcs",
    [
        ([], 0),
        (list(range(0, 360, 10)), 1),  # every frame
        ([0, 10, 20, 30, 40, 320, 330, 340, 350], 1),  # across 0: one arc even though 350 wraps to -10
        ([170, 180, 190], 1),  # across ±180: 190 wraps to -170, the first frame in order, next to 180 (the last)
        ([180], 1),
        ([0, 180], 2),
        ([0, 10, 350, 170, 180, 190], 2),  # a face in front and one behind
        ([0, 90, 180, 270], 4),
        ([0, 20], 2),  # a one-frame gap splits an arc
    ],
)
def test_front_arcs_on_the_circle(front_deg: list[int], arcs: int) -> None:
    is_front = torch.tensor([int(a) in front_deg for a in AZ36.tolist()])
    assert front_arcs(AZ36, is_front) == arcs
    # The order of the frames does not matter, nor the azimuth representation (-170 == 190).
    perm = torch.randperm(36, generator=torch.Generator().manual_seed(0))
    assert front_arcs(AZ36[perm], is_front[perm]) == arcs
    assert front_arcs(AZ36 - 360.0, is_front) == arcs


def test_ground_truth_probabilities_score_one_and_no_janus() -> None:
    tv = true_views()
    s = score_turntable(AZ36, one_hot_views(tv), torch.zeros(36), torch.full((36,), 2), family=0, colour=2)
    assert s.frames == 36 and s.view_consistency == 1.0
    assert not s.janus and s.front_arcs == 1 and s.back_front_frames == 0 and s.one_face
    assert s.identity == s.family_share == s.colour_share == 1.0
    # No frame seen as a front: no Janus, but no face either.
    s = score_turntable(AZ36, one_hot_views(torch.full((36,), BACK)), torch.zeros(36), torch.zeros(36), 0, 0)
    assert not s.janus and s.front_arcs == 0 and not s.one_face


def test_a_face_behind_is_janus() -> None:
    tv = true_views()
    views = tv.clone()
    views[(AZ36 >= 170) & (AZ36 <= 190)] = FRONT  # three back frames look like fronts
    s = score_turntable(AZ36, one_hot_views(views), torch.zeros(36), torch.zeros(36), 0, 0)
    assert s.janus and s.back_front_frames == 3 and s.front_arcs == 2 and not s.one_face
    assert s.view_consistency == pytest.approx(33 / 36)


def test_back_frame_front_probability_threshold_and_second_arc() -> None:
    tv = true_views()
    # p(front) = 0.45 on a back frame, not the argmax: neither criterion fires.
    probs = one_hot_views(tv)
    i180 = 18
    probs[i180] = torch.tensor([0.45, 0.05, 0.5, 0.0], dtype=torch.float64)
    s = score_turntable(AZ36, probs, torch.zeros(36), torch.zeros(36), 0, 0)
    assert not s.janus and s.back_front_frames == 0 and s.view_consistency == 1.0
    # p(front) exactly 0.5 as argmax: not "> 0.5", but the frame is a second front arc.
    probs[i180] = torch.tensor([0.5, 0.3, 0.2, 0.0], dtype=torch.float64)
    s = score_turntable(AZ36, probs, torch.zeros(36), torch.zeros(36), 0, 0)
    assert s.janus and s.back_front_frames == 0 and s.front_arcs == 2
    # A second front arc on a side (not in the back sector) is Janus too.
    views = tv.clone()
    views[9] = FRONT  # 90°
    s = score_turntable(AZ36, one_hot_views(views), torch.zeros(36), torch.zeros(36), 0, 0)
    assert s.janus and s.back_front_frames == 0 and s.front_arcs == 2


def test_one_front_arc_reaching_the_back_is_janus_by_the_back_rule() -> None:
    # Every frame "front": one arc, but the back frames are fronts with p > 0.5.
    s = score_turntable(AZ36, one_hot_views(torch.zeros(36, dtype=torch.long)), torch.zeros(36), torch.zeros(36), 0, 0)
    assert s.front_arcs == 1 and s.back_front_frames == 9 and s.janus and not s.one_face  # one arc, but seen from behind
    # The face only behind (an object turned round): one arc, in the back sector.
    views = torch.where(true_views() == BACK, FRONT, torch.where(true_views() == FRONT, BACK, SIDE))
    s = score_turntable(AZ36, one_hot_views(views), torch.zeros(36), torch.zeros(36), 0, 0)
    assert s.front_arcs == 1 and s.janus


def test_identity_needs_family_and_colour() -> None:
    tv = true_views()
    fam = torch.zeros(36, dtype=torch.long)
    col = torch.zeros(36, dtype=torch.long)
    fam[:9] = 1  # 9 frames the wrong family
    col[4:13] = 3  # 9 frames the wrong colour, 5 of them also the wrong family
    # Scores [N, K] are argmaxed like indices.
    fam_scores = torch.nn.functional.one_hot(fam, len(FAMILIES)).double()
    s = score_turntable(AZ36, one_hot_views(tv), fam_scores, col, 0, 0)
    assert s.family_share == pytest.approx(27 / 36) and s.colour_share == pytest.approx(27 / 36)
    assert s.identity == pytest.approx((36 - 13) / 36)


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="view_probs"):
        score_turntable(AZ36, torch.zeros(36, 3), torch.zeros(36), torch.zeros(36), 0, 0)
    with pytest.raises(ValueError, match="family_pred"):
        score_turntable(AZ36, torch.zeros(36, 4), torch.zeros(35), torch.zeros(36), 0, 0)
    assert parse_toy_prompt("a red bird") == (FAMILIES.index("bird"), COLOUR_NAMES.index("red"))
    assert parse_toy_prompt("A Blue Robot, back view") == (FAMILIES.index("robot"), COLOUR_NAMES.index("blue"))
    for bad in ("a hamburger", "a red blue bird", "a red bird and a cat"):
        with pytest.raises(UsageError, match="toy-world prompt"):
            parse_toy_prompt(bad)


# ------------------------------------------------------------------------------- with the classifier
def shipped_classifier():
    from dreamperp.toy.assets import toy_asset_path
    from research.toy.classifier import ToyClassifier

    try:
        return ToyClassifier.load(toy_asset_path("toy-classifier"))
    except UsageError as err:  # only until the trained classifier is committed
        pytest.skip(f"the shipped toy classifier is not in dreamperp/toy/weights/ yet: {err}")


def test_ground_truth_turntables_with_the_shipped_classifier() -> None:
    """Toy-world renders of a turntable score ≈ 1 and no Janus; with the back frames replaced by
    front renders they are Janus."""
    from research.toy.janus import score_images

    clf = shipped_classifier()
    cams = orbit_cameras(36, 15.0, 1.75, 55.0, 32, 32)
    back = cams.azimuth_deg.abs() > 135
    nb = int(back.sum())
    for f, colour_name in enumerate(("red", "yellow", "blue")):
        c = COLOUR_NAMES.index(colour_name)
        images = render(torch.full((36,), f), torch.full((36,), c), cams, supersample=2)
        s, _ = score_images(clf, images, cams.azimuth_deg, f, c, 15.0)
        assert s.view_consistency >= 0.9, (FAMILIES[f], s)
        assert not s.janus and s.front_arcs == 1, (FAMILIES[f], s)
        assert s.identity >= 0.95, (FAMILIES[f], s)
        # The back frames replaced by renders from the front (azimuth 0).
        images[back] = render(torch.full((nb,), f), torch.full((nb,), c), cams[torch.zeros(nb, dtype=torch.long)], supersample=2)
        s, _ = score_images(clf, images, cams.azimuth_deg, f, c, 15.0)
        assert s.janus and s.back_front_frames >= nb - 1, (FAMILIES[f], s)
        assert s.view_consistency <= 1 - (nb - 1) / 36


def test_short_toy_text_to_3d_scored_end_to_end(tmp_path: Path, tiny_pixel_dir: Path) -> None:
    """configs/toy.yaml for a few steps through `dreamperp train`, then its turntable classified.

    The prior is the shipped toy prior when dreamperp/toy/weights/toy-prior exists, else a tiny random pixel-space
    prior in its layout (the machinery is the same); the classifier is the shipped one when present,
    else a randomly initialised one (this test checks the plumbing; the metric values are tested above).
    """
    from dreamperp.cli import main
    from dreamperp.toy.assets import assets_root
    from research.toy.classifier import ToyClassifier
    from research.toy.turntable import score_run

    model = "toy" if (assets_root() / "toy-prior" / "model_index.json").is_file() else str(tiny_pixel_dir)
    out = tmp_path / "out"
    code = main([
        "train", str(ROOT / "dreamperp" / "configs" / "toy.yaml"), f"guidance.model={model}", f"output_dir={out}", "trainer.max_steps=4",
        "trainer.val_every=4", "trainer.checkpoint_every=4", "trainer.progress=false", "trainer.video_at_end=false",
        "render.albedo_warmup_steps=2", "trainer.tensorboard=false", "trainer.val_size=32",
    ])
    assert code == 0
    (run,) = [p for p in (out / "toy").iterdir() if p.is_dir()]
    try:
        clf = ToyClassifier.load(assets_root() / "toy-classifier")
    except UsageError:
        torch.manual_seed(0)
        clf = ToyClassifier()
    scored = score_run(run, clf, frames=12)
    assert scored.images.shape == (12, 3, clf.size, clf.size)
    assert float(scored.images.min()) >= 0 and float(scored.images.max()) <= 1
    assert torch.allclose(scored.azimuths, torch.tensor([0.0, 30, 60, 90, 120, 150, 180, -150, -120, -90, -60, -30]))
    assert scored.probs["view"].shape == (12, 4) and torch.allclose(scored.probs["view"].sum(-1), torch.ones(12), atol=1e-5)
    s = scored.score
    assert s.frames == 12 and 0 <= s.view_consistency <= 1 and 0 <= s.identity <= 1 and s.front_arcs >= 0
    assert isinstance(s.janus, bool) and json.loads(json.dumps(s.as_dict())) == s.as_dict()
    shares = load_tool("white_back").score_run(run, [0.0, 180.0], 16)  # the white-back report on the same run
    assert list(shares) == [0.0, 180.0] and all(0.0 <= v <= 1.0 for v in shares.values())


def test_white_back_share_counts_opaque_white_only() -> None:
    """tools/white_back.py: white material counts, the white background (opacity 0) and coloured or
    half-transparent pixels do not. A 4×4 frame: 3 opaque white pixels, 1 empty white (background),
    1 opaque blue, 1 white at opacity 0.4 → 3/16."""
    tool = load_tool("white_back")
    rgb, opacity = torch.ones(4, 4, 3), torch.zeros(4, 4, 1)
    opacity[0, :3] = 1.0  # three opaque white pixels
    opacity[1, 0], rgb[1, 0] = 1.0, torch.tensor([0.1, 0.2, 0.9])  # opaque blue
    opacity[1, 1] = 0.4  # white, but mostly background
    assert tool.white_share(rgb, opacity) == pytest.approx(3 / 16)
    rgb[0, 0, 2] = 0.79  # one channel below the white bound
    assert tool.white_share(rgb, opacity) == pytest.approx(2 / 16)
    assert [tool.is_back(a) for a in (0, 135, 136, 180, -180, 225, 224.9, 540, -136)] == [False, False, True, True, True, False, True, True, True]


# ------------------------------------------------------------------------------------ the tool
def load_tool(name: str = "bench_janus"):
    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fake_result(tool, key: str, group: str, seed: int, janus: bool, vc: float, colour_counts: dict) -> dict:
    return dict(
        version=tool.RESULT_VERSION, key=key, group=group, seed=seed, frames=36, janus=janus, view_consistency=vc, identity=0.5,
        family_share=1.0, colour_share=0.5, back_front_frames=int(janus), front_arcs=1 + int(janus), colour_counts=colour_counts,
        train_seconds=1.0, score_seconds=1.0,
    )


def test_bench_plan_resume_table_and_contact_sheet(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Finished runs (a result file) are not trained again; the table, CSVs and contact sheet come from the results."""
    from research.toy.classifier import ToyClassifier

    tool = load_tool()
    clf_dir = ToyClassifier().save(tmp_path / "clf")
    out = tmp_path / "bench"
    args = ["--families", "bird,cat", "--seeds", "0,1", "--methods", "plain,perpneg-ts", "--out", str(out), "--classifier", str(clf_dir)]
    ns = tool.argparse.Namespace(sega=False, methods="plain,perpneg-ts", family_list=["bird", "cat"], seed_list=[0, 1], colour_map=tool.parse_colours(""))
    runs = tool.plan(ns)
    ns.colour_map = tool.parse_colours("bird=yellow")  # --colours: another colour for a family, the others as before
    assert [r["key"] for r in tool.plan(ns)][::4] == ["plain-bird-yellow-s0", "plain-cat-yellow-s0"] and tool.plan(ns)[0]["prompt"] == "a yellow bird"
    for bad in ("bird=purple", "dog=red", "bird"):
        with pytest.raises(UsageError, match="--colours: expected FAMILY=COLOUR"):
            tool.parse_colours(bad)
    assert [r["key"] for r in runs][:3] == ["plain-bird-red-s0", "plain-bird-red-s1", "perpneg-ts-bird-red-s0"] and len(runs) == 8
    assert "guidance.perp_neg.schedule=threestudio" in runs[2]["overrides"] and runs[0]["prompt"] == "a red bird"
    rng = np.random.default_rng(0)
    for r in runs:
        janus = r["key"] == "plain-bird-red-s0"
        res = fake_result(tool, r["key"], r["group"], r["seed"], janus, 0.5 if janus else 0.75, {c: 9 for c in COLOUR_NAMES})
        if r["key"] == "perpneg-ts-cat-yellow-s1":
            res["front_arcs"] = 0  # no front seen: neither Janus nor one face
        (out / "results").mkdir(parents=True, exist_ok=True)
        (out / "results" / f"{r['key']}.json").write_text(json.dumps(res))
        (out / "frames").mkdir(exist_ok=True)
        strip = rng.integers(0, 255, (8, 16, 16, 3), dtype=np.uint8)
        from PIL import Image

        Image.fromarray(np.concatenate(list(strip), 1)).save(out / "frames" / f"{r['key']}.png")
        if r["key"] == "plain-bird-red-s0":
            assert np.array_equal(tool.read_strip(out / "frames" / f"{r['key']}.png"), strip)
    assert tool.main(args) == 0
    text = capsys.readouterr().out
    assert text.count("done before (skipped)") == 8 and not (out / "runs").exists()  # nothing trained
    assert "no view conditioning" in text and "1/4 25%" in text and "0/4 0%" in text
    summary = json.loads((out / "janus.json").read_text())
    rows = {r["group"]: r for r in summary["table"]}
    assert rows["plain"]["janus_rate"] == 0.25 and rows["perpneg-ts"]["janus_rate"] == 0.0
    assert rows["plain"]["one_face_runs"] == 3 and rows["perpneg-ts"]["one_face_runs"] == 3
    assert rows["plain"]["view_consistency_mean"] == pytest.approx(0.6875)
    assert rows["plain"]["view_consistency_std"] == pytest.approx(np.std([0.5, 0.75, 0.75, 0.75], ddof=1))
    assert (out / "janus.csv").read_text().splitlines()[0].startswith("group,runs,janus_runs,janus_rate")
    assert len((out / "janus-runs.csv").read_text().splitlines()) == 9
    from PIL import Image

    with Image.open(out / "janus-contact.png") as im:  # 2 families x 2 methods rows of 8 frames
        assert im.width > 8 * 16 and im.height > 4 * 16
    # The same folder with other settings would mix runs: refused, nothing changed.
    before = (out / "janus.json").read_text()
    assert tool.main([*args, "--steps", "7"]) == 2
    assert "other settings (steps differ" in capsys.readouterr().err and (out / "janus.json").read_text() == before


def test_bench_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    tool = load_tool()
    bad_args = (["--methods", "nope"], ["--families", "dog"], ["--seeds", "a"], ["--seeds", "1,1"], ["--config", str(tmp_path / "x.yaml")], ["--jobs", "0"])
    for bad in bad_args:
        assert tool.main([*bad, "--out", str(tmp_path / "o")]) == 2
        assert capsys.readouterr().err.startswith("error: ")
    assert not (tmp_path / "o").exists()
    assert tool.sega_target_colour(ROOT / "dreamperp" / "configs" / "toy-sega.yaml") == "blue"


def test_bench_trains_two_runs_at_once(tmp_path: Path, tiny_pixel_dir: Path, capsys: pytest.CaptureFixture) -> None:
    """--jobs 2 trains two real runs concurrently through ``dreamperp train``; both are scored, and
    the table holds both methods in plan order."""
    tool = load_tool()
    out = tmp_path / "bench"
    args = ["--model", str(tiny_pixel_dir), "--steps", "2", "--families", "bird", "--seeds", "0", "--methods", "plain,views",
            "--frames", "4", "--jobs", "2", "--out", str(out), "--set", "trainer.val_every=100"]
    assert tool.main(args) == 0
    text = capsys.readouterr().out
    assert text.count("identity") == 3 and "done before" not in text  # two run lines + the table header
    summary = json.loads((out / "janus.json").read_text())
    assert [r["group"] for r in summary["table"]] == ["plain", "views"]
    assert [r["key"] for r in summary["runs"]] == ["plain-bird-red-s0", "views-bird-red-s0"]
    assert all(r["steps"] == 2 and r["frames"] == 4 for r in summary["runs"])
    assert tool.main(args) == 0 and capsys.readouterr().out.count("done before (skipped)") == 2


def test_bench_stops_at_a_failed_run(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A run that fails (here: a config key that does not exist) ends the benchmark with exit 2 and a
    line naming its log; the queued run is not started."""
    tool = load_tool()
    out = tmp_path / "bench"
    args = ["--model", "tiny-pixel", "--families", "bird", "--seeds", "0", "--methods", "plain,views", "--out", str(out), "--set", "trainer.nope=1"]
    assert tool.main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: run plain-bird-red-s0 failed (exit 2)") and "full log:" in err
    assert sorted(p.name for p in (out / "logs").iterdir()) == ["plain-bird-red-s0.log"]
    assert not (out / "results").exists() and not (out / "janus.json").exists()
