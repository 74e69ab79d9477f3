"""The tiny offline Stable Diffusion pipeline and model loading (no network, CPU only)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from dreamperp.cli import main
from dreamperp.errors import UsageError
from dreamperp.models import tiny
from dreamperp.models.loading import SDComponents, load_components, resolve_model
from dreamperp.models.tiny import build_tiny_pipeline, tiny_model_path


def _digest(folder: Path) -> dict:
    return {str(f.relative_to(folder)): hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(folder.rglob("*")) if f.is_file()}


def test_tiny_model_is_deterministic_and_small(tiny_model_dir: Path, tmp_path: Path) -> None:
    again = build_tiny_pipeline(tmp_path / "again", seed=0)
    other = build_tiny_pipeline(tmp_path / "other", seed=1)
    ref = _digest(tiny_model_dir)
    assert ref == _digest(again)
    changed = {k for k, v in _digest(other).items() if ref[k] != v}
    assert {"unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors"} <= changed
    total = sum(f.stat().st_size for f in tiny_model_dir.rglob("*") if f.is_file())
    assert total < 5 * 2**20
    for sub in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert (tiny_model_dir / sub).is_dir()
    assert not list(tiny_model_dir.rglob("*.bin"))


def test_tiny_tokenizer_is_byte_level_bpe(tiny_model_dir: Path) -> None:
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(tiny_model_dir / "tokenizer")
    assert tok.model_max_length == 77
    ids = tok("a DSLR photo of a corgi, front view").input_ids
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id == len(tok) - 1
    assert len(ids) <= 16  # merges make common words single tokens
    # Any byte sequence is representable (byte-level alphabet), nothing maps to unknown.
    odd = tok("zebra ünïcødé 😀 #42").input_ids
    assert tok.unk_token_id not in odd[1:-1]
    assert tok.decode(odd, skip_special_tokens=True).replace(" ", "") == "zebraünïcødé😀#42"


def test_pipeline_round_trip_offline(tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from diffusers import SemanticStableDiffusionPipeline, StableDiffusionPipeline

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pipe = StableDiffusionPipeline.from_pretrained(tiny_model_dir)
    pipe.set_progress_bar_config(disable=True)

    def run(prompt: str, seed: int = 0) -> np.ndarray:
        g = torch.Generator().manual_seed(seed)
        out = pipe(prompt, negative_prompt="blurry, low quality", num_inference_steps=3, generator=g, output_type="np")
        return out.images

    a, b, c = run("a photo of a corgi"), run("a photo of a corgi"), run("a red car, back view")
    assert a.shape == (1, 64, 64, 3)
    assert np.isfinite(a).all() and a.std() > 0.01
    assert np.array_equal(a, b)
    assert np.abs(a - c).max() > 1e-3
    assert np.abs(a - run("a photo of a corgi", seed=1)).max() > 1e-3

    sega = SemanticStableDiffusionPipeline.from_pretrained(tiny_model_dir)
    assert sega.unet.config.sample_size * sega.vae_scale_factor == 64


def test_load_components_tiny_builds_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    builds = []
    real_build = tiny.build_tiny_pipeline
    monkeypatch.setattr(tiny, "build_tiny_pipeline", lambda p, seed=0, layout="sd": builds.append(p) or real_build(p, seed, layout))

    comp = load_components("tiny", "cpu", torch.float32)
    assert isinstance(comp, SDComponents)
    assert comp.path.parent == tmp_path / "cache" / "dreamperp"
    assert comp.resolution == 64 and comp.vae_scale_factor == 8 and comp.latent_channels == 4
    assert comp.scheduler.config.beta_schedule == "scaled_linear" and comp.scheduler.config.num_train_timesteps == 1000
    for m in (comp.unet, comp.vae, comp.text_encoder):
        assert not m.training and not any(p.requires_grad for p in m.parameters())
    again = load_components("tiny", "cpu", "auto")
    assert len(builds) == 1 and again.path == comp.path
    assert [p.name for p in comp.path.parent.iterdir()] == [comp.path.name]  # no temp folders left

    # Noise predictions depend on the prompt (guidance tests rely on it) and the VAE passes gradients.
    tok = comp.tokenizer
    ids = tok(["", "a corgi", "a red car"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        emb = comp.text_encoder(ids)[0]
        z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0)).expand(3, -1, -1, -1)
        eps = comp.unet(z, torch.tensor([500] * 3), encoder_hidden_states=emb).sample
    assert eps.shape == (3, 4, 8, 8) and eps.abs().mean() > 0.01
    assert (eps[0] - eps[1]).abs().max() > 1e-3 and (eps[1] - eps[2]).abs().max() > 1e-3
    img = torch.rand(1, 3, 64, 64, requires_grad=True)
    comp.vae.encode(img * 2 - 1).latent_dist.mean.sum().backward()
    assert img.grad is not None and img.grad.abs().sum() > 0


def test_local_folder_resolves(tiny_model_dir: Path) -> None:
    assert resolve_model(str(tiny_model_dir)) == str(tiny_model_dir)


@pytest.mark.parametrize(
    "make, expect",
    [
        (lambda d: d / "missing", "does not exist"),
        (lambda d: d, "no model_index.json"),
        (
            lambda d: (d / "model_index.json").write_text("{}") and d,
            "neither a Stable Diffusion nor a pixel-space (DeepFloyd IF) folder: missing subfolder(s) unet, text_encoder, tokenizer, scheduler",
        ),
        (lambda d: (d / "model_index.json").write_text("{}") and (d / "vae").mkdir() or d, "has vae/ but is missing unet, text_encoder, tokenizer, scheduler"),
        (
            lambda d: (d / "model_index.json").write_text("{}") and [(d / s).mkdir() for s in ("unet", "tokenizer")] and d,
            "missing subfolder(s) text_encoder, scheduler",
        ),
    ],
    ids=["missing", "no-index", "no-subfolders", "sd-without-unet", "pixel-incomplete"],
)
def test_bad_folders_are_usage_errors(tmp_path: Path, make, expect: str) -> None:
    folder = make(tmp_path)
    with pytest.raises(UsageError) as info:
        load_components(str(folder), "cpu", "float32")
    msg = str(info.value)
    assert "\n" not in msg and expect in msg and str(folder) in msg


def test_hub_id_offline_not_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(UsageError) as info:
        load_components("dreamperp-tests/no-such-model", "cpu", "float32")
    msg = str(info.value)
    assert "\n" not in msg
    assert "'dreamperp-tests/no-such-model'" in msg and "weights are needed" in msg and "guidance.model" in msg


def test_tiny_model_cli(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "m"
    assert main(["tiny-model", str(out), "--seed", "2"]) == 0
    assert str(out) in capsys.readouterr().out
    assert (out / "model_index.json").is_file() and (out / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    (out / "unet" / "stale.txt").write_text("from an older version")
    assert main(["tiny-model", str(out)]) == 0  # a previous tiny model is replaced wholesale
    assert not (out / "unet" / "stale.txt").exists() and (out / "model_index.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no temp or backup folder left beside it
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("keep me")
    assert main(["tiny-model", str(busy)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert (busy / "notes.txt").read_text() == "keep me" and not (busy / "unet").exists()


def test_tiny_model_path_respects_xdg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    path = tiny_model_path(seed=0)
    assert path.parent == tmp_path / "dreamperp" and f"v{tiny.TINY_FORMAT_VERSION}" in path.name
    stamp = (path / "unet" / "diffusion_pytorch_model.safetensors").stat().st_mtime_ns
    assert tiny_model_path(seed=0) == path
    assert (path / "unet" / "diffusion_pytorch_model.safetensors").stat().st_mtime_ns == stamp
