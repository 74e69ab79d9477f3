"""Multiresolution hash-grid encoding (Instant-NGP, docs/design.md §6) with two back ends behind one interface.

* ``tcnn``: ``tinycudann.Encoding`` (fused CUDA kernels), CUDA only.
* ``torch``: a pure-PyTorch implementation used everywhere else (CPU, or CUDA without tinycudann).

The torch grid follows Instant-NGP: level ``l`` has resolution
``floor(base · b^l)`` with ``b = (max/base)^(1/(L-1))``; a point ``x ∈ [0,1]^3`` sits in the cell
``floor(x·res)`` and its feature is the trilinear interpolation of the 8 corner features. A level
whose ``(res+1)^3`` corners fit the table is indexed densely (no collisions); finer levels use the
spatial hash ``(x·1 ⊕ y·2654435761 ⊕ z·805459861) mod T``. The table starts uniform(-1e-4, 1e-4).

The back ends are not interchangeable: at level ``l`` the torch grid has ``res = floor(base · b^l)``
cells (``res + 1`` vertices per axis) and samples at ``x·res``, while tinycudann uses the scale
``s = base · b^l − 1``, ``ceil(s) + 1`` vertices per axis and samples at ``x·s + 0.5`` (a half-cell
offset). Cell sizes (``1/floor(base·b^l)`` vs ``1/(base·b^l − 1)``) and vertex counts differ by up
to a cell and the lattices are shifted, so the same table means different features; tinycudann
keeps its parameters in one flat vector (``...grid.params``), the torch grid in ``...grid.embeddings``.
**Checkpoints do not cross back ends**: loading and resuming take the back end from the
checkpoint's keys (:func:`backend_for_checkpoint`), whatever ``scene.encoding`` says, so a
torch-grid run stays on the torch grid where tinycudann is installed, and a tinycudann checkpoint
needs tinycudann and CUDA.

tinycudann is built with ``dtype`` ``scene.tcnn_dtype`` (float32 by default: its half-precision
table has a fixed internal loss scale and fp16 gradient atomics, and its fp16 features make
finite-difference normals noisy) and with a seed drawn from torch's RNG, so ``seed`` decides its
initial table as it does the torch grid's.
"""

from __future__ import annotations

import contextlib
import logging
import math
from typing import Iterable, List, Optional, Tuple

import torch
from torch import Tensor, nn

from dreamperp.errors import UsageError

logger = logging.getLogger(__name__)

HASH_PRIMES = (1, 2654435761, 805459861)


def level_resolutions(levels: int, base_resolution: int, max_resolution: int) -> List[int]:
    """Grid resolution of every level, geometric from ``base_resolution`` to ``max_resolution``."""
    if levels == 1:
        return [int(base_resolution)]
    growth = math.exp((math.log(max_resolution) - math.log(base_resolution)) / (levels - 1))
    # The tiny epsilon keeps e.g. 16·2^(k) from landing on 2^(k+4) - 1 through rounding.
    return [int(math.floor(base_resolution * growth**level + 1e-6)) for level in range(levels)]


def per_level_scale(levels: int, base_resolution: int, max_resolution: int) -> float:
    """Growth factor b between consecutive levels (tinycudann's ``per_level_scale``)."""
    if levels == 1:
        return 1.0
    return math.exp((math.log(max_resolution) - math.log(base_resolution)) / (levels - 1))


def tcnn_available() -> bool:
    """Whether ``tinycudann`` can be imported (it needs a CUDA build)."""
    try:
        import tinycudann  # noqa: F401
    except Exception:  # ImportError, or an OSError/RuntimeError from a broken CUDA build
        return False
    return True


def tcnn_usable(device: torch.device) -> bool:
    """Whether a tinycudann grid can be built on ``device``: CUDA, and tinycudann importable."""
    return device.type == "cuda" and tcnn_available()


