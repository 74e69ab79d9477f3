"""The step benchmark runs and prints its per-stage table (timings themselves are not asserted)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _load_tool(name: str):  # noqa: ANN202
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool


def test_bench_step_prints_a_stage_table(tiny_model_dir: Path) -> None:
    result = subprocess.run(
        [sys.executable, "tools/bench_step.py", "configs/tiny.yaml", f"guidance.model={tiny_model_dir}", "--steps", "3", "--warmup", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    for stage in ("camera+render", "encode", "unet", "combine", "backward", "optimizer", "**step**"):
        assert f"| {stage} |" in out
    assert "UNet rows per sample: 4" in out  # Perp-Neg: uncond, positive and two negatives in one call
    it_s = float(out.split("it/s: ")[1].split()[0])
    assert it_s > 0
    assert "peak process memory" in out


def test_bench_views_smoke(tiny_pixel_dir: Path, tmp_path: Path, monkeypatch, capsys) -> None:  # noqa: ANN001
    """tools/bench_views.py end to end on a tiny random pixel prior, with a stand-in classifier that
    always answers "back view of a red bird" (so the rates are known)."""
    import json

    import torch

    bench = _load_tool("bench_views")
    views, families, colours = bench.class_names()

    class Always:
        def predict(self, images: torch.Tensor) -> dict:
            n = images.shape[0]
            return {
                "view": torch.full((n,), views.index("back")),
                "family": torch.full((n,), families.index("bird")),
                "colour": torch.full((n,), colours.index("red")),
            }

    monkeypatch.setattr(bench, "load_classifier", lambda folder, device: Always())
    out = tmp_path / "bench"
    samplers = ["view-prompt", "perp-neg"]
    args = ["--model", str(tiny_pixel_dir), "--quick", "--families", "bird,cat", "--colours", "red", "--samplers", ",".join(samplers), "--out", str(out)]
    grad_mode = torch.is_grad_enabled()
    assert bench.main(args) == 0
    assert torch.is_grad_enabled() == grad_mode  # in-process: the tool leaves torch as it found it
    result = json.loads((out / "bench_views.json").read_text())
    assert set(result["table"]) == set(samplers)
    for sampler in samplers:
        assert (out / f"grid-{sampler}.png").is_file()
        back, side = result["table"][sampler]["back"], result["table"][sampler]["side"]
        assert back["n"] == side["n"] == 4  # 2 prompts x 2 samples
        assert back["success_rate"] == 0.5 and back["identity_rate"] == 0.5  # the red bird right, the red cat wrong
        assert side["success_rate"] == 0.0 and side["predicted_views"]["back"] == 1.0
    assert "| perp-neg |" in capsys.readouterr().out


def test_toy_prior_label_weights_keep_each_caption_uniform() -> None:
    """tools/train_toy_prior.py --label-weights: images of a weighted suffix are drawn W times as
    often, every image of one label keeps the same weight (p(image | caption) unchanged), bad specs exit."""
    import pytest
    import torch

    tool = _load_tool("train_toy_prior")
    labels = torch.tensor([-1, 0, 1, 2, 3, 2, 1, -1])  # none, front, side, back, overhead, back, side, none
    assert tool.caption_label_weights("", labels) is None
    w = tool.caption_label_weights("side=2, back=5", labels)
    assert w.tolist() == [1.0, 1.0, 2.0, 5.0, 1.0, 5.0, 2.0, 1.0]
    draws = torch.multinomial(w, 200_000, replacement=True, generator=torch.Generator().manual_seed(0))
    counts = torch.bincount(draws, minlength=len(labels)).double() / 200_000
    # expected w / sum(w) = w / 18; binomial std <= sqrt(0.28 * 0.72 / 2e5) = 0.001: 0.005 is 5 sigma
    assert torch.allclose(counts, w / w.sum(), atol=0.005)
    for bad in ("back", "rear=2", "back=x", "side=0"):
        with pytest.raises(SystemExit, match="--label-weights"):
            tool.caption_label_weights(bad, labels)


def test_toy_prior_family_weights_multiply_the_label_weights() -> None:
    """--family-weights: images of a weighted family are drawn W times as often, on top of their
    caption's --label-weights (the product); either alone is itself; bad specs exit naming the option."""
    import pytest
    import torch

    tool = _load_tool("train_toy_prior")
    labels = torch.tensor([-1, 2, -1, 2, 1, 1])  # none, back, none, back, side, side
    families = torch.tensor([0, 0, 1, 1, 2, 0])  # bird, bird, cat, cat, robot, bird
    assert tool.sampling_weights("", "", labels, families) is None
    assert tool.sampling_weights("", "bird=3", labels, families).tolist() == [3.0, 3.0, 1.0, 1.0, 1.0, 3.0]
    assert tool.sampling_weights("back=4", "", labels, families).tolist() == [1.0, 4.0, 1.0, 4.0, 1.0, 1.0]
    w = tool.sampling_weights("back=4,side=2", "bird=3, robot=0.5", labels, families)
    assert w.tolist() == [3.0, 12.0, 1.0, 4.0, 1.0, 6.0]
    for bad in ("bird", "dog=2", "cat=x", "robot=0"):
        with pytest.raises(SystemExit, match="--family-weights"):
            tool.sampling_weights("", bad, labels, families)


