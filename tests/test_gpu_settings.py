"""The GPU-only settings and guards, checked on the CPU (issue 16, docs/design.md §6, §7):
hash-grid back end pinned by the checkpoint on load and resume, tinycudann's precision and seed,
the GradScaler's start and its skips counted apart from bad steps, and nerfacc's CUDA probe
(once per process, a stale torch build lock reported by name).

A fake ``tinycudann`` module (``tinycudann.Encoding`` as a small torch module that records its
constructor arguments, parameters in a flat ``params`` like tcnn's) stands in for the real one,
and ``tcnn_usable`` is patched to say yes, as on a CUDA machine with tinycudann installed.
"""

from __future__ import annotations

import sys
import threading
import time
import types
from pathlib import Path
from typing import Any, Dict, List

import pytest
import torch
from torch import nn

from dreamperp.config import Config, TrainerConfig, load_config
from dreamperp.errors import ConfigError, UsageError
from dreamperp.runs.checkpoint import load_run, save_checkpoint
from dreamperp.runs.folder import RunDir
from dreamperp.scene import Scene, nerfacc_cuda
from dreamperp.scene import encoding as encoding_mod
from dreamperp.scene import scene as renderer_mod
from dreamperp.scene.encoding import HashGridEncoding, backend_for_checkpoint, checkpoint_backend
from dreamperp.train import trainer as trainer_mod
from dreamperp.train.loop import TrainLoop
from dreamperp.train.trainer import Trainer, grad_scaler_for, new_grad_scaler, seed_everything

TINY_SCENE = ["scene.levels=4", "scene.log2_table_size=12", "scene.max_resolution=64", "scene.hidden_dim=16", "scene.num_layers=1"]


# --------------------------------------------------------------------------------------- fakes
class _FakeEncoding(nn.Module):
    """``tinycudann.Encoding(n_input_dims, encoding_config, seed=1337, dtype=None)`` on the CPU."""

    calls: List[Dict[str, Any]] = []

    def __init__(self, n_input_dims: int, encoding_config: dict, seed: int = 1337, dtype: Any = None):
        super().__init__()
        type(self).calls.append({"n_input_dims": n_input_dims, "config": dict(encoding_config), "seed": seed, "dtype": dtype})
        self.n_output_dims = int(encoding_config["n_levels"]) * int(encoding_config["n_features_per_level"])
        self.dtype = dtype if dtype is not None else torch.float16  # tcnn's preferred precision on current GPUs
        gen = torch.Generator().manual_seed(int(seed))
        self.params = nn.Parameter(torch.empty(3 * self.n_output_dims).uniform_(-1e-4, 1e-4, generator=gen))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() @ self.params.view(3, -1)).to(self.dtype)


@pytest.fixture
def fake_tcnn(monkeypatch: pytest.MonkeyPatch):
    """``install()``: from then on ``tinycudann`` is importable (its ``Encoding`` records its calls)
    and usable on the CPU, as on a CUDA machine with tinycudann installed."""

    def install() -> types.ModuleType:
        module = types.ModuleType("tinycudann")
        calls: List[Dict[str, Any]] = []
        module.Encoding = type("Encoding", (_FakeEncoding,), {"calls": calls})  # type: ignore[attr-defined]
        module.calls = calls  # type: ignore[attr-defined]
        monkeypatch.setitem(sys.modules, "tinycudann", module)
        monkeypatch.setattr(encoding_mod, "tcnn_usable", lambda device: encoding_mod.tcnn_available())
        monkeypatch.setattr(renderer_mod, "tcnn_usable", lambda device: encoding_mod.tcnn_available())
        return module

    return install


