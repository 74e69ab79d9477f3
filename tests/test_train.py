"""Training end to end with the real tiny SD model: run folder, exact resume after kill -9,
SIGTERM, corrupt checkpoints, non-finite steps, multi-view reconstruction."""

from __future__ import annotations

import importlib.util
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

import pytest
import torch

from dreamperp.cli import main
from dreamperp.config import load_config
from dreamperp.errors import DreamperpError
from dreamperp.runs.checkpoint import list_checkpoints, load_checkpoint, load_run
from dreamperp.runs.folder import RunDir, read_metrics
from dreamperp.train.loop import TrainLoop
from dreamperp.train.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "dreamperp" / "configs" / "tiny.yaml")


def small(model_dir: Path, out: Path, **extra: object) -> List[str]:
    """Overrides that shrink configs/tiny.yaml to a few seconds."""
    values: Dict[str, object] = {
        "guidance.model": str(model_dir),
        "output_dir": str(out),
        "data.width": 16,
        "data.height": 16,
        "render.num_samples": 16,
        "scene.levels": 4,
        "scene.log2_table_size": 12,
        "scene.max_resolution": 64,
        "trainer.val_size": 16,
        "trainer.log_every": 1,
        "trainer.progress": "false",
    }
    values.update({k.replace("__", "."): v for k, v in extra.items()})
    return [f"{k}={v}" for k, v in values.items()]


def only_run(out: Path) -> Path:
    runs = [p for p in out.glob("*/*") if p.is_dir()]
    assert len(runs) == 1, runs
    return runs[0]


def assert_same_state(a: dict, b: dict) -> None:
    assert a["step"] == b["step"]
    assert a["scene"].keys() == b["scene"].keys()
    for key in a["scene"]:
        assert torch.equal(a["scene"][key], b["scene"][key]), f"scene tensor {key} differs"
    for pa, pb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        for key in pa:
            assert torch.equal(pa[key], pb[key]), f"optimizer state {key} differs"
    ma, mb = a["prior"]["sega_momentum"], b["prior"]["sega_momentum"]
    assert (ma is None and mb is None) or torch.equal(ma, mb)