def test_toy_prior_camera_ranges_draw_the_dataset_and_key_its_cache(tmp_path) -> None:
    """--radius-range / --fov-range: the rendered dataset's cameras lie in the ranges, a non-default
    range gets its own cache file (the default keeps the old name), bad specs exit naming the option."""
    import pytest

    tool = _load_tool("train_toy_prior")
    close = tool.load_data(tmp_path, 0, 8, 16, "cpu", "1.5,1.6", "40,45")
    assert close["images"].shape == (8, 16, 16, 3)
    assert ((close["radius"] >= 1.5) & (close["radius"] <= 1.6)).all() and ((close["fovy"] >= 40) & (close["fovy"] <= 45)).all()
    default = tool.load_data(tmp_path, 0, 32, 16, "cpu")  # 8 poses (each in 4 colours) from [1.5, 2.0] and [40, 70]
    assert (default["radius"] > 1.6).any() and (default["fovy"] > 45).any()
    v = tool.DATA_VERSION
    assert sorted(f.name for f in tmp_path.glob("*.npz")) == [f"data-v{v}-seed0-n32-s16.npz", f"data-v{v}-seed0-n8-s16-r1.5-1.6-f40-45.npz"]
    for bad in ("1.5", "2,1", "0,1", "a,b"):
        with pytest.raises(SystemExit, match="--radius-range"):
            tool.data_cameras(bad, "40,70")


def test_toy_prior_evaluate_scores_an_exported_prior_as_its_checkpoint(tmp_path: Path) -> None:
    """--evaluate --model DIR scores an exported prior (the shipped one has no work folder) exactly as
    --evaluate scores the work checkpoint it was exported from: the same EMA weights, the same samples."""
    import torch

    threads = torch.get_num_threads()
    try:  # the tool sets torch's process-wide thread count (--threads); later tests compare bits with subprocesses
        _evaluate_exported_prior(tmp_path)
    finally:
        torch.set_num_threads(threads)


def _evaluate_exported_prior(tmp_path: Path) -> None:
    import json

    import numpy as np
    import pytest
    from PIL import Image

    tool = _load_tool("train_toy_prior")
    work, prior = tmp_path / "work", tmp_path / "prior"
    tiny = ["--num-images", "8", "--channels", "32,32,32", "--batch-size", "4", "--warmup", "1", "--threads", "1"]
    assert tool.main(["--work", str(work), "--steps", "2", *tiny]) in (0, None)
    assert tool.main(["--work", str(work), "--export", str(prior)]) in (0, None)
    scored = {}
    for name, out, extra in (("ckpt", work, []), ("model", tmp_path / "eval", ["--model", str(prior)])):
        assert tool.main(["--work", str(out), "--evaluate", "--eval-samples", "1", "--threads", "1", *extra]) in (0, None)
        result = json.loads((out / "eval" / "step-0000002-scale7.5.json").read_text())
        grid = np.asarray(Image.open(out / "eval" / "step-0000002-scale7.5.png"), dtype=np.float64)
        scored[name] = (result, grid)
    (a, grid_a), (b, grid_b) = scored["ckpt"], scored["model"]
    assert a["step"] == b["step"] == 2 and a["samples_per_prompt"] == b["samples_per_prompt"] == 1
    assert grid_a.shape == grid_b.shape and grid_a.shape[1] == 12 * grid_a.shape[0]  # one sample of each of 12 prompts
    # Same weights, noise and shapes; safetensors round-trips fp32 exactly, so only uint8 rounding of
    # equal floats could differ: allow one grey level.
    assert np.abs(grid_a - grid_b).max() <= 1
    assert set(a["per_prompt"]) == set(b["per_prompt"]) and len(a["per_prompt"]) == 12
    with pytest.raises(SystemExit, match="--model"):
        tool.main(["--work", str(tmp_path / "x"), "--evaluate", "--model", str(tmp_path)])


