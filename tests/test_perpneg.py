"""Perp-Neg math: the perpendicular projection and the guidance combine (docs/design.md §3)."""

from __future__ import annotations

import torch

from dreamperp.guidance.perpneg import perpendicular, perpneg_combine, perpneg_guidance


def _flat_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a.flatten(1) * b.flatten(1)).sum(1)


def test_perpendicular_hand_numbers() -> None:
    x = torch.tensor([[3.0, 4.0], [1.0, 1.0]])
    y = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    # (3,4) minus its part along (1,0) is (0,4); (1,1) minus its part along (0,2) is (1,0).
    assert torch.allclose(perpendicular(x, y), torch.tensor([[0.0, 4.0], [1.0, 0.0]]))


def test_perpendicular_is_orthogonal_per_sample() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 4, 8, 8, generator=g, dtype=torch.float64)
    y = torch.randn(5, 4, 8, 8, generator=g, dtype=torch.float64)
    p = perpendicular(x, y)
    rel = _flat_dot(p, y).abs() / (p.flatten(1).norm(dim=1) * y.flatten(1).norm(dim=1))
    assert rel.max() < 1e-5
    # fp32 too, with the same bound
    p32 = perpendicular(x.float(), y.float())
    rel32 = _flat_dot(p32, y.float()).abs() / (p32.flatten(1).norm(dim=1) * y.float().flatten(1).norm(dim=1))
    assert rel32.max() < 1e-5
    # per sample: sample 2 alone gives the same as in the batch
    assert torch.allclose(perpendicular(x[2:3], y[2:3]), p[2:3])


def test_perpendicular_is_linear_in_x() -> None:
    g = torch.Generator().manual_seed(1)
    x1, x2, y = (torch.randn(3, 4, 4, 4, generator=g, dtype=torch.float64) for _ in range(3))
    lhs = perpendicular(2.5 * x1 - 0.5 * x2, y)
    rhs = 2.5 * perpendicular(x1, y) - 0.5 * perpendicular(x2, y)
    assert torch.allclose(lhs, rhs, atol=1e-12)


def test_perpendicular_of_parallel_is_zero_and_zero_y_is_safe() -> None:
    g = torch.Generator().manual_seed(2)
    y = torch.randn(2, 4, 8, 8, generator=g)
    scale = torch.tensor([3.0, -0.25]).view(2, 1, 1, 1)
    assert perpendicular(scale * y, y).abs().max() < 1e-5
    x = torch.randn(2, 4, 8, 8, generator=g)
    p = perpendicular(x, torch.zeros_like(x))
    assert torch.isfinite(p).all() and torch.equal(p, x)


def test_combine_hand_numbers() -> None:
    # eps_u = 0, pos = (1, 0), neg = (1, 1), w = 1, s = 2: perp((1,1), (1,0)) = (0,1) → 2·((1,0) − (0,1))
    eps_u = torch.zeros(1, 1, 1, 2)
    eps_pos = torch.tensor([1.0, 0.0]).view(1, 1, 1, 2)
    eps_neg = torch.tensor([1.0, 1.0]).view(1, 1, 1, 1, 2)
    out = perpneg_combine(eps_u, eps_pos, eps_neg, torch.ones(1, 1), 2.0)
    assert torch.allclose(out, torch.tensor([2.0, -2.0]).view(1, 1, 1, 2))


def _random(B: int, K: int, seed: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    eps_u = torch.randn(B, 4, 8, 8, generator=g)
    eps_pos = torch.randn(B, 4, 8, 8, generator=g)
    eps_neg = torch.randn(B, K, 4, 8, 8, generator=g)
    w = torch.rand(B, K, generator=g) * 2
    return eps_u, eps_pos, eps_neg, w


def test_combine_reduces_to_cfg() -> None:
    eps_u, eps_pos, eps_neg, w = _random(3, 2, 3)
    cfg = eps_u + 7.5 * (eps_pos - eps_u)
    assert torch.allclose(perpneg_combine(eps_u, eps_pos, eps_neg, torch.zeros_like(w), 7.5), cfg, atol=1e-5)
    same = eps_pos.unsqueeze(1).expand(-1, 2, -1, -1, -1)
    assert torch.allclose(perpneg_combine(eps_u, eps_pos, same, w, 7.5), cfg, atol=1e-4)
    # no negatives at all: bit for bit the plain CFG term
    assert torch.equal(perpneg_guidance(eps_u, eps_pos, None, None, 7.5), 7.5 * (eps_pos - eps_u))


def test_combine_matches_loop_reference() -> None:
    eps_u, eps_pos, eps_neg, w = _random(3, 2, 4)
    s = 5.0
    expected = torch.empty_like(eps_u)
    for b in range(3):
        d_pos = (eps_pos[b] - eps_u[b]).flatten()
        acc = d_pos.clone()
        for k in range(2):
            d = (eps_neg[b, k] - eps_u[b]).flatten()
            acc -= w[b, k] * (d - torch.dot(d, d_pos) / max(torch.dot(d_pos, d_pos).item(), 1e-6) * d_pos)
        expected[b] = eps_u[b] + s * acc.view(4, 8, 8)
    assert torch.allclose(perpneg_combine(eps_u, eps_pos, eps_neg, w, s), expected, atol=1e-4)


def test_combine_ignores_parallel_part_of_negatives() -> None:
    eps_u, eps_pos, eps_neg, w = _random(2, 2, 5)
    d_pos = (eps_pos - eps_u).unsqueeze(1)
    shifted = eps_neg + torch.tensor([[3.0, -2.0], [0.5, 10.0]]).view(2, 2, 1, 1, 1) * d_pos
    a = perpneg_combine(eps_u, eps_pos, eps_neg, w, 7.5)
    b = perpneg_combine(eps_u, eps_pos, shifted, w, 7.5)
    assert torch.allclose(a, b, atol=1e-4)


def test_plain_negatives_without_projection() -> None:
    """``projection=False`` is composable diffusion's ``ε_u + s(Δ_pos − Σ_k w_k Δ_k)``, exactly."""
    g = torch.Generator().manual_seed(7)
    e_u, e_p = torch.randn(3, 4, 8, 8, generator=g, dtype=torch.float64), torch.randn(3, 4, 8, 8, generator=g, dtype=torch.float64)
    e_n = torch.randn(3, 2, 4, 8, 8, generator=g, dtype=torch.float64)
    w = torch.rand(3, 2, generator=g, dtype=torch.float64) * 3
    s = 7.5
    plain = perpneg_combine(e_u, e_p, e_n, w, s, projection=False)
    ref = e_u + s * ((e_p - e_u) - (w[:, 0, None, None, None] * (e_n[:, 0] - e_u) + w[:, 1, None, None, None] * (e_n[:, 1] - e_u)))
    assert torch.allclose(plain, ref, rtol=0, atol=1e-12)  # float64: only summation order differs
    # a negative along the positive direction now counts (Perp-Neg ignores it)
    along = (e_p + 0.5 * (e_p - e_u)).unsqueeze(1)
    one = torch.ones(3, 1, dtype=torch.float64)
    assert torch.allclose(perpneg_combine(e_u, e_p, along, one, s, projection=False), e_u + s * (1 - 1.5) * (e_p - e_u), atol=1e-12)
    assert torch.allclose(perpneg_combine(e_u, e_p, along, one, s), e_u + s * (e_p - e_u), atol=1e-12)
    assert (plain - perpneg_combine(e_u, e_p, e_n, w, s)).abs().max() > 1e-3
