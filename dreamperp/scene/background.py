"""Background colour seen where rays leave the scene: a direction MLP, a solid or a random colour."""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from dreamperp.config import BACKGROUND_MODES
from dreamperp.scene.field import mlp


class Background(nn.Module):
    """``forward(dirs [..., 3], train) -> rgb [..., 3]`` in [0, 1].

    * ``mlp``: ``sigmoid(MLP(sin/cos frequency encoding of the unit direction))`` (4 octaves, 32 wide).
    * ``solid``: ``color`` everywhere.
    * ``random``: when training, one uniform random colour per view (the first dimension of
      ``dirs`` when it has more than two, else per ray); when evaluating, ``color``.
    """

    def __init__(self, mode: str = "mlp", color: Sequence[float] = (1.0, 1.0, 1.0), frequencies: int = 4, hidden_dim: int = 32):
        super().__init__()
        if mode not in BACKGROUND_MODES:
            raise ValueError(f"background mode must be one of {BACKGROUND_MODES}, got {mode!r}")
        self.mode = mode
        self.register_buffer("color", torch.tensor(list(color), dtype=torch.float32), persistent=False)
        self.frequencies = frequencies
        self.net: Optional[nn.Module] = mlp(3 + 6 * frequencies, hidden_dim, 1, 3) if mode == "mlp" else None

    def encode(self, dirs: Tensor) -> Tensor:
        """Unit directions ``[N, 3]`` → ``[N, 3 + 6·frequencies]`` (identity, sin, cos)."""
        scales = 2.0 ** torch.arange(self.frequencies, device=dirs.device, dtype=dirs.dtype) * torch.pi
        angles = (dirs[..., None, :] * scales[:, None]).flatten(-2)
        return torch.cat([dirs, torch.sin(angles), torch.cos(angles)], -1)

    def forward(self, dirs: Tensor, train: bool = True) -> Tensor:
        if self.mode == "mlp":
            assert self.net is not None
            flat = dirs.reshape(-1, 3)
            return torch.sigmoid(self.net(self.encode(flat))).view(dirs.shape)
        if self.mode == "random" and train:
            # One colour per view for image batches [B, H, W, 3], per ray for flat batches [N, 3].
            shape = (dirs.shape[0],) + (1,) * (dirs.dim() - 2) + (3,) if dirs.dim() > 2 else dirs.shape
            return torch.rand(shape, device=dirs.device, dtype=dirs.dtype).expand(dirs.shape)
        return self.color.to(dirs.dtype).expand(dirs.shape)