def test_toy_prior_attn_levels_place_cross_attention_from_the_lowest_resolution() -> None:
    import pytest

    tool = _load_tool("train_toy_prior")
    one = tool.unet_config([32, 64, 64], 32, 64)
    assert one["down_block_types"] == ("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D")
    assert one["up_block_types"] == ("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D")  # up blocks mirror the down blocks
    two = tool.unet_config([32, 64, 64], 32, 64, attn_levels=2)
    assert two["down_block_types"] == ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D")
    assert two["up_block_types"] == ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D")
    for bad in (0, 4):
        with pytest.raises(SystemExit, match="--attn-levels"):
            tool.unet_config([32, 64, 64], 32, 64, attn_levels=bad)
    assert "addition_embed_type" not in one


def test_toy_prior_text_time_conditions_every_block_on_the_caption() -> None:
    """--text-time: the pooled caption joins the timestep embedding (DeepFloyd IF's "text"
    addition embedding); the UNet still takes only encoder_hidden_states, as the guidance calls it."""
    import torch
    from diffusers import UNet2DConditionModel

    tool = _load_tool("train_toy_prior")
    cfg = tool.unet_config([16, 32], 16, 32, text_time=True)
    assert cfg["addition_embed_type"] == "text" and 32 % cfg["addition_embed_type_num_heads"] == 0
    x, t = torch.randn(1, 3, 16, 16), torch.tensor([500])
    a, b = torch.randn(1, 4, 32), torch.randn(1, 4, 32)

    def caption_effect_without_cross_attention(text_time: bool) -> float:
        torch.manual_seed(0)
        unet = UNet2DConditionModel(**tool.unet_config([16, 32], 16, 32, text_time=text_time)).eval()
        for block in list(unet.down_blocks) + list(unet.up_blocks) + [unet.mid_block]:
            for attn in getattr(block, "attentions", None) or []:
                attn.forward = lambda h, *args, **kw: (h,)  # the blocks call it with return_dict=False
        with torch.no_grad():
            return float((unet(x, t, encoder_hidden_states=a).sample - unet(x, t, encoder_hidden_states=b).sample).abs().max())

    assert caption_effect_without_cross_attention(False) == 0.0  # control: every cross-attention path is cut
    # Without any cross-attention the caption still changes the output: through the time embedding.
    assert caption_effect_without_cross_attention(True) > 1e-4


def test_bench_views_view_directions(tiny_pixel_dir: Path, tmp_path: Path, capsys) -> None:  # noqa: ANN001
    """--view-directions on a tiny random pixel prior: every timestep is measured, a random text
    encoder makes each suffix change ε, and the reported shares are consistent with the cosines."""
    import json
    import math

    tool = _load_tool("bench_views")
    out = tmp_path / "vd"
    assert tool.main(["--model", str(tiny_pixel_dir), "--view-directions", "--families", "bird,cat", "--colours", "red", "--out", str(out)]) == 0
    result = json.loads((out / "view_directions.json").read_text())
    assert list(result["table"]) == ["300", "600", "900"]
    for row in result["table"].values():
        for v in ("front", "side", "back"):
            assert 0 < row[f"suffix_{v}"] < math.inf
        c, perp = row["cos_front_back"], row["perp_share_back"]
        assert -1 <= c <= 1 and 0 <= perp <= 1
        # sqrt(1 - c^2) is concave: the mean of the shares is at most the share of the mean cosine
        assert perp <= math.sqrt(1 - c * c) + 1e-9
    assert "| 600 |" in capsys.readouterr().out


def test_probe_sds2d_start_pictures() -> None:
    """The probe's start pictures: 'face-off' changes only the front parts, to the body colour;
    'disc' is white outside a body-coloured disc; 'gt' is the render itself."""
    import torch

    from research.toy import world

    probe = _load_tool("probe_sds2d")
    family, colour = world.FAMILIES.index("bird"), world.COLOUR_NAMES.index("red")
    gt, face_off = probe.start_images(family, colour, 32, "face-off")
    assert gt.shape == face_off.shape == (1, 3, 32, 32)
    changed = (face_off - gt).abs().amax(1)[0] > 1e-6  # [32, 32]
    assert 30 < int(changed.sum()) < 300  # the mask, eyes and beak: a good part of the front view, not all of it
    body = torch.tensor(world.COLOURS["red"]) * 0.9
    fully = (face_off[0].permute(1, 2, 0) - body).abs().amax(-1) < 1e-5
    assert fully.sum() > 20  # pixels wholly inside the front parts are the body colour
    cyan = torch.tensor(world._CYAN)
    lit = gt[0].permute(1, 2, 0) / cyan  # a lit cyan pixel is a positive multiple of cyan
    mask = (lit.amax(-1) - lit.amin(-1) < 0.05) & (lit.amin(-1) > 0.3)
    assert int((mask & changed).sum()) > 20  # the bird's cyan mask is painted over
    _, disc = probe.start_images(family, colour, 32, "disc")
    assert torch.equal(disc[0, :, 0, 0], torch.ones(3)) and torch.allclose(disc[0, :, 16, 16], 0.8 * torch.tensor(world.COLOURS["red"]))
    gt2, same = probe.start_images(family, colour, 32, "gt")
    assert torch.equal(gt2, same) and torch.allclose(gt2, gt)


