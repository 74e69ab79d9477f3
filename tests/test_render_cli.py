"""`dreamperp render`: camera files, image sizes, output names, conventions checked against the
independent numpy ray tracer of tools/make_synthetic_dataset.py, and one-line errors (exit code 2)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_export import analytic_scene, small_config

from dreamperp.cli import main
from dreamperp.errors import UsageError
from dreamperp.export.render import (
    output_name,
    output_size,
    read_camera_file,
    render_to_pngs,
)

ROOT = Path(__file__).resolve().parents[1]


def _dataset_module():
    spec = importlib.util.spec_from_file_location("make_synthetic_dataset", ROOT / "tools" / "make_synthetic_dataset.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _write_transforms(folder: Path, n: int = 3, size: int | None = 20, **extra) -> Path:
    ds = _dataset_module()
    folder.mkdir(parents=True, exist_ok=True)
    frames = []
    for k in range(n):
        c2w = ds.look_at_c2w(20.0, 120.0 * k)
        frames.append({"file_path": f"./images/v{k}", "transform_matrix": c2w.tolist()})
        if size:
            (folder / "images").mkdir(exist_ok=True)
            Image.new("RGBA", (size, size)).save(folder / "images" / f"v{k}.png")
    path = folder / "transforms.json"
    path.write_text(json.dumps({"camera_angle_x": ds.FOVX, "frames": frames, **extra}))
    return path


def test_output_names() -> None:
    assert output_name("./test/r_0") == "r_0.png"
    assert output_name("images/0001.jpg") == "0001.png"
    assert output_name("a/frame.v2") == "frame.v2.png"


def test_read_camera_file_sizes(tmp_path: Path) -> None:
    cams = read_camera_file(_write_transforms(tmp_path / "a", size=20))
    assert cams.names == ["v0.png", "v1.png", "v2.png"] and cams.c2w.shape == (3, 4, 4)
    assert output_size(cams, None) == (20, 20)
    assert output_size(cams, 32) == (32, 32)
    no_images = read_camera_file(_write_transforms(tmp_path / "b", size=None))  # folder form below
    assert output_size(no_images, 16) == (16, 16)
    with pytest.raises(UsageError, match=r"transforms.json.*--size"):
        output_size(no_images, None)
    wh = read_camera_file(_write_transforms(tmp_path / "c", size=None, w=40, h=30).parent)
    assert output_size(wh, None) == (30, 40) and output_size(wh, 20) == (15, 20)


def _bad_files(tmp_path: Path) -> dict[str, Path]:
    good = json.loads(_write_transforms(tmp_path / "good", size=None).read_text())
    cases = {
        "not valid JSON": "{frames: ",
        "camera_angle_x": {"frames": good["frames"]},
        "no 'frames'": {"camera_angle_x": 0.7, "frames": []},
        "not invertible": {**good, "frames": [{"file_path": "x", "transform_matrix": np.zeros((4, 4)).tolist()}]},
        "4x4": {**good, "frames": [{"file_path": "x", "transform_matrix": [[1, 0], [0, 1]]}]},
    }
    paths = {}
    for i, (msg, content) in enumerate(cases.items()):
        p = tmp_path / f"bad{i}.json"
        p.write_text(content if isinstance(content, str) else json.dumps(content))
        paths[msg] = p
    return paths


def test_bad_camera_files_exit_code_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run_dir = tmp_path / "run"  # never reached: the camera file is checked first
    for msg, path in _bad_files(tmp_path).items():
        assert main(["render", str(run_dir), "--cameras", str(path), "--out", str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err
        assert msg in err and str(path) in err and err.count("\n") == 1, err
    missing = tmp_path / "nope.json"
    assert main(["render", str(run_dir), "--cameras", str(missing), "--out", str(tmp_path / "o")]) == 2
    assert str(missing) in capsys.readouterr().err
    no_size = _write_transforms(tmp_path / "nosize", size=None)
    assert main(["render", str(run_dir), "--cameras", str(no_size), "--out", str(tmp_path / "o")]) == 2
    assert "--size" in capsys.readouterr().err
    assert main(["render", str(run_dir), "--out", str(tmp_path / "o")]) == 2
    assert main(["render", str(run_dir), "--turntable", "0", "--out", str(tmp_path / "o")]) == 2
    assert not (tmp_path / "o").exists()


def test_render_matches_independent_ray_tracer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Poses from the dataset tool's own look-at, rendered by dreamperp, match its numpy tracer:
    checks the OpenGL camera, camera_angle_x → fovy, pixel centres and the image row order."""
    ds = _dataset_module()
    center, radius, color = (0.3, -0.2, 0.25), 0.3, (0.9, 0.3, 0.1)
    monkeypatch.setattr(ds, "SPHERES", [(center, radius, color)])
    monkeypatch.setattr(ds, "BOXES", [])
    size = 24
    poses = [(10.0, 30.0), (60.0, -100.0), (-15.0, 170.0)]
    frames = [{"file_path": f"p{k}", "transform_matrix": ds.look_at_c2w(e, a).tolist()} for k, (e, a) in enumerate(poses)]
    cams_json = {"camera_angle_x": ds.FOVX, "frames": frames}
    (tmp_path / "transforms.json").write_text(json.dumps(cams_json))
    cam_file = read_camera_file(tmp_path)

    from dreamperp.cameras import cameras_from_c2w

    cams = cameras_from_c2w(cam_file.c2w, size, size, fovx_deg=cam_file.fovx_deg)
    cfg = small_config()
    scene = analytic_scene(((center, radius),), sigma=400.0, width=0.001)  # a sharp surface
    paths = render_to_pngs(scene, cfg, cams, [tmp_path / "out" / n for n in cam_file.names], progress=False)
    for (e, a), path in zip(poses, paths):
        ours = np.asarray(Image.open(path).convert("RGB"), dtype=np.float64) / 255
        o, d = ds.rays(ds.look_at_c2w(e, a), size, ss=1)
        hit, _ = ds.trace(o, d)
        ours_mask = np.abs(ours - 1).sum(-1) > 0.3
        assert hit[:, :, 0].sum() > 20
        assert (ours_mask != hit[:, :, 0]).mean() < 0.03  # at most a few edge pixels
        assert (ours[~ours_mask] > 0.99).all()  # the rest is the run's white background


