"""The browser viewer (dreamperp.viewer): camera conversions, the render budget and the guidance table
by hand; then the real thing: `dreamperp train --viewer` in its own process, a headless chromium on
its page (the scene in the screenshot, pause/resume through the page's buttons, save/export now),
bit-identical checkpoints against the same run without the viewer, SIGTERM, and `dreamperp view`."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest
import torch
from browser import Browser, need_browser

from dreamperp.cameras import make_cameras
from dreamperp.cli import main
from dreamperp.config import load_config
from dreamperp.runs.checkpoint import load_checkpoint
from dreamperp.viewer.render import (
    VIEW_COLOURS,
    RenderBudget,
    camera_from_viser,
    guidance_table,
    image_size,
    view_colours,
    viser_pose,
)

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "dreamperp" / "configs" / "tiny.yaml")


# ------------------------------------------------------------------------------------ by hand
def test_identity_viser_camera_is_the_opengl_flip() -> None:
    """viser's identity orientation looks down +z with y down (OpenCV); as an OpenGL camera that is
    x right, y flipped, z flipped."""
    cam = camera_from_viser((1.0, 0.0, 0.0, 0.0), (0.0, 0.0, 2.0), math.radians(60.0), 1.5)
    assert np.allclose(cam.c2w[:3, :3], np.diag([1.0, -1.0, -1.0]))
    assert np.allclose(cam.c2w[:3, 3], [0.0, 0.0, 2.0]) and cam.fovy_deg == pytest.approx(60.0) and cam.aspect == 1.5
    wxyz, position = viser_pose(cam.c2w)
    assert np.allclose(wxyz, [1.0, 0.0, 0.0, 0.0]) and np.allclose(position, [0.0, 0.0, 2.0])


@pytest.mark.parametrize("azimuth,elevation", [(0.0, 15.0), (90.0, 0.0), (180.0, 30.0), (-135.0, 75.0)])
def test_scene_cameras_round_trip_through_viser(azimuth: float, elevation: float) -> None:
    """A scene camera sent to viser and read back is the same camera, at the same azimuth/elevation."""
    cams = make_cameras(torch.tensor([elevation]), torch.tensor([azimuth]), torch.tensor([2.0]), torch.tensor([40.0]), 8, 8)
    c2w = cams.c2w[0].double().numpy()
    wxyz, position = viser_pose(c2w)
    back = camera_from_viser(wxyz, position, math.radians(40.0), 1.0)
    assert np.allclose(back.c2w, c2w, atol=1e-6)
    az, el = back.azimuth_elevation
    assert (az - azimuth + 180.0) % 360.0 - 180.0 == pytest.approx(0.0, abs=1e-4)  # -179.99999 is 180 (fp32 poses)
    assert el == pytest.approx(elevation, abs=1e-4)


def test_image_size_keeps_the_longer_side() -> None:
    assert image_size(256, 2.0) == (128, 256)
    assert image_size(256, 0.5) == (256, 128)
    assert image_size(100, 1.0) == (100, 100)


def test_render_budget_arithmetic() -> None:
    """share 0.2: 1 s of training buys 0.2 s of rendering; renders are charged what they took."""
    b = RenderBudget(share=0.2, cap_s=1.0)
    assert not b.allows(1000)  # nothing earned yet
    b.earn(1.0)
    assert b.credit_s == pytest.approx(0.2) and b.allows(1000)  # no estimate yet: the first render goes
    b.charge(0.5, 1000)
    assert b.credit_s == pytest.approx(-0.3) and b.s_per_pixel == pytest.approx(5e-4)
    b.earn(1.0)
    assert b.credit_s == pytest.approx(-0.1) and not b.allows(1000)
    b.earn(2.0)
    assert b.credit_s == pytest.approx(0.3) and not b.allows(1000) and b.allows(600)  # 0.5 s > 0.3 s >= 0.3 s
    b.earn(100.0)
    assert b.credit_s == pytest.approx(1.0)  # capped
    b.charge(0.1, 1000)  # 1e-4 s/px: estimate 0.7·5e-4 + 0.3·1e-4 = 3.8e-4
    assert b.s_per_pixel == pytest.approx(3.8e-4)
    assert RenderBudget(share=0.2, cap_s=1.0).allows(1) is False


def test_guidance_table_at_the_front() -> None:
    """threestudio Perp-Neg at azimuth 0: positive = front; negative side = 4·e^0 − 2.426 = 1.574."""
    cfg = load_config(TINY).guidance
    table = guidance_table(cfg, 0.0, 15.0)
    assert "| front | 1.00 | 0.00 |" in table and "| side | 0.00 | 1.57 |" in table
    assert "| overhead | 1.00 | 0.00 |" in guidance_table(cfg, 0.0, 80.0)  # above the 60° threshold


def test_view_colours_blend_the_mix() -> None:
    mix = torch.tensor([[0.5, 0.5, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
    colours = view_colours(mix, 2)
    assert np.array_equal(colours[0], np.rint((VIEW_COLOURS[0] + VIEW_COLOURS[1]) / 2).astype(np.uint8))
    assert np.array_equal(colours[1], VIEW_COLOURS[3].astype(np.uint8))
    assert view_colours(None, 3).shape == (3, 3)


# ------------------------------------------------------------------------------------ errors
def test_viewer_without_the_extra_names_the_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setitem(sys.modules, "viser", None)  # import viser → ImportError, as without the extra
    assert main(["train", TINY, f"output_dir={tmp_path / 'out'}", "--viewer"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and 'pip install "dreamperp[viewer]"' in err
    assert not (tmp_path / "out").exists()  # checked before anything is built


def test_view_of_a_folder_that_is_not_a_run(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["view", str(tmp_path)]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_viewer_host_that_cannot_be_listened_on(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    need_viser()
    out = tmp_path / "out"
    assert main(["train", TINY, f"output_dir={out}", "--viewer", "--viewer-host", "203.0.113.7"]) == 2  # TEST-NET-3: not ours
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--viewer-host '203.0.113.7'" in err and not out.exists()
    assert main(["train", TINY, f"output_dir={out}", "--viewer", "--viewer-port", "70000"]) == 2
    assert "--viewer-port must be within 0..65535" in capsys.readouterr().err and not out.exists()


def test_viewer_flags_need_viewer(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["train", TINY, f"output_dir={tmp_path / 'out'}", "--viewer-port", "7100"]) == 2
    assert "--viewer" in capsys.readouterr().err and not (tmp_path / "out").exists()


def need_viser() -> None:
    """Skip without the viewer extra, unless CI (DREAMPERP_CI=1) where it must be installed."""
    if not os.environ.get("DREAMPERP_CI"):
        pytest.importorskip("viser")


def test_port_in_use_moves_to_the_next_free_port() -> None:
    need_viser()
    from dreamperp.viewer.server import start_server, stop_server

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        lines: List[str] = []
        server, url = start_server("127.0.0.1", port, lines.append)
        try:
            actual = server.get_port()
            assert actual != port and url == f"http://127.0.0.1:{actual}"
            assert lines == [f"viewer: port {port} is in use; the viewer is on the next free port, {url}"]
        finally:
            stop_server(server)


# ------------------------------------------------------------------------------ in a browser
def small(model_dir: Path, out: Path, **extra: object) -> List[str]:
    values: Dict[str, object] = {
        "guidance.model": str(model_dir), "output_dir": str(out), "data.width": 16, "data.height": 16, "render.num_samples": 16,
        "scene.levels": 4, "scene.log2_table_size": 12, "scene.max_resolution": 64, "scene.background": "solid",
        "trainer.val_size": 16, "trainer.log_every": 1, "trainer.progress": "false", "trainer.val_every": 10,
        "trainer.checkpoint_every": 10, "trainer.keep_checkpoints": 1000, "export.resolution": 32, "export.video_frames": 4,
        "export.video_size": 32, "export.faces": 300, "export.texture_size": 64,
    }
    values.update({k.replace("__", "."): v for k, v in extra.items()})
    return [f"{k}={v}" for k, v in values.items()]


def _env() -> Dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1")  # both runs round alike


def _start(args: List[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "dreamperp", *args], cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=log.open("w"))


def _wait_for_line(proc: subprocess.Popen, log: Path, pattern: str, timeout: float = 120.0) -> re.Match:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = re.search(pattern, log.read_text())
        if found:
            return found
        if proc.poll() is not None:
            raise AssertionError(f"exited early ({proc.returncode}): {log.read_text()}")
        time.sleep(0.1)
    proc.kill()
    raise AssertionError(f"no line matching {pattern!r}: {log.read_text()}")


def _last_step(run: Path) -> int:
    lines = [ln for ln in (run / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    return json.loads(lines[-1])["step"] if lines else 0


def _centre_and_side(shot: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean colour of a box at the centre of the canvas and of one at 12% of the width (background)."""
    h, w = shot.shape[:2]
    cy, cx = h // 2, w // 2
    centre = shot[cy - 10 : cy + 10, cx - 10 : cx + 10].reshape(-1, 3).mean(0)
    side = shot[cy - 10 : cy + 10, int(0.12 * w) - 10 : int(0.12 * w) + 10].reshape(-1, 3).mean(0)
    return centre, side


