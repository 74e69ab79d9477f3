"""Pure-PyTorch hash grid against a brute-force reference; gradients; back-end selection."""

from __future__ import annotations

import logging

import pytest
import torch

from dreamperp.errors import UsageError
from dreamperp.scene.encoding import (
    HASH_PRIMES,
    HashGridEncoding,
    TorchHashGrid,
    level_resolutions,
    tcnn_available,
)


def reference_encoding(grid: TorchHashGrid, x: torch.Tensor) -> torch.Tensor:
    """Per level, per corner, straight from the Instant-NGP definition (no vectorisation tricks)."""
    table = grid.embeddings.detach()
    outs = []
    for level, res in enumerate(grid.resolutions):
        pos = x.clamp(0, 1) * res
        cell = torch.minimum(pos.floor(), torch.tensor(float(res - 1), dtype=x.dtype)).long()
        frac = pos - cell
        acc = torch.zeros(x.shape[0], grid.features_per_level, dtype=x.dtype)
        for dz in (0, 1):
            for dy in (0, 1):
                for dx in (0, 1):
                    cx, cy, cz = cell[:, 0] + dx, cell[:, 1] + dy, cell[:, 2] + dz
                    if level < grid.num_dense:
                        index = cx + cy * (res + 1) + cz * (res + 1) ** 2
                    else:
                        h = (cx * HASH_PRIMES[0]) ^ (cy * HASH_PRIMES[1]) ^ (cz * HASH_PRIMES[2])
                        index = (h & 0xFFFFFFFF) % grid.table_size  # uint32 arithmetic as in Instant-NGP
                    weight = 1.0
                    for axis, bit in enumerate((dx, dy, dz)):
                        weight = weight * (frac[:, axis] if bit else 1 - frac[:, axis])
                    acc += weight[:, None] * table[:, grid.level_offsets[level] + index].t()
        outs.append(acc)
    return torch.cat(outs, 1)


def test_level_resolutions_are_geometric():
    res = level_resolutions(16, 16, 2048)
    assert res[0] == 16 and res[-1] == 2048
    ratios = [b / a for a, b in zip(res, res[1:])]
    assert max(ratios) / min(ratios) < 1.1
    assert level_resolutions(1, 16, 2048) == [16]


def test_matches_brute_force_reference_dense_and_hashed_levels():
    torch.manual_seed(0)
    grid = TorchHashGrid(levels=5, features_per_level=2, log2_table_size=12, base_resolution=4, max_resolution=64).double()
    assert 0 < grid.num_dense < grid.levels  # both kinds of level are exercised
    with torch.no_grad():
        grid.embeddings.uniform_(-1, 1)
    x = torch.rand(3000, 3, dtype=torch.float64)
    x[:5] = 1.0  # the far faces of the box
    x[5:10] = 0.0
    out = grid(x)
    assert out.shape == (3000, 10)
    assert torch.allclose(out, reference_encoding(grid, x), atol=1e-12)


def test_slicing_does_not_change_results():
    torch.manual_seed(1)
    grid = TorchHashGrid(levels=4, features_per_level=4, log2_table_size=10, base_resolution=4, max_resolution=32)
    with torch.no_grad():
        grid.embeddings.uniform_(-1, 1)
    x = torch.rand(600, 3)
    whole = grid(x)
    grid.slice_size = 128
    assert torch.allclose(grid(x), whole, atol=1e-6)


def test_dense_levels_do_not_collide():
    grid = TorchHashGrid(levels=3, features_per_level=2, log2_table_size=14, base_resolution=4, max_resolution=16)
    res = grid.resolutions[0]
    assert grid.num_dense >= 1
    # Every vertex of the coarsest level gets its own row.
    v = torch.stack(torch.meshgrid(*[torch.arange(res + 1)] * 3, indexing="ij"), -1).reshape(-1, 3).double() / res
    idx, _ = grid.corner_indices_and_weights(v * (1 - 1e-9) + 1e-12)
    corners = idx[0].reshape(-1)
    assert corners.unique().numel() == (res + 1) ** 3


def test_table_init_and_parameter_count():
    grid = TorchHashGrid(levels=4, features_per_level=2, log2_table_size=10, base_resolution=4, max_resolution=40)
    assert grid.embeddings.abs().max() <= 1e-4
    expected = sum((r + 1) ** 3 if (r + 1) ** 3 <= 1024 else 1024 for r in grid.resolutions)
    assert grid.embeddings.shape == (2, expected)


def test_gradcheck_table_and_inputs_float64():
    torch.manual_seed(0)
    grid = TorchHashGrid(levels=3, features_per_level=2, log2_table_size=8, base_resolution=2, max_resolution=12).double()
    with torch.no_grad():
        grid.embeddings.uniform_(-1, 1)
    x = (torch.rand(5, 3, dtype=torch.float64) * 0.8 + 0.1).requires_grad_(True)
    fn = lambda pts, table: grid(pts)  # noqa: E731  (the table enters through the module)
    assert torch.autograd.gradcheck(fn, (x, grid.embeddings), eps=1e-6, atol=1e-5)
    assert torch.autograd.gradgradcheck(fn, (x, grid.embeddings), eps=1e-6, atol=1e-5)


def test_gradients_reach_only_touched_rows():
    grid = TorchHashGrid(levels=2, features_per_level=2, log2_table_size=8, base_resolution=2, max_resolution=4)
    x = torch.tensor([[0.3, 0.3, 0.3]])
    grid(x).sum().backward()
    touched = (grid.embeddings.grad.abs().sum(0) > 0).sum()
    assert touched == 16  # 8 corners on each of the 2 levels
    assert torch.allclose(grid.embeddings.grad.sum(), torch.tensor(2.0 * 2))  # weights sum to 1 per level and feature


def test_backend_selection(caplog):
    with caplog.at_level(logging.INFO, logger="dreamperp.scene.encoding"):
        enc = HashGridEncoding(levels=2, log2_table_size=8, base_resolution=2, max_resolution=4, backend="auto", device="cpu")
    assert enc.backend == "torch"
    assert sum("pure PyTorch" in r.getMessage() for r in caplog.records) == 1
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="dreamperp.scene.encoding"):
        HashGridEncoding(levels=2, log2_table_size=8, base_resolution=2, max_resolution=4, backend="torch")
    assert not caplog.records  # only 'auto' announces its choice
    with pytest.raises(UsageError, match="tcnn"):
        HashGridEncoding(levels=2, log2_table_size=8, base_resolution=2, max_resolution=4, backend="tcnn", device="cpu")


@pytest.mark.skipif(tcnn_available(), reason="tinycudann is installed")
def test_tcnn_without_tinycudann_is_a_usage_error():
    with pytest.raises(UsageError, match="tinycudann"):
        from dreamperp.scene.encoding import resolve_backend

        resolve_backend("tcnn", torch.device("cuda"))
