"""The guided score on the tiny SD backend: batch pairing, view conditioning, SDS, SEGA state."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from dreamperp.config import GuidanceConfig, PerpNegConfig, SegaConcept, SegaConfig
from dreamperp.errors import ConfigError
from dreamperp.guidance.perpneg import perpneg_combine
from dreamperp.guidance.prior import load_prior
from dreamperp.guidance.score import GuidedScore
from dreamperp.guidance.views import perpneg_weights, view_prompts


@pytest.fixture(scope="module")
def components(tiny_model_dir: Path) -> Any:
    from dreamperp.models.loading import load_components

    return load_components(str(tiny_model_dir), "cpu", "float32")


def make_prior(components: Any, **kw: Any) -> GuidedScore:
    perp = kw.pop("perp_neg", PerpNegConfig())
    sega = kw.pop("sega", SegaConfig())
    cfg = GuidanceConfig(model="tiny", perp_neg=perp, sega=sega, **kw)
    return load_prior(cfg, "a corgi", "", "cpu", components=components)


class Recorder(torch.nn.Module):
    """UNet stand-in that records its inputs and answers with the real UNet."""

    def __init__(self, unet: Any) -> None:
        super().__init__()
        self.unet = unet
        self.calls: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def forward(self, x: torch.Tensor, t: torch.Tensor, encoder_hidden_states: torch.Tensor) -> Any:
        self.calls.append((x.clone(), t.clone(), encoder_hidden_states.clone()))
        return self.unet(x, t, encoder_hidden_states=encoder_hidden_states)


def test_basics_and_cached_view_embeddings(components: Any) -> None:
    prior = make_prior(components)
    assert prior.resolution == 64 and prior.dtype == torch.float32
    assert prior.emb_views.shape[0] == 4
    ref = prior.backend.encode_text(view_prompts("a corgi")[2:3])
    assert torch.equal(prior.emb_views[2:3], ref)
    # the four view prompts are different conditions
    assert (prior.emb_views[0] - prior.emb_views[2]).abs().max() > 1e-3
    with pytest.raises(ConfigError):
        load_prior(GuidanceConfig(), "  ", "", "cpu", components=components)


def test_batch_rows_pair_with_their_own_sample(components: Any) -> None:
    sega = SegaConfig(concepts=[SegaConcept(prompt="sunglasses", warmup=0)])
    prior = make_prior(components, sega=sega)
    rec = Recorder(prior.backend.unet)
    prior.unet_forward = rec
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2, 4, 8, 8, generator=g)
    t = torch.tensor([100, 700])
    pos_mix, neg_w = perpneg_weights(torch.tensor([0.0, 180.0]), torch.zeros(2))
    out, mom = prior.guided_prediction(z, t, pos_mix, neg_w, step=0)
    assert len(rec.calls) == 1  # ONE UNet call
    x, tt, emb = rec.calls[0]
    n = 2 + 2 + 1  # uncond, positive, front and side negatives, one concept
    assert x.shape[0] == tt.shape[0] == emb.shape[0] == n * 2
    for k in range(n):
        for b in range(2):
            assert torch.equal(x[2 * k + b], z[b]) and tt[2 * k + b] == t[b]
    uncond, views, concept = prior.emb_uncond[0], prior.emb_views, prior.emb_concepts[0]
    expected = [uncond, uncond, views[0], views[2], views[0], views[0], views[1], views[1], concept, concept]
    for row, e in enumerate(expected):
        assert torch.allclose(emb[row], e), row
    assert out.shape == z.shape and mom is not None and mom.shape == z.shape


@pytest.fixture(scope="module")
def components64(tiny_model_dir: Path) -> Any:
    """The tiny model in float64: batched and single calls then agree to ~1e-12 on any CPU, while
    fp32 GEMMs round differently per batch shape and CPU (~1e-4 here), which would hide nothing."""
    from dreamperp.models.loading import load_components

    return load_components(str(tiny_model_dir), "cpu", "float64")


def test_batch_of_two_equals_two_single_calls(components64: Any) -> None:
    sega = SegaConfig(concepts=[SegaConcept(prompt="a hat", warmup=0, scale=50.0, threshold=0.5)], momentum_scale=0.2)
    tol = 1e-9  # float64 rounding through a few hundred ops of magnitude <= ~1e2
    for schedule in ("threestudio", "stable-dreamfusion"):
        prior = make_prior(components64, sega=sega, perp_neg=PerpNegConfig(schedule=schedule))
        assert prior.dtype == torch.float64
        g = torch.Generator().manual_seed(1)
        z = torch.randn(2, 4, 8, 8, generator=g, dtype=torch.float64)
        t = torch.tensor([50, 900])
        az, el = torch.tensor([20.0, 150.0]), torch.tensor([10.0, 30.0])
        pos_mix, neg_w = prior.view_conditioning(az, el)
        both, _ = prior.guided_prediction(z, t, pos_mix, neg_w, step=0)
        singles = []
        for b in range(2):
            pm, nw = prior.view_conditioning(az[b : b + 1], el[b : b + 1])
            one, _ = prior.guided_prediction(z[b : b + 1], t[b : b + 1], pm, nw, step=0)
            singles.append(one)
            assert (both[b : b + 1] - one).abs().max() < tol, (schedule, b)
        # The bug this guards against: rows paired with another sample's latent. Such a batch must
        # differ from the single calls by far more than the tolerance, so the test can fail for it.
        swapped, _ = prior.guided_prediction(z.flip(0), t, pos_mix, neg_w, step=0)
        assert min((swapped[b : b + 1] - singles[b]).abs().max() for b in range(2)) > 1e3 * tol
        assert (both[0] - both[1]).abs().max() > 1e-2  # and the two samples really are different computations


def test_guidance_matches_manual_combination(components64: Any) -> None:
    # float64: the one block-batched call and the four separate calls below have different GEMM
    # shapes, and at scale 30 their fp32 rounding differences (~1e-4 on some CPUs) would be x30.
    prior = make_prior(components64, scale=30.0)
    g = torch.Generator().manual_seed(2)
    z = torch.randn(2, 4, 8, 8, generator=g, dtype=torch.float64)
    t = torch.tensor([300, 600])
    pos_mix, neg_w = perpneg_weights(torch.tensor([45.0, 135.0]), None)
    out, _ = prior.guided_prediction(z, t, pos_mix, neg_w, step=0)

    def unet(emb: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return prior.backend.unet(z, t, encoder_hidden_states=emb).sample

    e_u = unet(prior.emb_uncond.expand(2, -1, -1))
    e_p = unet(torch.einsum("bv,vld->bld", pos_mix.to(prior.emb_views.dtype), prior.emb_views))
    e_f = unet(prior.emb_views[0:1].expand(2, -1, -1))
    e_s = unet(prior.emb_views[1:2].expand(2, -1, -1))
    ref = perpneg_combine(e_u, e_p, torch.stack([e_f, e_s], 1), neg_w[:, :2].double(), 30.0)
    assert torch.allclose(out, ref, atol=1e-9)


def test_zero_weight_negatives_are_dropped(components: Any) -> None:
    prior = make_prior(components, perp_neg=PerpNegConfig(schedule="stable-dreamfusion"))
    rec = Recorder(prior.backend.unet)
    prior.unet_forward = rec
    z = torch.randn(1, 4, 8, 8)
    pos_mix, neg_w = prior.view_conditioning(torch.tensor([0.0]), torch.tensor([0.0]))  # front: front weight 0
    prior.guided_prediction(z, torch.tensor([500]), pos_mix, neg_w, step=0)
    x, _, emb = rec.calls[-1]
    assert x.shape[0] == 3  # uncond, positive, side negative
    assert torch.equal(emb[2], prior.emb_views[1])


def test_plain_view_prompting_and_plain_prompt(components: Any) -> None:
    prior = make_prior(components, perp_neg=PerpNegConfig(enabled=False))
    rec = Recorder(prior.backend.unet)
    prior.unet_forward = rec
    az, el = torch.tensor([170.0, 10.0]), torch.tensor([0.0, 75.0])
    pos_mix, neg_w = prior.view_conditioning(az, el)
    prior.guided_prediction(torch.randn(2, 4, 8, 8), torch.tensor([10, 20]), pos_mix, neg_w, step=0)
    _, _, emb = rec.calls[-1]
    assert emb.shape[0] == 4  # uncond and positive only: plain CFG
    assert torch.equal(emb[2], prior.emb_views[2]) and torch.equal(emb[3], prior.emb_views[3])  # back, overhead
    prior = make_prior(components, perp_neg=PerpNegConfig(enabled=False), view_dependent=False)
    assert prior.view_conditioning(az, el) == (None, None)


def test_sds_gradient_is_exact(components: Any) -> None:
    prior = make_prior(components, scale=20.0, weighting="sds")
    rec = Recorder(prior.backend.unet)
    prior.unet_forward = rec
    torch.manual_seed(0)
    z = torch.randn(2, 4, 8, 8, requires_grad=True)
    loss, info = prior.sds_latents(z, torch.tensor([30.0, -120.0]), torch.tensor([5.0, 20.0]), step=0, return_terms=True)
    loss.backward()
    w, t = info["w"], info["t"]
    assert t.shape == (2,) and ((t >= 20) & (t <= 980)).all()
    a = prior.backend.alphas_cumprod[t].view(2, 1, 1, 1)
    assert torch.allclose(w, 1 - a.flatten())
    expected = w.view(2, 1, 1, 1) * (info["eps_hat"] - info["noise"]) / 2
    assert torch.equal(z.grad, expected)
    assert torch.allclose(loss, 0.5 * (expected * 2).square().sum() / 2)
    assert torch.allclose(info["grad_norm"], (expected * 2).norm())
    # the UNet saw the noised latents of each sample at its own timestep
    x, tt, _ = rec.calls[-1]
    noisy = a.sqrt() * z.detach() + (1 - a).sqrt() * info["noise"]
    assert torch.allclose(x[:2], noisy, atol=1e-6) and torch.allclose(x[2:4], noisy, atol=1e-6)
    assert torch.equal(tt[:2], t)


def test_sds_from_images_flows_to_the_render(components: Any) -> None:
    prior = make_prior(components, t_anneal_steps=10, t_max=0.98, t_max_final=0.5)
    images = torch.rand(2, 3, 32, 32, requires_grad=True)
    loss, info = prior.sds(images, torch.tensor([0.0, 90.0]), torch.tensor([0.0, 0.0]), step=10)
    assert set(info) >= {"t", "grad_norm", "w", "t_max"}
    assert float(info["t_max"]) == pytest.approx(0.5) and (info["t"] <= 500).all()
    loss.backward()
    assert images.grad is not None and torch.isfinite(images.grad).all() and images.grad.abs().sum() > 0
    assert all(p.grad is None for p in prior.backend.vae.parameters())
    assert all(p.grad is None for p in prior.backend.unet.parameters())


def test_sega_momentum_state_roundtrip(components: Any) -> None:
    sega = SegaConfig(concepts=[SegaConcept(prompt="a hat", warmup=0, scale=20.0)], momentum_scale=0.5, momentum_beta=0.4)
    prior = make_prior(components, sega=sega)
    assert prior.state_dict() == {"sega_momentum": None}
    z = torch.randn(2, 4, 8, 8)
    az, el = torch.tensor([0.0, 90.0]), torch.tensor([0.0, 0.0])
    t, noise = torch.tensor([400, 500]), torch.randn(2, 4, 8, 8)
    prior.sds_latents(z, az, el, step=0, t=t, noise=noise)
    state = prior.state_dict()
    assert state["sega_momentum"].shape == (2, 4, 8, 8) and state["sega_momentum"].abs().sum() > 0

    resumed = make_prior(components, sega=sega)
    resumed.load_state_dict(state)
    a, _ = prior.sds_latents(z, az, el, step=1, t=t, noise=noise)
    b, _ = resumed.sds_latents(z, az, el, step=1, t=t, noise=noise)
    fresh = make_prior(components, sega=sega)
    c, _ = fresh.sds_latents(z, az, el, step=1, t=t, noise=noise)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)  # the momentum matters


def test_call_takes_and_returns_the_state(components: Any) -> None:
    """``__call__`` is the stateful ``sds`` with its state passed in and out explicitly: same losses,
    same momentum, and nothing stashed on the guidance."""
    sega = SegaConfig(concepts=[SegaConcept(prompt="a hat", warmup=0, scale=20.0)], momentum_scale=0.5, momentum_beta=0.4)
    explicit, stateful = make_prior(components, sega=sega), make_prior(components, sega=sega)
    images = torch.rand(2, 3, 64, 64)
    az, el = torch.tensor([0.0, 90.0]), torch.tensor([0.0, 0.0])
    state = None
    for step in range(2):
        torch.manual_seed(step)
        out = explicit(images, az, el, step=step, state=state)
        torch.manual_seed(step)
        loss, info = stateful.sds(images, az, el, step)
        assert torch.equal(out["loss_sds"], loss) and torch.equal(out["t"], info["t"])
        state = out["state"]
        assert torch.equal(state["sega_momentum"], stateful.sega_momentum)
    assert explicit.state_dict() == {"sega_momentum": None}


def test_finite_state_drops_only_non_finite_entries() -> None:
    from dreamperp.guidance.score import finite_state

    clean = {"sega_momentum": torch.ones(2)}
    assert finite_state(clean) is clean and finite_state({"sega_momentum": None}) == {"sega_momentum": None}
    assert finite_state({"sega_momentum": torch.tensor([1.0, float("inf")])}) == {"sega_momentum": None}


def test_tiny_encoder_option(components: Any, tmp_path: Path) -> None:
    from diffusers import AutoencoderTiny

    with torch.random.fork_rng():
        torch.manual_seed(0)
        taesd = AutoencoderTiny(
            encoder_block_out_channels=(8,) * 4, decoder_block_out_channels=(8,) * 4, num_encoder_blocks=(1,) * 4, num_decoder_blocks=(1,) * 4
        )
    taesd.save_pretrained(tmp_path / "taesd")
    prior = make_prior(components, encoder="tiny", tiny_encoder_model=str(tmp_path / "taesd"))
    images = torch.rand(1, 3, 64, 64, requires_grad=True)
    assert prior.backend.encode_images(images).shape == (1, 4, 8, 8)
    loss, _ = prior.sds(images, torch.tensor([0.0]), None, step=0)
    loss.backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    from dreamperp.errors import UsageError

    with pytest.raises(UsageError, match="tiny_encoder_model"):
        make_prior(components, encoder="tiny", tiny_encoder_model=str(tmp_path / "missing"))
