"""The backend contract (docs/design.md §9): every model family passes the same conformance test
(tiny SD, tiny DeepFloyd IF layout, tiny pixel/toy layout, and the shipped toy prior when present),
plus what is specific to each: IF loading, learned variance, v-prediction, the toy assets."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from dreamperp.cli import main
from dreamperp.config import GuidanceConfig, load_config
from dreamperp.errors import UsageError
from dreamperp.guidance.backends import DiffusionBackend, LatentDiffusionBackend, PixelDiffusionBackend, make_backend
from dreamperp.guidance.prior import load_prior
from dreamperp.models import loading
from dreamperp.models.loading import load_components

ROOT = Path(__file__).resolve().parents[1]
TOY_PRIOR = loading.toy_prior_path()
FAMILIES = ["sd", "if", "pixel", "toy"]


@pytest.fixture(scope="module", params=FAMILIES)
def family(request: pytest.FixtureRequest, tiny_model_dir: Path, tiny_if_dir: Path, tiny_pixel_dir: Path) -> tuple[str, Any]:
    name = request.param
    if name == "toy" and not (TOY_PRIOR / "model_index.json").is_file():
        pytest.skip("dreamperp/toy/weights/toy-prior is not built (python tools/train_toy_prior.py)")
    folder = {"sd": tiny_model_dir, "if": tiny_if_dir, "pixel": tiny_pixel_dir, "toy": TOY_PRIOR}[name]
    return name, load_components(str(folder), "cpu", "float32")


def test_backend_conformance(family: tuple[str, Any]) -> None:
    name, comp = family
    backend = make_backend(GuidanceConfig(model=str(comp.path)), "cpu", comp)
    assert isinstance(backend, DiffusionBackend)
    assert isinstance(backend, LatentDiffusionBackend if name == "sd" else PixelDiffusionBackend)
    res = backend.resolution
    C, h, w = backend.sample_shape(res, res)
    assert backend.unet.config.in_channels == C and backend.unet.config.sample_size == h == w

    # text: [N, L, D], in the backend's dtype, different prompts give different conditions
    emb = backend.encode_text(["a red bird", "a blue cat, back view", ""])
    assert emb.dim() == 3 and emb.shape[0] == 3 and emb.dtype == backend.dtype
    assert (emb[0] - emb[1]).abs().max() > 1e-4

    # alphas_cumprod: [T] float32, decreasing in (0, 1]
    a = backend.alphas_cumprod
    assert a.shape == (backend.num_train_timesteps,) and a.dtype == torch.float32
    assert bool((a[1:] <= a[:-1]).all()) and 0 < float(a[-1]) < float(a[0]) <= 1

    # image -> model input, differentiable; decode goes back to images in [0, 1] at the model's size
    images = torch.rand(2, 3, 24, 24, requires_grad=True)
    x0 = backend.encode_images(images)
    assert x0.shape == (2, C, h, w)
    x0.square().sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    with torch.no_grad():
        out = backend.decode(x0.detach())
    assert out.shape == (2, 3, res, res) and 0 <= float(out.min()) and float(out.max()) <= 1
    if name != "sd":  # pixel space: decode undoes encode exactly at the model's size
        at_size = torch.rand(1, 3, res, res)
        assert torch.allclose(backend.decode(backend.encode_images(at_size)), at_size, atol=1e-6)

    # model output -> epsilon: the model input's shape whatever the UNet emits
    t = torch.tensor([10, 700])
    with torch.no_grad():
        raw = backend.unet(x0.detach(), t, encoder_hidden_states=emb[:2]).sample
    eps = backend.to_epsilon(raw, x0.detach(), t)
    assert eps.shape == x0.shape and torch.isfinite(eps).all()
    assert backend.sampling_scheduler_overrides()["prediction_type"] == "epsilon"

    # the one guided score runs SDS through it: gradients reach the render, never the model
    score = load_prior(GuidanceConfig(model=str(comp.path), scale=7.5), "a red bird", "", "cpu", components=comp)
    images = torch.rand(2, 3, 24, 24, requires_grad=True)
    loss, info = score.sds(images, torch.tensor([0.0, 150.0]), torch.tensor([10.0, 20.0]), step=0)
    loss.backward()
    assert torch.isfinite(loss) and images.grad is not None and images.grad.abs().sum() > 0
    assert all(p.grad is None for p in backend.unet.parameters())


def test_learned_variance_takes_the_first_half(tiny_if_dir: Path) -> None:
    comp = load_components(str(tiny_if_dir), "cpu", "float32")
    assert comp.layout == "pixel" and comp.vae is None and comp.vae_scale_factor == 1
    assert type(comp.text_encoder).__name__ == "T5EncoderModel" and "T5" in type(comp.tokenizer).__name__
    backend = make_backend(GuidanceConfig(model=str(tiny_if_dir)), "cpu", comp)
    assert backend.learned_variance and backend.unet.config.out_channels == 6
    out = torch.randn(2, 6, 16, 16)
    assert torch.equal(backend.to_epsilon(out, torch.randn(2, 3, 16, 16), torch.tensor([1, 2])), out[:, :3])
    assert backend.sampling_scheduler_overrides() == {"prediction_type": "epsilon", "variance_type": "fixed_small"}
    # T5 prompts are padded to IF's 77 tokens and masked
    assert backend.encode_text(["a red bird"]).shape == (1, 77, comp.text_encoder.config.d_model)


def test_v_prediction_is_converted(tiny_pixel_dir: Path) -> None:
    from diffusers import DDPMScheduler

    comp = load_components(str(tiny_pixel_dir), "cpu", "float64")
    comp.scheduler = DDPMScheduler.from_config(comp.scheduler.config, prediction_type="v_prediction")
    backend = make_backend(GuidanceConfig(model=str(tiny_pixel_dir)), "cpu", comp)
    g = torch.Generator().manual_seed(0)
    v, x_t = torch.randn(2, 3, 16, 16, generator=g, dtype=torch.float64), torch.randn(2, 3, 16, 16, generator=g, dtype=torch.float64)
    t = torch.tensor([100, 900])
    a = backend.alphas_cumprod[t].double().view(2, 1, 1, 1)
    assert torch.allclose(backend.to_epsilon(v, x_t, t), a.sqrt() * v + (1 - a).sqrt() * x_t, atol=1e-7, rtol=0)
    # with x_t = √ā x0 + √(1−ā) ε and v = √ā ε − √(1−ā) x0 the conversion gives back ε
    x0, eps = torch.randn(2, 3, 16, 16, generator=g, dtype=torch.float64), torch.randn(2, 3, 16, 16, generator=g, dtype=torch.float64)
    ad = backend.scheduler.alphas_cumprod[t].double().view(2, 1, 1, 1)
    back = backend.to_epsilon(ad.sqrt() * eps - (1 - ad).sqrt() * x0, ad.sqrt() * x0 + (1 - ad).sqrt() * eps, t)
    assert torch.allclose(back, eps, atol=1e-6)


def test_if_layout_samples_and_trains(tiny_if_dir: Path, tmp_path: Path) -> None:
    """`dreamperp sample` and a training step run through the pixel backend (no VAE anywhere)."""
    out = tmp_path / "s"
    args = ["sample", "sample", f"guidance.model={tiny_if_dir}", "device=cpu", "steps=2", "num_images=2", "view=back"]
    assert main([*args, "--out", str(out)]) == 0
    from PIL import Image

    with Image.open(out / "0000.png") as im:
        assert im.size == (16, 16)  # pixel-space models sample at their own size
    from dreamperp.train.trainer import Trainer

    cfg = load_config(
        str(ROOT / "dreamperp" / "configs" / "tiny.yaml"),
        [f"guidance.model={tiny_if_dir}", f"output_dir={tmp_path}", "data.width=16", "data.height=16", "render.num_samples=8",
         "scene.levels=4", "scene.log2_table_size=12", "scene.max_resolution=64"],
    )
    trainer = Trainer(cfg)
    assert isinstance(trainer.prior.backend, PixelDiffusionBackend)
    metrics = trainer.train_step()
    assert not metrics["skipped"] and torch.isfinite(metrics["loss"]) and float(metrics["grad_norm"]) > 0


def test_named_tiny_models_and_cli_layouts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert load_components("tiny-pixel", "cpu", "float32").layout == "pixel"
    assert main(["tiny-model", str(tmp_path / "if"), "--layout", "if"]) == 0
    index = json.loads((tmp_path / "if" / "model_index.json").read_text())
    assert index["text_encoder"] == ["transformers", "T5EncoderModel"] and "vae" not in index
    assert not (tmp_path / "if" / "vae").exists()
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main(["tiny-model", str(tmp_path / "x"), "--layout", "nope"])
    assert info.value.code == 2 and "--layout" in capsys.readouterr().err and not (tmp_path / "x").exists()


def test_unsupported_classes_and_encoder_are_usage_errors(tiny_pixel_dir: Path, tmp_path: Path) -> None:
    import shutil

    folder = tmp_path / "odd"
    shutil.copytree(tiny_pixel_dir, folder)
    index = json.loads((folder / "model_index.json").read_text())
    index["text_encoder"] = ["transformers", "BertModel"]
    (folder / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(UsageError, match="text_encoder class 'BertModel'.*CLIPTextModel, T5EncoderModel"):
        load_components(str(folder), "cpu", "float32")
    comp = load_components(str(tiny_pixel_dir), "cpu", "float32")
    with pytest.raises(UsageError, match="guidance.encoder=tiny needs a latent"):
        make_backend(GuidanceConfig(model=str(tiny_pixel_dir), encoder="tiny"), "cpu", comp)


def test_toy_model_resolves_to_the_assets(tiny_pixel_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setattr(loading, "toy_prior_path", lambda: tmp_path / "assets" / "toy-prior")
    with pytest.raises(UsageError) as info:
        load_components("toy", "cpu", "float32")
    msg = str(info.value)
    assert "\n" not in msg and "python tools/train_toy_prior.py" in msg and "toy-prior" in msg
    # the same through the CLI: one line, exit 2, nothing written
    code = main(["sample", str(ROOT / "dreamperp" / "configs" / "sample.yaml"), "guidance.model=toy", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "train_toy_prior.py" in err and not (tmp_path / "o").exists()
    monkeypatch.setattr(loading, "toy_prior_path", lambda: tiny_pixel_dir)
    comp = load_components("toy", "cpu", "float32")
    assert comp.layout == "pixel" and comp.path == tiny_pixel_dir and comp.model == "toy"