def _wait_for_file(path: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.is_file():
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.05)


def _has_object(shot: np.ndarray) -> bool:
    centre, side = _centre_and_side(shot)
    return bool(side.min() > 235 and np.abs(centre - side).max() > 30)


def _wait_for_object(browser: Browser, timeout: float = 30.0) -> np.ndarray:
    """Screenshots until one shows something at the centre on a white background (or the last one)."""
    deadline = time.monotonic() + timeout
    while True:
        shot = browser.screenshot()
        if _has_object(shot) or time.monotonic() > deadline:
            return shot
        time.sleep(0.2)


@pytest.fixture(scope="module")
def watched_run(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Dict[str, object]:
    """`train --viewer` with a browser on it: garbage on the socket, a screenshot, pause/resume,
    save/export now, the browser closed while training, then SIGTERM. Records what it saw."""
    need_viser()
    need_browser()
    tmp = tmp_path_factory.mktemp("viewer")
    log = tmp / "train.log"
    proc = _start(["train", TINY, *small(tiny_model_dir, tmp / "on", trainer__max_steps=5000), "--viewer", "--viewer-port", "0"], log)
    seen: Dict[str, object] = {}
    try:
        url = _wait_for_line(proc, log, r"viewer at (http://\S+)").group(1)
        run = Path(_wait_for_line(proc, log, r"run folder (\S+)").group(1))
        seen["run"], seen["url"] = run, url
        # A client that sends garbage and hangs up must not disturb anything.
        import viser
        from websockets.exceptions import ConnectionClosed
        from websockets.sync.client import connect

        try:
            with connect(url.replace("http://", "ws://"), subprotocols=[f"viser-v{viser.__version__}"], open_timeout=10) as ws:
                ws.send(b"\x00\xffnot msgpack at all" * 50)
                ws.send("{\"type\": \"nonsense\"}")
        except ConnectionClosed:  # the server may hang up on it: fine, as long as training goes on
            pass
        with Browser() as browser:
            browser.goto(url)
            assert browser.wait_for("document.body.innerText.includes('Pause')"), "the page did not load its controls"
            assert browser.click_button("Pause")  # early: the run without the viewer has fewer steps to go
            assert browser.wait_for("document.body.innerText.includes('paused')")
            browser.click_checkbox("Show cameras")  # frusta off: the screenshot shows the render alone
            seen["shot"] = _wait_for_object(browser)  # renders go on while paused
            a = _last_step(run)
            time.sleep(2.0)
            seen["paused_steps"] = (a, _last_step(run))
            assert browser.click_button("Save checkpoint now")
            assert browser.click_button("Export mesh now")
            assert browser.wait_for("document.body.innerText.includes('wrote mesh.glb')", timeout=60)
            seen["saved_while_paused"] = sorted(p.name for p in (run / "ckpts").glob("step-*.pt"))
            assert browser.click_button("Resume")
            resumed_at = _last_step(run)
            target = (resumed_at // 10 + 1) * 10  # a checkpoint written with the client watching, after all the clicks
            _wait_for_file(run / "ckpts" / f"step-{target:06d}.pt")
            seen["resumed_steps"] = (resumed_at, _last_step(run))
            seen["target"] = target
        # The same run without the viewer, to the target step (finished: it exports too), alongside.
        off_log = tmp / "off.log"
        off = _start(["train", TINY, *small(tiny_model_dir, tmp / "off", trainer__max_steps=target)], off_log)
        # The browser is gone; training goes on.
        gone_at = _last_step(run)
        time.sleep(1.0)
        seen["after_close"] = (gone_at, _last_step(run))
        proc.send_signal(signal.SIGTERM)
        seen["code"] = proc.wait(60)
        seen["log"] = log.read_text()
        port = int(url.rsplit(":", 1)[1])
        with socket.socket() as probe:
            seen["port_open_after"] = probe.connect_ex(("127.0.0.1", port)) == 0
        seen["off_code"] = off.wait(240)
        seen["off_run"] = Path(_wait_for_line(off, off_log, r"run folder (\S+)").group(1))
    finally:
        if proc.poll() is None:
            proc.kill()
    return seen


def test_browser_shows_the_scene(watched_run: Dict[str, object]) -> None:
    """The untrained field is a soft ball at the origin on a white background: grey in the middle
    of the screenshot, white beside it."""
    centre, side = _centre_and_side(watched_run["shot"])  # type: ignore[arg-type]
    assert side.min() > 235, f"background should be white, got {side}"
    assert np.abs(centre - side).max() > 30, f"no object at the centre: {centre} vs {side}"


def test_pause_and_resume_from_the_page(watched_run: Dict[str, object]) -> None:
    a, b = watched_run["paused_steps"]  # type: ignore[misc]
    assert a == b, f"steps went on while paused: {a} -> {b}"
    a, b = watched_run["resumed_steps"]  # type: ignore[misc]
    assert b > a, "training did not resume"
    a, b = watched_run["after_close"]  # type: ignore[misc]
    assert b > a, "training stopped when the browser closed"


def test_save_and_export_now(watched_run: Dict[str, object]) -> None:
    run: Path = watched_run["run"]  # type: ignore[assignment]
    paused = watched_run["paused_steps"][1]  # type: ignore[index]
    assert f"step-{paused:06d}.pt" in watched_run["saved_while_paused"]  # type: ignore[operator]
    import trimesh

    mesh = trimesh.load(run / "export" / "mesh.glb", force="mesh")
    assert len(mesh.faces) > 0  # what `dreamperp export` writes: export.formats = [glb]
    assert f"viewer: wrote {run / 'export' / 'mesh.glb'}" in watched_run["log"]  # type: ignore[operator]


def test_sigterm_with_the_viewer(watched_run: Dict[str, object]) -> None:
    assert watched_run["code"] == 143
    assert re.search(r"stopped by SIGTERM at step \d+; saved ", watched_run["log"])  # type: ignore[arg-type]
    assert watched_run["port_open_after"] is False
    assert "Traceback" not in watched_run["log"]  # type: ignore[operator]


def test_viewer_and_client_change_nothing(watched_run: Dict[str, object]) -> None:
    """The checkpoint at the target step is bit-identical to the same run's without the viewer."""
    target: int = watched_run["target"]  # type: ignore[assignment]
    assert watched_run["off_code"] == 0
    on = load_checkpoint(watched_run["run"] / "ckpts" / f"step-{target:06d}.pt")  # type: ignore[operator]
    off = load_checkpoint(watched_run["off_run"] / "ckpts" / f"step-{target:06d}.pt")  # type: ignore[operator]
    assert on["step"] == off["step"] == target
    for key in off["scene"]:
        assert torch.equal(on["scene"][key], off["scene"][key]), key
    for sa, sb in zip(on["optimizer"]["state"].values(), off["optimizer"]["state"].values()):
        for key in sb:
            assert torch.equal(sa[key], sb[key]), key
    assert torch.equal(on["rng"]["torch"], off["rng"]["torch"])
    assert on["rng"]["numpy"] == off["rng"]["numpy"] and on["rng"]["python"] == off["rng"]["python"]
    assert on["trainer"] == off["trainer"]


def test_view_shows_the_exported_mesh(watched_run: Dict[str, object], tmp_path: Path) -> None:
    """`dreamperp view` on the finished run: its scene, the turntable, and the mesh when switched on."""
    run: Path = watched_run["off_run"]  # type: ignore[assignment]
    assert (run / "export" / "mesh.glb").is_file()
    log = tmp_path / "view.log"
    proc = _start(["view", str(run), "--port", "0"], log)
    try:
        url = _wait_for_line(proc, log, r"viewer at (http://\S+)").group(1)
        with Browser() as browser:
            browser.goto(url)
            assert browser.wait_for("document.body.innerText.includes('Show exported mesh')")
            assert browser.wait_for("document.querySelector('video') !== null")  # the turntable
            assert _has_object(_wait_for_object(browser)), "the scene is not shown"
            assert browser.click_checkbox("Show exported mesh")
            time.sleep(1.0)  # the render is taken away at once; the mesh is drawn by the browser
            assert _has_object(_wait_for_object(browser)), "the mesh is not shown"
            text = browser.js("document.body.innerText")
            assert "read-only" in text and "Pause" not in text
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 143
    finally:
        if proc.poll() is None:
            proc.kill()


def test_view_reloads_a_newer_checkpoint(watched_run: Dict[str, object], tmp_path: Path) -> None:
    """A run training in another process: `view` follows its newest checkpoint and metrics.jsonl."""
    from dreamperp.runs.folder import RunDir
    from dreamperp.viewer.page import Page
    from dreamperp.viewer.server import start_server, stop_server
    from dreamperp.viewer.view_command import RunWatcher

    run = RunDir(watched_run["run"])  # type: ignore[arg-type]
    ckpts = sorted(run.ckpt_dir.glob("step-*.pt"))
    newest = ckpts[-1]
    aside = tmp_path / newest.name
    newest.rename(aside)  # as if the newest had not been written yet
    server, _ = start_server("127.0.0.1", 0, lambda _: None)
    try:
        page = Page(server, run.load_config(), run.root, controls=False)
        watcher = RunWatcher(run, page)
        watcher.poll()
        assert watcher.ckpt == ckpts[-2] and watcher.step == int(ckpts[-2].stem.split("-")[1])
        assert page.history["step"][-1] == _last_step(run.root) and "loss_sds" in page.history
        aside.rename(newest)
        watcher.poll()
        assert watcher.ckpt == newest and watcher.step == int(newest.stem.split("-")[1])
    finally:
        stop_server(server)
        if aside.exists():
            aside.rename(newest)


def test_multiview_run_shows_its_training_cameras(tmp_path: Path) -> None:
    """A reconstruction run's page draws one frustum per training image; the server stops with the loop."""
    need_viser()
    import importlib.util

    from dreamperp.runs.folder import RunDir
    from dreamperp.train.loop import TrainLoop
    from dreamperp.train.trainer import Trainer
    from dreamperp.viewer.hook import ViewerHook

    spec = importlib.util.spec_from_file_location("make_synthetic_dataset", ROOT / "tools" / "make_synthetic_dataset.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    train, _ = module.make_dataset(tmp_path / "data", n_train=5, n_test=1, size=16, seed=0)
    cfg = load_config(ROOT / "dreamperp" / "configs" / "reconstruct.yaml", [
        f"data.path={train}", "device=cpu", "trainer.max_steps=3", "trainer.log_every=1", "trainer.progress=false", "trainer.val_size=16",
        "data.rays_per_step=64", "render.num_samples=8", "scene.levels=4", "scene.log2_table_size=12", "scene.max_resolution=64",
    ])
    trainer = Trainer(cfg)
    run = RunDir(tmp_path / "run")
    for sub in (run.ckpt_dir, run.val_dir, run.export_dir):
        sub.mkdir(parents=True)
    lines: List[str] = []
    hook = ViewerHook.start(trainer, run, host="127.0.0.1", port=0, log=lines.append)
    port = hook.server.get_port()
    assert TrainLoop(trainer, run, hooks=[hook], log=lines.append).fit() == 0
    (c2w, fovy, colours), = hook.page.camera_batches
    assert c2w.shape == (5, 4, 4) and np.allclose(c2w, trainer.dataset.c2w.double().numpy(), atol=1e-6)
    assert len(hook.page.history["step"]) == 3 and "psnr" in hook.page.history
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0  # the server went down with the loop


def test_render_view_modes_leave_the_scene_and_rng_alone() -> None:
    """Each mode renders [H, W, 3] uint8 at the asked size; the untrained soft ball is opaque in the
    middle and empty at the corner; torch's RNG and the scene's train mode are as before."""
    from dreamperp.scene import Scene
    from dreamperp.viewer.render import RENDER_MODES, render_view

    cfg = load_config(TINY, ["scene.levels=4", "scene.log2_table_size=12", "scene.max_resolution=64", "render.num_samples=16"])
    torch.manual_seed(0)
    scene = Scene.from_config(cfg, device=torch.device("cpu"))
    scene.train()
    cams = make_cameras(torch.tensor([15.0]), torch.tensor([0.0]), torch.tensor([2.0]), torch.tensor([40.0]), 8, 8)
    wxyz, position = viser_pose(cams.c2w[0].double().numpy())
    cam = camera_from_viser(wxyz, position, math.radians(40.0), 2.0)
    rng = torch.get_rng_state()
    for mode in RENDER_MODES:
        image = render_view(scene, cfg, cam, mode, 32)
        assert image.shape == (16, 32, 3) and image.dtype == np.uint8, mode
        if mode == "opacity":
            assert image[8, 16].min() > 200 and image[0, 0].max() < 30
    assert torch.equal(torch.get_rng_state(), rng) and scene.training


def test_ctrl_c_stops_view(watched_run: Dict[str, object], tmp_path: Path) -> None:
    """Ctrl-C (SIGINT) ends `dreamperp view` as SIGTERM does: exit 130, one line, the port closed."""
    run: Path = watched_run["off_run"]  # type: ignore[assignment]
    log = tmp_path / "view.log"
    proc = _start(["view", str(run), "--port", "0"], log)
    try:
        url = _wait_for_line(proc, log, r"viewer at (http://\S+)").group(1)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 130
        text = log.read_text()
        assert "Traceback" not in text and "KeyboardInterrupt" not in text, text
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", int(url.rsplit(":", 1)[1]))) != 0
    finally:
        if proc.poll() is None:
            proc.kill()
