"""Checkpoint files, RNG state, run folders and metrics (no model, no training: fast)."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from dreamperp.config import load_config
from dreamperp.errors import UsageError
from dreamperp.runs.checkpoint import (
    checkpoint_name,
    list_checkpoints,
    load_checkpoint,
    load_run,
    remove_stale_temp_files,
    resume_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from dreamperp.runs.folder import (
    MetricsLogger,
    RunDir,
    read_metrics,
    slugify,
    truncate_metrics,
)


def _state(step: int) -> dict:
    g = torch.Generator().manual_seed(step)
    scene = {"w": torch.randn(64, 3, generator=g), "b": torch.zeros(3, dtype=torch.float16)}
    return {"step": step, "scene": scene, "rng": rng_state(), "prior": {"sega_momentum": None}}


def test_save_load_roundtrip_names_and_pruning(tmp_path: Path) -> None:
    ckpts = tmp_path / "ckpts"
    for step in (2, 4, 6, 10):
        path = save_checkpoint(ckpts, _state(step), keep=3)
        assert path.name == checkpoint_name(step) == f"step-{step:06d}.pt"
    assert [p.name for p in list_checkpoints(ckpts)] == ["step-000004.pt", "step-000006.pt", "step-000010.pt"]
    assert sorted(p.name for p in ckpts.iterdir()) == ["step-000004.pt", "step-000006.pt", "step-000010.pt"]  # no temp files left
    state = load_checkpoint(ckpts / "step-000010.pt")
    assert state["step"] == 10 and torch.equal(state["scene"]["w"], _state(10)["scene"]["w"])
    assert state["scene"]["b"].dtype == torch.float16
    # A plain torch.load (weights only, no code execution) reads it too.
    assert torch.load(ckpts / "step-000010.pt", weights_only=True)["step"] == 10


@pytest.mark.parametrize("damage", ["truncate", "flip", "empty", "foreign"])
def test_damaged_checkpoint_is_a_clear_error_naming_the_file(tmp_path: Path, damage: str) -> None:
    path = save_checkpoint(tmp_path, _state(3), keep=5)
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        path.write_bytes(bytes(data[: len(data) // 2]))
    elif damage == "flip":
        # A flipped byte inside tensor data leaves a readable zip: the checksum must catch it.
        offset = data.find(_state(3)["scene"]["w"].numpy().tobytes()[:16])
        assert offset > 0
        data[offset + 5] ^= 0xFF
        path.write_bytes(bytes(data))
    elif damage == "empty":
        path.write_bytes(b"")
    else:
        torch.save({"weights": torch.ones(2)}, path)
    with pytest.raises(UsageError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message
    assert ("corrupt" in message) or ("not a dreamperp checkpoint" in message)


def test_rng_state_roundtrip_restores_every_generator() -> None:
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    state = rng_state()
    first = (torch.rand(5), np.random.rand(5), [random.random() for _ in range(5)], torch.randn(3))
    torch.manual_seed(99), np.random.seed(99), random.seed(99)
    set_rng_state(state)
    again = (torch.rand(5), np.random.rand(5), [random.random() for _ in range(5)], torch.randn(3))
    assert torch.equal(first[0], again[0]) and np.array_equal(first[1], again[1]) and first[2] == again[2] and torch.equal(first[3], again[3])


def _cfg(tmp_path: Path, **extra: str):
    overrides = [f"output_dir={tmp_path / 'out'}", "prompt=A Corgi, wearing sunglasses!", "guidance.model=tiny"]
    return load_config(None, overrides + [f"{k}={v}" for k, v in extra.items()])


def test_run_folder_layout_and_never_overwritten(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, name="grp")
    a = RunDir.create(cfg, now=0.0)
    b = RunDir.create(cfg, now=0.0)  # same second: a suffix, not the same folder
    assert a.root != b.root and b.root.name == a.root.name + "-2"
    assert a.root.parent == tmp_path / "out" / "grp"
    assert a.root.name.endswith("-a-corgi-wearing-sunglasses")
    for sub in ("ckpts", "val", "export"):
        assert (a.root / sub).is_dir()
    assert load_config(a.config_path).prompt == cfg.prompt  # the resolved config reads back
    assert oct(a.config_path.stat().st_mode & 0o777) == oct(0o666 & ~_umask())
    assert slugify("  ") == "run" and len(slugify("x" * 200)) <= 48
    with a.lock():  # one trainer per run folder
        with pytest.raises(UsageError, match="being trained by another process"):
            with a.lock():
                pass
    with a.lock():  # released again
        pass


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_resume_checkpoint_fallback_and_load_run_errors(tmp_path: Path) -> None:
    run = RunDir.create(_cfg(tmp_path))
    with pytest.raises(UsageError, match="no checkpoints"):
        resume_checkpoint(run)
    with pytest.raises(UsageError, match="no checkpoints"):
        load_run(run.root)
    save_checkpoint(run.ckpt_dir, _state(2), keep=3)
    newest = save_checkpoint(run.ckpt_dir, _state(4), keep=3)
    (run.ckpt_dir / ".step-000006.tmp4242.pt").write_bytes(b"half")  # left by a kill -9
    newest.write_bytes(newest.read_bytes()[:100])
    with pytest.raises(UsageError) as info:
        resume_checkpoint(run)
    assert "step-000004.pt" in str(info.value) and "--fallback" in str(info.value) and "step-000002.pt" in str(info.value)
    warnings: list[str] = []
    path, state = resume_checkpoint(run, fallback=True, log=warnings.append)
    assert path.name == "step-000002.pt" and state["step"] == 2
    assert "falling back to step-000002.pt" in warnings[0]
    assert (run.ckpt_dir / "step-000004.pt.corrupt").is_file()  # kept for inspection, out of the way
    assert not any(p.name.startswith(".step-") for p in run.ckpt_dir.iterdir())
    remove_stale_temp_files(run.ckpt_dir)
    with pytest.raises(UsageError, match="not a dreamperp run folder"):
        load_run(tmp_path)
    with pytest.raises(UsageError, match="does not exist"):
        load_run(tmp_path / "nope")


def test_metrics_log_and_truncate_after_resume(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    with MetricsLogger(path, tensorboard=True) as log:  # tensorboard missing here: silently off
        for step in range(1, 6):
            log.log({"step": step, "loss": torch.tensor(1.0 / step), "t": [1, 2], "bad": float("nan")})
    with open(path, "a") as f:
        f.write('{"step": 6, "lo')  # torn by a kill
    truncate_metrics(path, 3)
    records = read_metrics(path)
    assert [r["step"] for r in records] == [1, 2, 3]
    assert records[1]["loss"] == pytest.approx(0.5) and records[0]["bad"] == "nan"
    json.loads(path.read_text().splitlines()[0])  # strictly valid JSON (no bare NaN)


def test_read_metrics_while_written_skips_a_torn_line_and_a_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 10, "loss": 1.5}\n{"step": 20, "loss": 1.25}\n{"step": 30, "lo', encoding="utf-8")
    with pytest.raises(ValueError):
        read_metrics(path)  # a finished run's file is whole: a torn line is an error there
    assert read_metrics(path, while_written=True) == [{"step": 10, "loss": 1.5}, {"step": 20, "loss": 1.25}]
    assert read_metrics(tmp_path / "none.jsonl", while_written=True) == []
