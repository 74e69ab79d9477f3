"""Shared test fixtures. Tests never touch the network: the hub is forced offline here."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random SD pipeline folder (diffusers layout, 64x64 images), built once per session."""
    from dreamperp.models.tiny import build_tiny_pipeline

    return build_tiny_pipeline(tmp_path_factory.mktemp("tiny-sd") / "model", seed=0)


@pytest.fixture(scope="session")
def tiny_if_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random DeepFloyd IF stage I layout (pixel space, no vae/, T5, learned variance; 16x16)."""
    from dreamperp.models.tiny import build_tiny_pipeline

    return build_tiny_pipeline(tmp_path_factory.mktemp("tiny-if") / "model", seed=0, layout="if")


@pytest.fixture(scope="session")
def tiny_pixel_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random pixel-space pipeline in the toy prior's layout (no vae/, CLIP, epsilon UNet; 16x16)."""
    from dreamperp.models.tiny import build_tiny_pipeline

    return build_tiny_pipeline(tmp_path_factory.mktemp("tiny-pixel") / "model", seed=0, layout="pixel")


@pytest.fixture
def hf_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hugging Face home for this test, the hub offline (as for every test)."""
    home = tmp_path / "hf"
    (home / "hub").mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return home
