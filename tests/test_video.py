"""Turntable video: exact frame count and size read back from the file, evenly spaced azimuths
without a repeated 0°/360° frame, panels, and argument errors."""

from __future__ import annotations

from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from test_export import analytic_scene, small_config

from dreamperp.cli import main
from dreamperp.errors import UsageError
from dreamperp.export.video import (
    compose_panels,
    parse_modes,
    turntable_cameras,
    write_turntable,
)

# Off-centre, so every frame of the turntable looks different.
OFF_CENTRE = (((0.35, 0.0, 0.0), 0.3),)


def test_turntable_azimuths_even_and_not_repeated() -> None:
    cams = turntable_cameras(small_config(), 8, 15.0, 16)
    az = cams.azimuth_deg.tolist()
    assert az == pytest.approx([0, 45, 90, 135, 180, -135, -90, -45])
    assert az[0] != pytest.approx(az[-1])  # first and last frames differ
    steps = np.diff(np.unwrap(np.radians(az)))
    np.testing.assert_allclose(np.degrees(steps), 45.0, atol=1e-4)
    assert cams.elevation_deg.tolist() == pytest.approx([15.0] * 8)
    np.testing.assert_allclose(cams.position.norm(dim=-1), small_config().data.eval_radius, rtol=1e-5)


@pytest.mark.parametrize("fmt", ["mp4", "gif"])
def test_video_has_exact_frames_and_size(tmp_path: Path, fmt: str) -> None:
    out = tmp_path / "export" / f"turntable.{fmt}"
    path = write_turntable(analytic_scene(OFF_CENTRE), small_config(), out, frames=6, fps=10, size=24, modes="rgb,depth", progress=False)
    assert path == out and out.is_file()
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # no temporary file left behind
    frames = iio.imread(out, index=None)
    assert frames.shape == (6, 24, 48, 3)
    first, middle = frames[0].astype(int), frames[3].astype(int)
    assert np.abs(first - middle).mean() > 5  # the object moves around the turntable


def test_identical_frames_are_all_kept_in_gif(tmp_path: Path) -> None:
    # A centred sphere on a solid background looks the same from every azimuth; still 5 frames.
    out = write_turntable(analytic_scene(), small_config(), tmp_path / "t.gif", frames=5, size=16, progress=False)
    assert iio.imread(out, index=None).shape == (5, 16, 16, 3)


def test_compose_panels_mapping() -> None:
    h = w = 2
    out = {
        "rgb": torch.full((h, w, 3), 0.25),
        "normal": torch.tensor([0.0, 0.0, 1.0]).expand(h, w, 3),
        "depth": torch.full((h, w, 1), 1.0),
        "opacity": torch.ones(h, w, 1),
    }
    img = compose_panels(out, ["rgb", "normal", "depth", "opacity"], near=1.0, far=3.0)
    assert img.shape == (2, 8, 3) and img.dtype == np.uint8
    assert img[0, 0].tolist() == [64, 64, 64]
    assert img[0, 2].tolist() == [128, 128, 255]  # (n + 1) / 2
    assert img[0, 4].tolist() == [255, 255, 255]  # nearest depth is white
    assert img[0, 6].tolist() == [255, 255, 255]
    out["opacity"] = torch.zeros(h, w, 1)
    empty = compose_panels(out, ["normal", "depth"], near=1.0, far=3.0)
    assert empty[0, 0].tolist() == [255, 255, 255] and empty[0, 2].tolist() == [0, 0, 0]


def test_bad_arguments(tmp_path: Path) -> None:
    scene, cfg = analytic_scene(), small_config()
    with pytest.raises(UsageError, match="even"):
        write_turntable(scene, cfg, tmp_path / "a.mp4", frames=2, size=15, progress=False)
    with pytest.raises(UsageError, match="--modes"):
        parse_modes("rgb,colour")
    with pytest.raises(UsageError, match="--frames"):
        write_turntable(scene, cfg, tmp_path / "a.mp4", frames=0, size=16, progress=False)
    assert not list(tmp_path.iterdir())


def test_cli_bad_flags_exit_code_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["video", str(tmp_path), "--frames", "0"]) == 2
    assert "--frames" in capsys.readouterr().err
    assert main(["video", str(tmp_path), "--modes", "rgb,xray"]) == 2
    assert "xray" in capsys.readouterr().err


def test_cli_video_from_run_folder(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from test_export import make_run

    run_dir = make_run(tmp_path)
    args = ["video", str(run_dir), "--frames", "5", "--size", "16", "--fps", "5", "--modes", "rgb,normal,opacity"]
    assert main(args) == 0
    out = run_dir / "export" / "turntable.mp4"
    assert capsys.readouterr().out.strip() == str(out)
    assert iio.imread(out, index=None).shape == (5, 16, 48, 3)
    assert main(["video", str(run_dir), "--frames", "3", "--size", "16", "--format", "gif"]) == 0
    assert iio.imread(run_dir / "export" / "turntable.gif", index=None).shape == (3, 16, 16, 3)
    assert main(["video", str(run_dir), "--size", "17", "--frames", "2"]) == 2
    assert "even" in capsys.readouterr().err