@pytest.fixture
def no_tcnn(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tinycudann", None)  # `import tinycudann` raises ImportError


class _StubPrior:
    """What Trainer needs of a prior besides sds (which these tests replace)."""

    dtype = torch.float32

    def state_dict(self) -> dict:
        return {"sega_momentum": None}

    def load_state_dict(self, state: dict) -> None:
        pass


def _cfg(tmp_path: Path, *extra: str) -> Config:
    return load_config(None, [f"output_dir={tmp_path}", "prompt=a chair", "device=cpu", "trainer.progress=false", *TINY_SCENE, *extra])


def _torch_grid_run(tmp_path: Path) -> tuple[Config, RunDir, dict]:
    """A run folder (scene.encoding auto) whose checkpoint holds a torch grid, as trained without tinycudann."""
    cfg = _cfg(tmp_path)
    trainer = Trainer(cfg, prior=_StubPrior())
    assert trainer.scene.field.encoding.backend == "torch"
    trainer.step = 5
    run = RunDir.create(cfg)
    state = trainer.state_dict()
    save_checkpoint(run.ckpt_dir, state, keep=1)
    return cfg, run, state


# ------------------------------------------------------------------------- 1. back end on reload
def test_backend_for_checkpoint_follows_the_keys_not_the_setting() -> None:
    torch_keys = ["field.encoding.grid.embeddings", "field.density_net.0.weight"]
    tcnn_keys = ["field.encoding.grid.params", "field.density_net.0.weight"]
    assert checkpoint_backend(torch_keys) == "torch" and checkpoint_backend(tcnn_keys) == "tcnn"
    assert checkpoint_backend(["background.net.0.weight"]) is None
    for tcnn_ok in (True, False):  # the torch grid runs everywhere, also where tinycudann is installed
        assert backend_for_checkpoint(torch_keys, tcnn_ok=tcnn_ok) == "torch"
    assert backend_for_checkpoint(tcnn_keys, tcnn_ok=True) == "tcnn"
    with pytest.raises(UsageError, match="trained with tinycudann") as info:
        backend_for_checkpoint(tcnn_keys, tcnn_ok=False)
    assert "\n" not in str(info.value) and "do not cross back ends" in str(info.value)
    assert backend_for_checkpoint(["background.net.0.weight"], tcnn_ok=False) is None


def test_torch_grid_run_loads_and_resumes_on_the_torch_grid_where_tinycudann_is_importable(fake_tcnn, tmp_path: Path) -> None:
    cfg, run, state = _torch_grid_run(tmp_path)  # trained where tinycudann was absent
    fake = fake_tcnn()  # now loaded/resumed where it is present
    assert Scene.from_config(cfg, device="cpu").field.encoding.backend == "tcnn"  # what 'auto' builds here now
    fake.calls.clear()

    loaded = load_run(run.root, device="cpu")
    assert loaded.scene.field.encoding.backend == "torch" and loaded.step == 5 and not fake.calls
    assert loaded.cfg.scene.encoding == "auto"  # the run's own config is reported unchanged
    for key, value in state["scene"].items():
        assert torch.equal(loaded.scene.state_dict()[key], value), key

    resumed = Trainer.resume(cfg, state, device="cpu", prior=_StubPrior())
    assert resumed.scene.field.encoding.backend == "torch" and resumed.step == 5 and not fake.calls
    assert resumed.cfg.scene.encoding == "auto"  # the run's config, as its checkpoints keep saying
    for key, value in state["scene"].items():
        assert torch.equal(resumed.scene.state_dict()[key], value), key

    # Loading into a scene built with the other back end says what to build, not "this machine does not use".
    tcnn_scene = Scene.from_config(cfg, device="cpu")
    with pytest.raises(UsageError, match="scene.encoding=torch") as info:
        tcnn_scene.load_state_dict(state["scene"])
    assert "pure-PyTorch" in str(info.value) and "\n" not in str(info.value)


def test_tinycudann_checkpoint_where_tinycudann_is_absent_is_a_one_line_error(no_tcnn, tmp_path: Path) -> None:
    cfg, run, state = _torch_grid_run(tmp_path)
    scene = dict(state["scene"])
    scene["field.encoding.grid.params"] = scene.pop("field.encoding.grid.embeddings").reshape(-1)  # what tcnn saves
    state = {**state, "scene": scene, "step": 6}
    path = save_checkpoint(run.ckpt_dir, state, keep=1)
    with pytest.raises(UsageError) as info:
        load_run(run.root, device="cpu")
    message = str(info.value)
    assert str(path) in message and "trained with tinycudann" in message and "\n" not in message
    with pytest.raises(UsageError, match="trained with tinycudann"):
        Trainer.resume(cfg, state, device="cpu", prior=_StubPrior())


# -------------------------------------------------------------------- 2, 3. tinycudann dtype, seed
def test_tcnn_grid_is_built_in_float32_by_default(fake_tcnn, tmp_path: Path) -> None:
    fake = fake_tcnn()
    enc = HashGridEncoding(levels=2, features_per_level=2, log2_table_size=8, base_resolution=4, max_resolution=8, backend="tcnn")
    assert enc.backend == "tcnn" and fake.calls[-1]["dtype"] is torch.float32
    assert enc(torch.rand(5, 3)).dtype == torch.float32
    cfg = _cfg(tmp_path, "scene.encoding=tcnn")
    assert cfg.scene.tcnn_dtype == "float32"
    Scene.from_config(cfg, device="cpu")
    assert fake.calls[-1]["dtype"] is torch.float32 and fake.calls[-1]["config"]["n_levels"] == 4
    Scene.from_config(_cfg(tmp_path, "scene.encoding=tcnn", "scene.tcnn_dtype=float16"), device="cpu")
    assert fake.calls[-1]["dtype"] is torch.float16
    with pytest.raises(ConfigError, match="scene.tcnn_dtype"):
        _cfg(tmp_path, "scene.tcnn_dtype=bfloat16")


def test_tcnn_seed_is_drawn_from_the_run_seed(fake_tcnn, tmp_path: Path) -> None:
    fake = fake_tcnn()

    def seed_for(run_seed: int) -> int:
        seed_everything(run_seed)
        Scene.from_config(_cfg(tmp_path, "scene.encoding=tcnn", f"seed={run_seed}"), device="cpu")
        return int(fake.calls[-1]["seed"])

    a, a2, b = seed_for(1), seed_for(1), seed_for(2)
    assert a == a2 and a != b and a != 1337  # not tinycudann's fixed default
    assert 0 <= a < 2**32 and 0 <= b < 2**32  # tinycudann takes a uint32


# ------------------------------------------------------------------------------- 4. GradScaler
def test_grad_scaler_starts_at_the_configured_scale(monkeypatch: pytest.MonkeyPatch) -> None:
    tc = TrainerConfig()
    assert tc.grad_scaler and tc.grad_scaler_init == 2.0**10
    assert new_grad_scaler("cpu", tc.grad_scaler_init).get_scale() == 1024.0  # "cpu" stands in for "cuda"
    made: list = []
    monkeypatch.setattr(trainer_mod, "new_grad_scaler", lambda kind, init: made.append((kind, init)) or "scaler")
    cuda = torch.device("cuda")
    assert grad_scaler_for(tc, cuda, torch.float16) == "scaler" and made == [("cuda", 1024.0)]
    low = load_config(None, ["prompt=a chair", "trainer.grad_scaler_init=64"]).trainer
    grad_scaler_for(low, cuda, torch.float16)
    assert made[-1] == ("cuda", 64.0)
    assert grad_scaler_for(tc, cuda, torch.float32) is None and grad_scaler_for(tc, torch.device("cpu"), torch.float16) is None
    off = load_config(None, ["prompt=a chair", "trainer.grad_scaler=false"]).trainer
    assert grad_scaler_for(off, cuda, torch.float16) is None and len(made) == 2
    with pytest.raises(ConfigError, match="trainer.grad_scaler_init"):
        load_config(None, ["prompt=a chair", "trainer.grad_scaler_init=0"])


def test_scaler_skips_are_counted_apart_from_bad_steps(tmp_path: Path) -> None:
    trainer = Trainer(_cfg(tmp_path), prior=_StubPrior())
    # Every gradient element is 8: scaled by 2^126 or 2^125 it overflows float32 (max ≈ 2^128), by 2^124 not.
    trainer.scaler = new_grad_scaler("cpu", 2.0**126)
    nan = {"on": False}

    def losses(step: int):
        loss = 8.0 * sum(p.sum() for p in trainer.params)
        return (loss * float("nan") if nan["on"] else loss), {}

    trainer.text_losses = losses  # type: ignore[method-assign]
    before = {k: v.clone() for k, v in trainer.scene.state_dict().items()}
    metrics = [trainer.train_step() for _ in range(2)]
    assert [m["skipped"] for m in metrics] == [True, True]
    assert trainer.scaler_skips == 2 and trainer.skipped_steps == 0 and trainer.bad_in_row == 0
    assert all(torch.equal(v, trainer.scene.state_dict()[k]) for k, v in before.items())  # no update applied
    assert trainer.scaler.get_scale() == 2.0**124
    assert not trainer.train_step()["skipped"]  # 8·2^124 fits: the step is applied
    nan["on"] = True
    assert trainer.train_step()["skipped"]  # a NaN loss is a bad step, whatever the scaler does
    assert trainer.scaler_skips == 2 and trainer.skipped_steps == 1 and trainer.bad_in_row == 1
    state = trainer.state_dict()
    assert state["trainer"] == {"skipped_steps": 1, "scaler_skips": 2, "bad_in_row": 1}
    record = TrainLoop(trainer, RunDir.create(trainer.cfg), log=lambda m: None)._record({"loss": torch.tensor(1.0)}, 1.0)
    assert record["scaler_skips"] == 2 and record["skipped_steps"] == 1 and record["grad_scale"] == 2.0**123
    again = Trainer.resume(trainer.cfg, state, device="cpu", prior=_StubPrior())
    assert again.scaler_skips == 2 and again.skipped_steps == 1


# ----------------------------------------------------------------------------- 5. nerfacc probe
@pytest.fixture
def fresh_probe():
    nerfacc_cuda.nerfacc_cuda_status.cache_clear()
    yield
    nerfacc_cuda.nerfacc_cuda_status.cache_clear()  # later tests probe for real again


def _counting_importer(monkeypatch: pytest.MonkeyPatch, result: Any) -> dict:
    count = {"n": 0}

    def importer():
        count["n"] += 1
        if isinstance(result, Exception):
            raise result
        return result

    monkeypatch.setattr(nerfacc_cuda, "import_backend", importer)
    return count


def test_nerfacc_probe_runs_once_per_process_and_remembers_a_failure(fresh_probe, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(nerfacc_cuda, "jit_build_possible", lambda: False)
    count = _counting_importer(monkeypatch, RuntimeError("Error building extension 'nerfacc_cuda'"))
    cuda = torch.device("cuda")
    assert renderer_mod.resolve_estimator("auto", cuda) == "dense"
    assert renderer_mod.resolve_estimator("auto", cuda) == "dense"
    with pytest.raises(UsageError, match="Error building extension") as info:
        renderer_mod.resolve_estimator("occgrid", cuda)
    assert "nvcc" in str(info.value) and "\n" not in str(info.value)
    assert count["n"] == 1

    nerfacc_cuda.nerfacc_cuda_status.cache_clear()
    count = _counting_importer(monkeypatch, object())  # a loaded _C
    assert nerfacc_cuda.nerfacc_cuda_available() and nerfacc_cuda.nerfacc_cuda_available()
    assert renderer_mod.resolve_estimator("auto", cuda) == "occgrid" and count["n"] == 1


def test_stale_build_lock_is_reported_by_name_instead_of_hanging(fresh_probe, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "ext"))
    monkeypatch.setattr(nerfacc_cuda, "jit_build_possible", lambda: True)
    monkeypatch.setattr(nerfacc_cuda, "LOCK_WAIT_S", 0.3)
    lock = tmp_path / "ext" / "nerfacc_cuda" / "lock"
    assert nerfacc_cuda.build_lock_path() == lock  # torch's own FileBaton path for nerfacc's build
    lock.write_text("")  # left behind by a killed build
    count = _counting_importer(monkeypatch, object())
    start = time.monotonic()
    ok, why = nerfacc_cuda.nerfacc_cuda_status()
    assert not ok and str(lock.parent) in why and "\n" not in why and count["n"] == 0
    assert time.monotonic() - start < 5
    with pytest.raises(UsageError, match="build lock") as info:
        renderer_mod.resolve_estimator("occgrid", torch.device("cuda"))
    assert str(lock.parent) in str(info.value)
    assert renderer_mod.resolve_estimator("auto", torch.device("cuda")) == "dense" and count["n"] == 0

    # A lock that goes away within the wait (a concurrent build finishing) lets the import go ahead.
    timer = threading.Timer(0.2, lock.unlink)
    timer.start()
    try:
        assert nerfacc_cuda.probe(wait_s=10.0) == (True, "") and count["n"] == 1
    finally:
        timer.join()