def test_cli_render_cameras_and_turntable(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from test_export import make_run

    # A multiview run composites on data.background: black here, so empty pixels are black.
    run_dir = make_run(tmp_path / "runs", "data.type=multiview", "data.path=unused", "data.background=black")
    cams = _write_transforms(tmp_path / "cams", n=3, size=20)
    out = tmp_path / "out"
    assert main(["render", str(run_dir), "--cameras", str(cams), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["v0.png", "v1.png", "v2.png"]
    img = np.asarray(Image.open(out / "v0.png"))
    assert img.shape == (20, 20, 3)
    assert img[0, 0].tolist() == [0, 0, 0] and img[10, 10].sum() > 0  # background corner, blob centre
    assert main(["render", str(run_dir), "--cameras", str(cams), "--out", str(out), "--size", "12"]) == 0
    assert Image.open(out / "v2.png").size == (12, 12)
    assert main(["render", str(run_dir), "--turntable", "3", "--size", "8", "--out", str(tmp_path / "tt")]) == 0
    names = sorted(p.name for p in (tmp_path / "tt").iterdir())
    assert names == ["0000.png", "0001.png", "0002.png"] and Image.open(tmp_path / "tt" / "0001.png").size == (8, 8)
    capsys.readouterr()
    assert main(["render", str(tmp_path / "nothing"), "--turntable", "2", "--out", str(tmp_path / "x")]) == 2
    assert "nothing" in capsys.readouterr().err