def test_probe_sds2d_runs_and_writes_its_strip(tiny_pixel_dir: Path, tmp_path: Path) -> None:
    from PIL import Image

    out = tmp_path / "probe.png"
    result = subprocess.run(
        [sys.executable, "tools/probe_sds2d.py", "--model", str(tiny_pixel_dir), "--prompt", "a blue cat", "--start", "disc",
         "--scales", "3,7.5", "--steps", "2", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [line for line in result.stdout.splitlines() if line.startswith("| 3 |") or line.startswith("| 7.5 |")]
    assert len(rows) == 2
    for line in rows:
        probs = [float(v) for v in line.strip("|").split("|")[1:]]
        assert all(0.0 <= p <= 1.0 for p in probs)
    tile = 3 * 16  # the tiny pixel model's 16x16, upscaled 3x
    with Image.open(out) as img:
        assert img.size == (50 + 4 * tile + 3 * 2, 14 + tile)
    bad = subprocess.run([sys.executable, "tools/probe_sds2d.py", "--prompt", "a purple horse", "--model", str(tiny_pixel_dir)],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and bad.stderr.count("\n") == 1, bad.stderr


def test_bench_reconstruct_surface_accuracy_of_the_plinth(tmp_path: Path) -> None:
    """The benchmark object's red plinth alone, written as a y-up GLB: all of it lies on the true
    surface; cameras 30° above the horizon see its top and sides, never its underside."""
    import math

    import numpy as np
    import trimesh

    bench = _load_tool("bench_reconstruct")
    lo, hi = np.asarray(bench.BOXES[1][0]), np.asarray(bench.BOXES[1][1])
    box = trimesh.creation.box(extents=hi - lo)
    box.apply_translation((lo + hi) / 2)
    box.vertices = np.stack([box.vertices[:, 0], box.vertices[:, 2], -box.vertices[:, 1]], -1)  # z-up → glTF y-up
    path = tmp_path / "plinth.glb"
    path.write_bytes(trimesh.Scene(box).export(file_type="glb"))
    az = np.radians(np.arange(0, 360, 30))
    cams = 2.5 * np.stack([np.cos(az) * math.cos(math.pi / 6), np.sin(az) * math.cos(math.pi / 6), np.full(len(az), math.sin(math.pi / 6))], -1)
    acc = bench.surface_accuracy(path, count=20_000, cameras=cams)
    assert acc["accuracy"] > 0.999 and acc["median_distance"] < 0.006  # the true surface is sampled ~0.008 apart
    assert acc["accuracy_seen"] > 0.999
    e = hi - lo
    area_bottom, area_all = e[0] * e[1], 2 * (e[0] * e[1] + e[1] * e[2] + e[0] * e[2])
    assert abs(acc["seen_share"] - (1 - area_bottom / area_all)) < 0.01
    # Completeness: the plinth is only part of the object.
    assert acc["completeness"] < 0.7


def test_bench_viewer_prints_its_table(tiny_model_dir: Path, tmp_path: Path) -> None:
    """tools/bench_viewer.py end to end on the tiny model with a real headless browser: every case
    trains and the table has a row per case with a step time."""
    import os
    import re
    import shutil

    import pytest

    if shutil.which("chromium") is None and shutil.which("chromium-browser") is None:
        pytest.skip("needs Debian's chromium (the CI installs it)")
    pytest.importorskip("viser")
    bench = _load_tool("bench_viewer")
    result = subprocess.run(
        [sys.executable, "tools/bench_viewer.py", "configs/tiny.yaml", f"guidance.model={tiny_model_dir}",
         "--steps", "3", "--warmup", "1", "--repeats", "1", "--out", str(tmp_path / "bench")],
        cwd=ROOT, capture_output=True, text=True, timeout=600, env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for case in bench.CASES:
        row = re.search(rf"^\| {case} \| ([0-9.]+) \| ([0-9.]+) \| ([0-9.]+) \| [0-9.]+% \| (\d+) \|$", result.stdout, re.M)
        assert row, (case, result.stdout)
        assert float(row.group(1)) > 0 and float(row.group(2)) > 0
