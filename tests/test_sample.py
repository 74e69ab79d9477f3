"""`dreamperp sample`: PNGs written and read back, views, schedulers, shorthands, bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dreamperp.cli import main
from dreamperp.config import load_config
from dreamperp.images import make_grid, to_uint8
from dreamperp.sample import rewrite_shorthand

CONFIGS = Path(__file__).resolve().parent.parent / "dreamperp" / "configs"
SAMPLE = str(CONFIGS / "sample.yaml")


def small(model: Path) -> list[str]:
    return [f"guidance.model={model}", "sample.height=64", "sample.width=64", "sample.steps=2", "device=cpu"]


def read(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        assert im.mode == "RGB"
        return np.asarray(im)


def test_shipped_configs_load() -> None:
    cfg = load_config(SAMPLE)
    assert cfg.guidance.scale == 7.5 and cfg.sample.steps == 50 and (cfg.sample.height, cfg.sample.width) == (512, 512)
    cfg = load_config(str(CONFIGS / "sega-sample.yaml"))
    assert len(cfg.guidance.sega.concepts) >= 2 and cfg.guidance.sega.momentum_scale > 0


def test_shorthand_overrides() -> None:
    assert rewrite_shorthand(["view=back", "azimuth=150", "steps=3", "num_images=2", "elevation=10", "seed=1", "sample.eta=0.5"]) == [
        "sample.view=back", "sample.azimuth=150", "sample.steps=3", "sample.num_images=2", "sample.elevation=10", "seed=1", "sample.eta=0.5",
    ]


def test_to_uint8_matches_diffusers() -> None:
    from diffusers.image_processor import VaeImageProcessor

    x = np.random.default_rng(0).random((2, 4, 4, 3)).astype(np.float32)
    x[0, 0, 0] = [0.5 / 255, 1.5 / 255, 1.0]
    ref = np.stack([np.asarray(im) for im in VaeImageProcessor.numpy_to_pil(x)])
    assert np.array_equal(to_uint8(x), ref)
    grid = make_grid(np.ones((3, 2, 2, 3), np.uint8))
    assert grid.shape == (4, 4, 3) and grid[2:, 2:].sum() == 0


def test_sample_writes_images_and_grid(tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "back"
    args = ["sample", SAMPLE, *small(tiny_model_dir), "prompt=a peacock", "view=back", "num_images=3"]
    assert main([*args, "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["0000.png", "0001.png", "0002.png", "grid.png"]
    imgs = [read(out / f"{k:04d}.png") for k in range(3)]
    assert all(im.shape == (64, 64, 3) for im in imgs)
    assert not np.array_equal(imgs[0], imgs[1])  # different noise per image
    grid = read(out / "grid.png")
    assert grid.shape == (128, 128, 3) and np.array_equal(grid[:64, 64:], imgs[1])
    # same seed → same images; the view changes them
    again = tmp_path / "again"
    assert main([*args, "--out", str(again)]) == 0
    assert np.array_equal(read(again / "0002.png"), imgs[2])
    front = tmp_path / "front"
    assert main(["sample", SAMPLE, *small(tiny_model_dir), "prompt=a peacock", "azimuth=0", "--out", str(front)]) == 0
    assert sorted(p.name for p in front.iterdir()) == ["0000.png"]
    assert not np.array_equal(read(front / "0000.png"), imgs[0])
    assert "wrote" in capsys.readouterr().out


def test_sample_scheduler_choice(tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    base = ["sample", SAMPLE, *small(tiny_model_dir), "prompt=a peacock", "steps=2"]
    assert main([*base, "sample.scheduler=EulerDiscreteScheduler", "--out", str(tmp_path / "euler")]) == 0
    assert main([*base, "--out", str(tmp_path / "own")]) == 0
    assert not np.array_equal(read(tmp_path / "euler" / "0000.png"), read(tmp_path / "own" / "0000.png"))
    capsys.readouterr()
    assert main([*base, "sample.scheduler=NoSuchScheduler", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "sample.scheduler" in err and "NoSuchScheduler" in err


@pytest.mark.parametrize(
    "override,needle",
    [
        ('prompt=""', "prompt"),
        ("guidance.sega.concepts=[{scale: 5.0}]", "guidance.sega.concepts.0.prompt"),
        ("guidance.sega.concepts=[{prompt: hat, threshold: 1.0}]", "guidance.sega.concepts.0.threshold"),
        ("guidance.sega.concepts=[{prompt: hat, threshold: -0.1}]", "guidance.sega.concepts.0.threshold"),
        ("guidance.perp_neg.schedule=magic", "guidance.perp_neg.schedule"),
        ("view=upside", "sample.view"),
    ],
)
def test_bad_input_is_one_line_exit_2(override: str, needle: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code = main(["sample", SAMPLE, "guidance.model=tiny", override, "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and needle in err, err
    assert not (tmp_path / "o").exists()
