"""SDS pieces: timestep range and anneal, w(t), NaN guard and clip, the loss and its exact gradient."""

from __future__ import annotations

import torch

from dreamperp.guidance.sds import (
    sample_timesteps,
    sds_grad,
    sds_loss,
    sds_weight,
    timestep_bounds,
)


def test_timestep_bounds_and_anneal() -> None:
    assert timestep_bounds(0.02, 0.98, 1000) == (20, 980)
    assert timestep_bounds(0.29, 0.58, 100) == (29, 58)  # 0.58·100 is 57.999… in floats
    # t_max 0.98 → 0.5 over 100 steps
    assert timestep_bounds(0.02, 0.98, 1000, step=0, t_max_final=0.5, t_anneal_steps=100) == (20, 980)
    assert timestep_bounds(0.02, 0.98, 1000, step=50, t_max_final=0.5, t_anneal_steps=100) == (20, 740)
    assert timestep_bounds(0.02, 0.98, 1000, step=100, t_max_final=0.5, t_anneal_steps=100) == (20, 500)
    assert timestep_bounds(0.02, 0.98, 1000, step=10_000, t_max_final=0.5, t_anneal_steps=100) == (20, 500)
    assert timestep_bounds(0.02, 0.98, 1000, step=50, t_max_final=0.5, t_anneal_steps=0) == (20, 980)
    assert timestep_bounds(0.0, 1.0, 1000) == (0, 999)


def test_sample_timesteps_inclusive_uniform() -> None:
    g = torch.Generator().manual_seed(0)
    t = sample_timesteps(20000, 20, 23, "cpu", generator=g)
    assert t.dtype == torch.long and t.shape == (20000,)
    assert set(t.tolist()) == {20, 21, 22, 23}
    counts = torch.bincount(t - 20).float() / 20000
    assert (counts - 0.25).abs().max() < 0.02
    # default: torch's global RNG, reproducible by seeding it
    torch.manual_seed(5)
    a = sample_timesteps(8, 20, 980, "cpu")
    torch.manual_seed(5)
    assert torch.equal(a, sample_timesteps(8, 20, 980, "cpu"))


def test_weights() -> None:
    alphas = torch.tensor([0.9, 0.5, 0.25])
    t = torch.tensor([2, 0, 1])
    assert torch.allclose(sds_weight(alphas, t, "sds"), torch.tensor([0.75, 0.1, 0.5]))
    assert torch.equal(sds_weight(alphas, t, "uniform"), torch.ones(3))


def test_grad_nan_guard_and_clip() -> None:
    eps_hat = torch.tensor([[1.0, float("nan")], [3.0, 0.5]]).view(2, 1, 1, 2)
    noise = torch.tensor([[0.0, 0.0], [-1.0, float("inf")]]).view(2, 1, 1, 2)
    w = torch.tensor([0.5, 2.0])
    g = sds_grad(eps_hat, noise, w)
    assert torch.equal(g, torch.tensor([[0.5, 0.0], [8.0, 0.0]]).view(2, 1, 1, 2))
    g = sds_grad(eps_hat, noise, w, clip=1.0)
    assert torch.equal(g, torch.tensor([[0.5, 0.0], [1.0, 0.0]]).view(2, 1, 1, 2))


def test_loss_value_and_exact_gradient() -> None:
    g = torch.Generator().manual_seed(0)
    z = (torch.randn(3, 4, 8, 8, generator=g) * 10).requires_grad_(True)
    eps_hat, noise = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g)
    w = torch.tensor([0.1, 0.5, 0.9])
    grad = sds_grad(eps_hat, noise, w)
    loss = sds_loss(z, grad)
    loss.backward()
    expected = w.view(3, 1, 1, 1) * (eps_hat - noise) / 3
    assert torch.equal(z.grad, expected)
    # the value is 0.5·‖z − sg(z − grad)‖² / B
    ref = 0.5 * (z.detach().double() - (z.detach().double() - grad.double())).square().sum() / 3
    assert torch.allclose(loss.double(), ref, rtol=1e-5)
    # a loss weight scales the gradient
    z.grad = None
    (2.0 * sds_loss(z, grad)).backward()
    assert torch.allclose(z.grad, 2 * expected)