TCNN_DTYPES = {"float32": torch.float32, "float16": torch.float16}
#: Where a Scene's state_dict holds the hash table (Scene.field → Field.encoding → the grid): the one
#: place this key path is written.
GRID_PREFIX = "field.encoding.grid."


def has_hash_grid(keys: Iterable[str]) -> bool:
    """Whether a scene ``state_dict``'s keys hold a hash grid."""
    return any(k.startswith(GRID_PREFIX) for k in keys)


def checkpoint_backend(keys: Iterable[str], prefix: str = GRID_PREFIX) -> Optional[str]:
    """The back end a scene ``state_dict``'s keys were saved from: ``"tcnn"`` (``<prefix>params``),
    ``"torch"`` (``<prefix>embeddings``), or None when they hold no hash grid."""
    names = {k[len(prefix):] for k in keys if k.startswith(prefix)}
    if "params" in names:
        return "tcnn"
    if "embeddings" in names:
        return "torch"
    return None


def backend_for_checkpoint(keys: Iterable[str], tcnn_ok: bool) -> Optional[str]:
    """The back end to build for loading a scene ``state_dict`` with ``keys``, given whether a
    tinycudann grid can be built here (``tcnn_ok``, see :func:`tcnn_usable`).

    A torch-grid checkpoint always gets the torch grid (it runs everywhere, also where tinycudann
    is installed); a tinycudann one gets tinycudann, or a UsageError where it cannot be built.
    None: the keys hold no hash grid (keep ``scene.encoding``).
    """
    trained = checkpoint_backend(keys)
    if trained == "tcnn" and not tcnn_ok:
        raise UsageError(
            "this checkpoint's hash grid was trained with tinycudann, which needs a CUDA device with tinycudann installed "
            "and is not usable here; load it on such a machine (hash-grid checkpoints do not cross back ends)"
        )
    return trained


def backend_mismatch(state_keys: Iterable[str], own_keys: Iterable[str]) -> Optional[str]:
    """A one-line explanation when a scene ``state_dict`` holds another back end's grid than the
    scene it is loaded into, else None."""
    trained, built = checkpoint_backend(state_keys), checkpoint_backend(own_keys)
    if trained is None or built is None or trained == built:
        return None
    name = {"tcnn": "tinycudann", "torch": "pure-PyTorch"}
    return (
        f"this checkpoint's hash grid is the {name[trained]} one but the scene was built with the {name[built]} one; "
        f"build it with scene.encoding={trained} (hash-grid checkpoints do not cross back ends)"
    )


# --------------------------------------------------------------------------------------- autograd
def _gather_columns(table: Tensor, idx: Tensor) -> Tensor:
    """``table[:, idx]`` for ``table [F, S]``, ``idx [M]`` → ``[F, M]`` (no autograd)."""
    out = table.new_empty(table.shape[0], idx.shape[0])
    for k in range(table.shape[0]):  # row-wise 1-D gathers beat a 2-D index_select
        torch.index_select(table[k], 0, idx, out=out[k])
    return out