# ------------------------------------------------------------------------------------ end to end
def test_tiny_run_end_to_end(tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    overrides = small(
        tiny_model_dir, out, trainer__max_steps=12, trainer__checkpoint_every=6, trainer__val_every=6,
        render__albedo_warmup_steps=6, export__resolution=32, export__video_frames=4, export__video_size=32,
        export__faces=300, export__texture_size=64,
    )
    assert main(["train", TINY, *overrides]) == 0
    err = capsys.readouterr().err
    run = only_run(out)
    assert f"run folder {run}" in err and "finished 12 steps" in err
    assert run.name.endswith("-a-hamburger")
    cfg = load_config(run / "config.yaml")
    assert cfg.trainer.max_steps == 12 and cfg.guidance.model == str(tiny_model_dir)
    assert [p.name for p in list_checkpoints(run / "ckpts")] == ["step-000006.pt", "step-000012.pt"]
    from PIL import Image

    grids = sorted(p.name for p in (run / "val").iterdir())
    assert grids == ["step-000006.png", "step-000012.png"]
    with Image.open(run / "val" / "step-000012.png") as im:
        assert im.width > 4 * 16 and im.height > 3 * 16  # 4 views x 3 rows (+ labels)
    records = read_metrics(run / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(1, 13))
    for key in ("loss", "loss_sds", "loss_orient", "loss_opacity_entropy", "t", "grad_norm", "sds_grad_norm", "it_s", "skipped_steps"):
        assert key in records[-1], key
    assert {r["shading"] for r in records[:6]} == {"albedo"} and records[-1]["skipped_steps"] == 0
    import trimesh

    mesh = trimesh.load(run / "export" / "mesh.glb", force="mesh")
    assert 0 < len(mesh.faces) <= 300 and mesh.visual.kind == "texture"  # export.faces, export.texture(_size) used
    assert mesh.visual.material.baseColorTexture.size == (64, 64)
    assert "threshold auto = " in err
    video = run / "export" / "turntable.mp4"
    assert video.stat().st_size > 0

    # A finished run resumed again does nothing; one killed while exporting (no turntable yet) exports.
    stamp = video.stat().st_mtime_ns
    assert main(["train", "--resume", str(run)]) == 0
    assert "nothing to do" in capsys.readouterr().err and video.stat().st_mtime_ns == stamp
    video.unlink()
    assert main(["train", "--resume", str(run)]) == 0
    assert video.stat().st_size > 0
    loaded = load_run(run)
    assert loaded.step == 12 and loaded.ckpt_path.name == "step-000012.pt"
    state = load_checkpoint(run / "ckpts" / "step-000012.pt")
    for key, value in loaded.scene.state_dict().items():
        assert torch.equal(value.cpu(), state["scene"][key])


# ------------------------------------------------------------------------- kill -9, SIGTERM, resume
def _popen(args: List[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "dreamperp", "train", *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_checkpoint(proc: subprocess.Popen, out: Path, min_step: int, timeout: float = 120.0) -> Path:
    """Poll until a run folder under ``out`` has a checkpoint with step >= min_step; returns the run."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for ckpt in out.glob("*/*/ckpts/step-*.pt"):
            if int(ckpt.stem.split("-")[1]) >= min_step:
                return ckpt.parent.parent
        if proc.poll() is not None:
            raise AssertionError(f"training exited early ({proc.returncode}): {proc.stderr.read() if proc.stderr else ''}")
        time.sleep(0.005)
    proc.kill()
    raise AssertionError("no checkpoint appeared in time")


MAX_STEPS = 20


@pytest.fixture(scope="module")
def resume_runs(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Path]:
    """An uninterrupted run and the same run killed with -9, resumed, stopped by SIGTERM and resumed again."""
    base = tmp_path_factory.mktemp("resume")
    # Everything that carries state or draws random numbers changes during these few steps: albedo
    # warm-up → random shading, a resolution switch, regulariser ramp, SEGA momentum, batch of 2.
    extra = dict(
        trainer__max_steps=MAX_STEPS, trainer__checkpoint_every=2, trainer__keep_checkpoints=3, trainer__val_every=5,
        trainer__video_at_end="false", render__albedo_warmup_steps=3, data__upscale_step=7, data__upscale_width=24,
        data__upscale_height=24, data__batch_size=2, loss__ramp_steps=4, scene__background="random", seed=7,
        guidance__sega__momentum_scale=0.3,
    )
    sega = "guidance.sega.concepts=[{prompt: sunglasses, warmup: 0, scale: 3.0}]"
    procs: List[subprocess.Popen] = []
    try:
        full = _popen([TINY, *small(tiny_model_dir, base / "full", **extra), sega])
        interrupted = _popen([TINY, *small(tiny_model_dir, base / "cut", **extra), sega])
        procs += [full, interrupted]
        run = _wait_for_checkpoint(interrupted, base / "cut", 4)
        interrupted.send_signal(signal.SIGKILL)
        interrupted.communicate()
        assert interrupted.returncode == -signal.SIGKILL
        killed_at = max(int(p.stem.split("-")[1]) for p in list_checkpoints(run / "ckpts"))
        assert killed_at < MAX_STEPS, "the run finished before it was killed: nothing was tested"

        resumed = _popen(["--resume", str(run)])
        procs.append(resumed)
        _wait_for_checkpoint(resumed, base / "cut", killed_at + 2)
        resumed.send_signal(signal.SIGTERM)
        _, term_err = resumed.communicate(timeout=120)
        stopped_at = max(int(p.stem.split("-")[1]) for p in list_checkpoints(run / "ckpts"))

        final = subprocess.run([sys.executable, "-m", "dreamperp", "train", "--resume", str(run)], cwd=ROOT, capture_output=True, text=True)
        assert final.returncode == 0, final.stderr
        _, full_err = full.communicate(timeout=120)
        assert full.returncode == 0, full_err
    finally:
        for proc in procs:  # never leave a trainer running after a failure
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    return {
        "full": only_run(base / "full"), "cut": run, "killed_at": killed_at, "stopped_at": stopped_at,  # type: ignore[dict-item]
        "term_rc": resumed.returncode, "term_err": term_err, "final_err": final.stderr,  # type: ignore[dict-item]
    }


def test_resume_after_kill_9_matches_uninterrupted_run_exactly(resume_runs: Dict[str, Path]) -> None:
    # Bit-exactness is a property of one machine and one thread count: both runs are processes of
    # this test session with the same environment. Across CPU models or OMP_NUM_THREADS, fp32
    # rounding differs and so would the runs; nothing here compares across machines.
    a = load_checkpoint(resume_runs["full"] / "ckpts" / f"step-{MAX_STEPS:06d}.pt")
    b = load_checkpoint(resume_runs["cut"] / "ckpts" / f"step-{MAX_STEPS:06d}.pt")
    assert_same_state(a, b)
    assert b["prior"]["sega_momentum"] is not None  # the momentum really was carried across restarts
    # metrics.jsonl of the resumed run reads like one run: each step once, in order.
    steps = [r["step"] for r in read_metrics(resume_runs["cut"] / "metrics.jsonl")]
    assert steps == list(range(1, MAX_STEPS + 1))
    assert f"resuming {resume_runs['cut']}" in str(resume_runs["final_err"])


def test_sigterm_saves_a_loadable_checkpoint_and_exits_143(resume_runs: Dict[str, Path]) -> None:
    assert resume_runs["term_rc"] == 143, resume_runs["term_err"]
    err = str(resume_runs["term_err"])
    stopped_at = int(resume_runs["stopped_at"])  # type: ignore[call-overload]
    assert f"stopped by SIGTERM at step {stopped_at}" in err and "dreamperp train --resume" in err
    assert int(resume_runs["killed_at"]) < stopped_at < MAX_STEPS  # type: ignore[call-overload]
    # It stopped after a complete step: resuming from there ended on the uninterrupted parameters,
    # which the test above checks; here, the checkpoint it wrote is loadable.
    assert f"from step-{stopped_at:06d}.pt" in str(resume_runs["final_err"])


def test_corrupt_checkpoint_error_and_fallback(resume_runs: Dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    shutil.copytree(resume_runs["cut"], run)
    newest = list_checkpoints(run / "ckpts")[-1]
    newest.write_bytes(newest.read_bytes()[:1000])  # truncated, as by a full disk
    assert main(["train", "--resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert str(newest) in err and "--fallback" in err and err.count("\n") == 1
    # --fallback resumes from the previous checkpoint (and may raise max_steps) and, being
    # deterministic, ends on the same parameters as the uninterrupted run.
    assert main(["train", "--resume", str(run), "--fallback", f"trainer.max_steps={MAX_STEPS}"]) == 0
    err = capsys.readouterr().err
    assert "falling back to step-" in err and (run / "ckpts" / (newest.name + ".corrupt")).is_file()
    a = load_checkpoint(resume_runs["full"] / "ckpts" / f"step-{MAX_STEPS:06d}.pt")
    assert_same_state(a, load_checkpoint(run / "ckpts" / f"step-{MAX_STEPS:06d}.pt"))


# ------------------------------------------------------------------------------- failure handling
def test_usage_errors_write_nothing(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    cases = [
        (["train", str(ROOT / "dreamperp" / "configs" / "reconstruct.yaml"), f"data.path={tmp_path / 'missing.json'}", f"output_dir={out}"], "missing.json"),
        (["train", TINY, f"output_dir={out}", "--fallback"], "--fallback"),
        (["train", "--resume", str(tmp_path)], "not a dreamperp run folder"),
        (["train", "--resume", str(tmp_path), "prompt=a cat"], "only trainer.max_steps"),
        (["train"], "config file"),
    ]
    for argv, needle in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert needle in err and err.count("\n") == 1, err
    assert not out.exists()


def test_non_finite_steps_are_skipped_then_stop_with_checkpoint(tiny_model_dir: Path, tmp_path: Path) -> None:
    cfg = load_config(TINY, small(tiny_model_dir, tmp_path, trainer__max_bad_steps=3, trainer__checkpoint_every=100))
    trainer = Trainer(cfg)
    before = {k: v.clone() for k, v in trainer.scene.state_dict().items()}
    real_guidance = trainer.prior
    calls = {"n": 0}

    def flaky_guidance(rgb, azimuth, elevation, *, step, state):
        calls["n"] += 1
        out = real_guidance(rgb, azimuth, elevation, step=step, state=state)
        return {**out, "loss_sds": out["loss_sds"] * float("nan")}  # NaN loss and NaN gradients from the real graph

    trainer.prior = flaky_guidance
    run = RunDir.create(cfg)
    with pytest.raises(DreamperpError) as info:
        TrainLoop(trainer, run, log=lambda m: None).fit()
    assert info.value.exit_code == 1 and "3 steps in a row" in str(info.value) and "--resume" in str(info.value)
    state = load_checkpoint(run.ckpt_dir / "step-000003.pt")
    assert state["trainer"]["skipped_steps"] == 3
    for key, value in before.items():  # no update was applied
        assert torch.equal(state["scene"][key], value), key
    assert [r["skipped_steps"] for r in read_metrics(run.metrics_path)] == [1, 2, 3]

    def oom():
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    trainer.train_step = oom  # type: ignore[method-assign]
    with pytest.raises(DreamperpError) as info:
        TrainLoop(trainer, RunDir.create(cfg), log=lambda m: None).fit()
    message = str(info.value)
    assert "out of memory" in message and "data.width/data.height" in message and "render.num_samples" in message
    assert "data.batch_size" in message and "guidance.dtype" in message


# ------------------------------------------------------------------------------------- multiview
def _make_dataset(out: Path, n: int, size: int) -> Path:
    spec = importlib.util.spec_from_file_location("make_synthetic_dataset", ROOT / "tools" / "make_synthetic_dataset.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    train, _ = module.make_dataset(out, n_train=n, n_test=1, size=size, seed=0)
    return Path(train)


def test_multiview_reconstruction_smoke(tmp_path: Path) -> None:
    train = _make_dataset(tmp_path / "data", n=6, size=16)
    out = tmp_path / "out"
    argv = [
        "train", str(ROOT / "dreamperp" / "configs" / "reconstruct.yaml"), f"data.path={train}", f"output_dir={out}", "device=cpu",
        "trainer.max_steps=30", "trainer.log_every=5", "trainer.val_every=30", "trainer.checkpoint_every=30", "trainer.progress=false",
        "trainer.val_size=16", "data.rays_per_step=256", "render.num_samples=16", "scene.levels=4", "scene.log2_table_size=12",
        "scene.max_resolution=64",
    ]
    assert main(argv) == 0
    run = only_run(out)
    records = read_metrics(run / "metrics.jsonl")
    assert records[-1]["step"] == 30
    first, last = records[0], records[-1]
    assert last["loss_rgb"] < 0.5 * first["loss_rgb"] and last["psnr"] > first["psnr"] + 3
    assert last["loss_alpha"] < first["loss_alpha"]
    assert (run / "ckpts" / "step-000030.pt").is_file() and (run / "val" / "step-000030.png").is_file()
    loaded = load_run(run, device="cpu")
    assert loaded.cfg.data.type == "multiview" and loaded.step == 30


def test_resume_of_a_finished_run_with_a_lower_limit_changes_nothing(resume_runs: Dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    shutil.copytree(resume_runs["full"], run)
    before = (run / "config.yaml").read_text()
    assert main(["train", "--resume", str(run), "trainer.max_steps=1"]) == 0
    assert "nothing to do" in capsys.readouterr().err
    assert (run / "config.yaml").read_text() == before


def test_front_first_steps_narrow_the_training_azimuths(tiny_model_dir: Path, tmp_path: Path) -> None:
    """data.front_first_steps reaches the training cameras: with [2, 4] and ±10°, steps 0-2 see only
    azimuths within ±10° (4 cameras a step, stratified), step 3 within ±95°, later steps all around."""
    cfg = load_config(TINY, small(tiny_model_dir, tmp_path, data__front_first_steps="[2,4]", data__front_first_deg=10, data__batch_size=4))
    trainer = Trainer(cfg)
    real_guidance = trainer.prior
    seen: List[torch.Tensor] = []

    def recording_guidance(rgb, azimuth, elevation, *, step, state):
        seen.append(azimuth.clone())
        return real_guidance(rgb, azimuth, elevation, step=step, state=state)

    trainer.prior = recording_guidance
    for _ in range(3 + 8):
        trainer.train_step()
    assert all(float(a.abs().max()) <= 10.0 + 1e-4 for a in seen[:3])
    assert float(seen[3].abs().max()) <= 95.0 + 1e-4
    assert float(torch.cat(seen[4:]).abs().max()) > 95.0  # 32 stratified draws from the full circle