class _Gather(torch.autograd.Function):
    """``table[:, idx]`` for a feature-major ``table [F, S]`` and ``idx [M]`` → ``[F, M]``.

    Gather and scatter are each other's backward, so double backward (analytic normals) works.
    """

    @staticmethod
    def forward(ctx, table: Tensor, idx: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(idx)
        ctx.size = table.shape[1]
        return _gather_columns(table, idx)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tuple[Optional[Tensor], None]:  # type: ignore[override]
        (idx,) = ctx.saved_tensors
        return _Scatter.apply(grad, idx, ctx.size), None


class _Scatter(torch.autograd.Function):
    """Sum the columns of ``values [F, M]`` into a zero ``[F, size]`` table at columns ``idx [M]``."""

    @staticmethod
    def forward(ctx, values: Tensor, idx: Tensor, size: int) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(idx)
        out = values.new_zeros(values.shape[0], size)
        for k in range(values.shape[0]):
            out[k].scatter_add_(0, idx, values[k])
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tuple[Tensor, None, None]:  # type: ignore[override]
        (idx,) = ctx.saved_tensors
        return _Gather.apply(grad, idx), None, None


class _Interpolate(torch.autograd.Function):
    """``out[f, l, n] = Σ_c w[l, c, n] · table[f, idx[l, c, n]]``: gather + trilinear blend in one node.

    One node instead of gather → mul → sum saves the [F, L, 8, N] intermediates autograd would
    keep; the backward is written with differentiable ops so it can itself be differentiated.
    """

    @staticmethod
    def forward(ctx, table: Tensor, idx: Tensor, w: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(table, idx, w)
        feats = _gather_columns(table, idx).view(table.shape[0], *w.shape)  # [F, L, 8, N]
        return (feats * w).sum(2)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tuple[Optional[Tensor], None, Optional[Tensor]]:  # type: ignore[override]
        table, idx, w = ctx.saved_tensors
        grad = grad.contiguous()  # it arrives permuted from the [N, L·F] output; strided reads are slow
        grad_table = grad_w = None
        if ctx.needs_input_grad[0]:
            contrib = (w.unsqueeze(0) * grad.unsqueeze(2)).reshape(table.shape[0], -1)
            grad_table = _Scatter.apply(contrib, idx, table.shape[1])
        if ctx.needs_input_grad[2]:
            feats = _Gather.apply(table, idx).view(table.shape[0], *w.shape)
            grad_w = (feats * grad.unsqueeze(2)).sum(0)
        return grad_table, None, grad_w


# ------------------------------------------------------------------------------------ torch grid
class TorchHashGrid(nn.Module):
    """Pure-PyTorch multiresolution hash grid. ``forward(x [N,3] in [0,1]) -> [N, L·F]``.

    Vectorised over levels and corners with the point index innermost (``[L, 8, N]``), so every
    elementwise op runs over long contiguous rows. Corner indices come from per-axis terms combined
    by broadcasting (sum for dense levels, XOR for hashed ones); the level offset is folded into
    the z term (hashed levels sit first in the table at multiples of T, so XOR-ing the offset equals
    adding it). The table is feature-major ``embeddings [F, rows]``. On the CPU points are processed
    in slices of ``slice_size`` so temporaries stay small (big ones cost page faults on every call).
    """

    slice_size = 1 << 14

    def __init__(
        self,
        levels: int = 16,
        features_per_level: int = 2,
        log2_table_size: int = 19,
        base_resolution: int = 16,
        max_resolution: int = 2048,
    ):
        super().__init__()
        self.levels = levels
        self.features_per_level = features_per_level
        self.table_size = 1 << log2_table_size
        self.resolutions = level_resolutions(levels, base_resolution, max_resolution)
        dense = [(res + 1) ** 3 <= self.table_size for res in self.resolutions]
        # Levels only get finer, so the dense ones come first.
        self.num_dense = sum(dense)
        assert all(dense[: self.num_dense]) and not any(dense[self.num_dense :])
        offsets = [0] * levels
        rows = 0
        for level in range(self.num_dense, levels):  # hashed levels first, at multiples of T
            offsets[level] = rows
            rows += self.table_size
        for level in range(self.num_dense):
            offsets[level] = rows
            rows += (self.resolutions[level] + 1) ** 3
        self.level_offsets = offsets
        self.embeddings = nn.Parameter(torch.empty(features_per_level, rows).uniform_(-1e-4, 1e-4))

        # Per-level multipliers of the (x, y, z) cell coordinates: strides for dense levels, primes
        # for hashed ones. int64 products stay exact (2^11 · 2^32 < 2^63) and the low bits we keep
        # with the mask equal those of Instant-NGP's uint32 arithmetic.
        mult = [(1, r + 1, (r + 1) ** 2) if lv < self.num_dense else HASH_PRIMES for lv, r in enumerate(self.resolutions)]
        self.register_buffer("_res", torch.tensor(self.resolutions, dtype=torch.float32).view(-1, 1, 1), persistent=False)
        self.register_buffer("_mult", torch.tensor(mult, dtype=torch.int64).view(-1, 3, 1), persistent=False)
        self.register_buffer("_offsets", torch.tensor(offsets, dtype=torch.int64).view(-1, 1), persistent=False)

    @property
    def output_dim(self) -> int:
        return self.levels * self.features_per_level

    def corner_indices_and_weights(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        """Table columns ``[L, 8, N]`` and trilinear weights ``[L, 8, N]`` for ``x [N, 3]``.

        Corner ``c = 4·dz + 2·dy + dx`` (dx, dy, dz ∈ {0, 1}) of the cell holding the point.
        """
        n, lv, nd = x.shape[0], self.levels, self.num_dense
        res = self._res.to(x.dtype)
        pos = x.t().clamp(0.0, 1.0).unsqueeze(0) * res  # [L, 3, N]
        # A point at x = 1 lies on the last vertex; keep it in the last cell (with frac = 1).
        cell = torch.minimum(pos.floor(), res - 1)
        frac = pos - cell
        t0 = cell.long() * self._mult  # [L, 3, N]: lower corner term per axis
        t1 = t0 + self._mult  # upper corner: (c + 1)·m = c·m + m
        idx = torch.empty(lv, 2, 2, 2, n, dtype=torch.int64, device=x.device)
        if nd > 0:
            z = torch.stack([t0[:nd, 2], t1[:nd, 2]], 1) + self._offsets[:nd].view(-1, 1, 1)
            y = torch.stack([t0[:nd, 1], t1[:nd, 1]], 1)
            xx = torch.stack([t0[:nd, 0], t1[:nd, 0]], 1)
            zy = z.unsqueeze(2) + y.unsqueeze(1)  # [nd, 2, 2, N]
            torch.add(zy.unsqueeze(3), xx.view(nd, 1, 1, 2, n), out=idx[:nd])
        if nd < lv:
            mask = self.table_size - 1
            h0, h1 = t0[nd:] & mask, t1[nd:] & mask  # masking the terms first = masking the XOR
            z = torch.stack([h0[:, 2], h1[:, 2]], 1) ^ self._offsets[nd:].view(-1, 1, 1)
            y = torch.stack([h0[:, 1], h1[:, 1]], 1)
            xx = torch.stack([h0[:, 0], h1[:, 0]], 1)
            zy = z.unsqueeze(2) ^ y.unsqueeze(1)
            torch.bitwise_xor(zy.unsqueeze(3), xx.view(lv - nd, 1, 1, 2, n), out=idx[nd:])
        one = 1.0 - frac
        wz = torch.stack([one[:, 2], frac[:, 2]], 1)  # [L, 2, N]
        wy = torch.stack([one[:, 1], frac[:, 1]], 1)
        wx = torch.stack([one[:, 0], frac[:, 0]], 1)
        w = (wz.unsqueeze(2) * wy.unsqueeze(1)).unsqueeze(3) * wx.view(lv, 1, 1, 2, n)
        return idx.view(lv, 8, n), w.view(lv, 8, n)

    def _encode(self, x: Tensor) -> Tensor:
        n = x.shape[0]
        idx, w = self.corner_indices_and_weights(x.to(self.embeddings.dtype))
        out = _Interpolate.apply(self.embeddings, idx.reshape(-1), w)  # [F, L, N]
        return out.permute(2, 1, 0).reshape(n, self.output_dim)

    def forward(self, x: Tensor) -> Tensor:
        """``x [N, 3]`` in [0, 1]^3 (clamped) → features ``[N, L·F]``, level-major."""
        # Small slices help the CPU (cache, no page faults); a GPU wants few, large kernels.
        size = self.slice_size if x.device.type == "cpu" else 1 << 20
        if x.shape[0] <= size:
            return self._encode(x)
        return torch.cat([self._encode(part) for part in x.split(size)], 0)


# ----------------------------------------------------------------------------------- public module
class HashGridEncoding(nn.Module):
    """One interface over both back ends. ``forward(x [N, 3] in [0,1]^3) -> [N, L·F]`` (float32).

    ``backend``: ``"auto"`` (tinycudann when importable and ``device`` is CUDA, else torch),
    ``"torch"`` or ``"tcnn"`` (UsageError without tinycudann or without CUDA). ``tcnn_dtype``:
    ``"float32"`` or ``"float16"``, tinycudann's table and output precision.
    """

    def __init__(
        self,
        levels: int = 16,
        features_per_level: int = 2,
        log2_table_size: int = 19,
        base_resolution: int = 16,
        max_resolution: int = 2048,
        backend: str = "auto",
        device: Optional[torch.device | str] = None,
        tcnn_dtype: str = "float32",
    ):
        super().__init__()
        device = torch.device(device) if device is not None else torch.device("cpu")
        if tcnn_dtype not in TCNN_DTYPES:
            raise UsageError(f"scene.tcnn_dtype must be one of {', '.join(TCNN_DTYPES)}, got {tcnn_dtype!r}")
        self.backend = resolve_backend(backend, device)
        self.levels = levels
        self.features_per_level = features_per_level
        if self.backend == "tcnn":
            import tinycudann as tcnn

            config = {
                "otype": "HashGrid",
                "n_levels": levels,
                "n_features_per_level": features_per_level,
                "log2_hashmap_size": log2_table_size,
                "base_resolution": base_resolution,
                "per_level_scale": per_level_scale(levels, base_resolution, max_resolution),
            }
            # tinycudann seeds its table itself (default 1337 whatever the run's seed): draw its seed from
            # torch's RNG, seeded by the run, so that `seed` decides the table here too.
            seed = int(torch.randint(0, 2**31 - 1, ()).item())
            place = torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()
            with place:
                self.grid: nn.Module = tcnn.Encoding(3, config, seed=seed, dtype=TCNN_DTYPES[tcnn_dtype])
        else:
            self.grid = TorchHashGrid(levels, features_per_level, log2_table_size, base_resolution, max_resolution)
        self.to(device)

    @property
    def output_dim(self) -> int:
        return self.levels * self.features_per_level

    def forward(self, x: Tensor) -> Tensor:
        if self.backend == "tcnn":
            if x.shape[0] == 0:
                # tinycudann returns before zeroing its (torch.empty) parameter gradient for an
                # empty batch, so a backward through it would hand Adam uninitialised memory.
                return x.new_zeros(0, self.output_dim, dtype=torch.float32)
            # tinycudann does not clamp: out-of-range points wrap (modulo) onto unrelated cells.
            x = x.clamp(0.0, 1.0)
        return self.grid(x).float()  # half precision with tcnn_dtype=float16


def resolve_backend(backend: str, device: torch.device) -> str:
    """'auto' | 'torch' | 'tcnn' → the back end to build; logs the choice once for 'auto'."""
    if backend == "torch":
        return "torch"
    if backend == "tcnn":
        if not tcnn_usable(device):
            if device.type != "cuda":
                raise UsageError("scene.encoding=tcnn needs a CUDA device; use scene.encoding=torch (or auto) on CPU")
            raise UsageError("scene.encoding=tcnn but tinycudann is not installed; install it or use scene.encoding=auto")
        return "tcnn"
    if backend != "auto":
        raise UsageError(f"scene.encoding must be auto, torch or tcnn, got {backend!r}")
    if tcnn_usable(device):
        logger.info("hash-grid encoding: tinycudann (CUDA)")
        return "tcnn"
    why = "no CUDA device" if device.type != "cuda" else "tinycudann is not installed"
    logger.info("hash-grid encoding: pure PyTorch (%s)", why)
    return "torch"
