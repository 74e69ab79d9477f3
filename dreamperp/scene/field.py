"""The radiance field: hash-grid encoding → density MLP (+ blob bias) and albedo MLP; normals.

Density (threestudio's ``blob_magic3d`` bias with a softplus activation, as in its DreamFusion
config)::

    σ(x) = softplus(mlp_σ(h(x)) + blob_density · (1 − |x| / blob_radius))

so an untrained field is a soft ball: σ ≈ blob_density at the centre, softplus(0) ≈ 0.69 on the
sphere of radius ``blob_radius`` and ≈ 0 further out (the bias is negative there, which also keeps
the corners of the box empty). ``blob_density = 0`` turns the bias off. Albedo is
``sigmoid(mlp_c(h(x)))`` in [0, 1]^3. Normals point out of the object: ``n = −∇σ / |∇σ|``, by
central finite differences with step ``fd_eps`` (default) or by autograd (``normals: analytic``).
"""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dreamperp.config import SceneConfig
from dreamperp.scene.base_field import FieldBase
from dreamperp.scene.encoding import HashGridEncoding

# No-grad evaluation (export, chunked renders) runs in slices of this many points to bound memory.
_NO_GRAD_SLICE = 1 << 18


def mlp(in_dim: int, hidden_dim: int, num_layers: int, out_dim: int) -> nn.Sequential:
    """``num_layers`` hidden ReLU layers of width ``hidden_dim`` and a linear output."""
    layers: list[nn.Module] = []
    dim = in_dim
    for _ in range(num_layers):
        layers += [nn.Linear(dim, hidden_dim), nn.ReLU(inplace=True)]
        dim = hidden_dim
    layers.append(nn.Linear(dim, out_dim))
    return nn.Sequential(*layers)


def blob_bias(x: Tensor, blob_density: float, blob_radius: float) -> Tensor:
    """Pre-activation density bias ``blob_density · (1 − |x| / blob_radius)`` for ``x [N, 3]`` → [N]."""
    if blob_density == 0:
        return x.new_zeros(x.shape[0])
    return blob_density * (1.0 - x.norm(dim=-1) / blob_radius)


class Field(FieldBase):
    """Density + albedo field on the box ``[-bound, bound]^3`` (points outside are clamped to it).

    Implements :class:`~dreamperp.scene.base_field.FieldBase`: the features of ``get_density`` are
    the hash-grid encoding, which the albedo MLP reads without encoding the points again."""

    def __init__(self, cfg: SceneConfig, device: Optional[torch.device | str] = None):
        super().__init__()
        self.bound = float(cfg.bound)
        self.blob_density = float(cfg.blob_density)
        self.blob_radius = float(cfg.blob_radius)
        self.normals_mode = cfg.normals
        self.fd_eps = float(cfg.fd_eps)
        self.encoding = HashGridEncoding(
            levels=cfg.levels,
            features_per_level=cfg.features_per_level,
            log2_table_size=cfg.log2_table_size,
            base_resolution=cfg.base_resolution,
            max_resolution=cfg.max_resolution,
            backend=cfg.encoding,
            device=device,
            tcnn_dtype=cfg.tcnn_dtype,
        )
        dim = self.encoding.output_dim
        self.density_net = mlp(dim, cfg.hidden_dim, cfg.num_layers, 1)
        self.albedo_net = mlp(dim, cfg.hidden_dim, cfg.num_layers, 3)
        if device is not None:
            self.to(device)

    # ----------------------------------------------------------------------------- building blocks
    def _encode(self, x: Tensor) -> Tensor:
        """World points ``[N, 3]`` → hash-grid features ``[N, D]``."""
        return self.encoding((x / self.bound + 1.0) * 0.5)

    def _density_from_features(self, x: Tensor, h: Tensor) -> Tensor:
        raw = self.density_net(h).squeeze(-1).float()
        return F.softplus(raw + blob_bias(x, self.blob_density, self.blob_radius))

    def _albedo_from_features(self, h: Tensor) -> Tensor:
        return torch.sigmoid(self.albedo_net(h).float())

    def _sliced(self, fn, x: Tensor) -> Tensor:
        if torch.is_grad_enabled() or x.shape[0] <= _NO_GRAD_SLICE:
            return fn(x)
        return torch.cat([fn(part) for part in x.split(_NO_GRAD_SLICE)], 0)

    # ----------------------------------------------------------------------------- the contract
    def get_density(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        """``(σ [N], hash-grid features h [N, D])`` at world points ``x [N, 3]``."""
        h = self._encode(x)
        return self._density_from_features(x, h), h

    def get_outputs(self, x: Tensor, features: Tensor) -> Dict[str, Tensor]:
        """``{"albedo": sigmoid(mlp_c(h)) [N, 3]}`` from the features of :meth:`get_density`."""
        return {"albedo": self._albedo_from_features(features)}

    def get_normals(self, x: Tensor) -> Tensor:
        """Unit outward normals ``−∇σ/|∇σ|`` at ``x [N, 3]`` → ``[N, 3]`` (differentiable when grad is on)."""
        if self.normals_mode == "analytic":
            return self._sliced(self._analytic_normal, x)
        return self._sliced(self._fd_normal, x)

    def grid_parameters(self) -> List[nn.Parameter]:
        return list(self.encoding.parameters())

    # ------------------------------------------------------------------- cheaper point queries
    def density(self, x: Tensor) -> Tensor:
        """Density σ ≥ 0 at world points ``x [N, 3]`` → ``[N]`` (sliced without grad)."""
        return self._sliced(lambda p: self._density_from_features(p, self._encode(p)), x)

    def albedo(self, x: Tensor) -> Tensor:
        """Albedo in [0, 1] at ``x [N, 3]`` → ``[N, 3]`` (no density evaluation)."""
        return self._sliced(lambda p: self._albedo_from_features(self._encode(p)), x)

    def _fd_normal(self, x: Tensor) -> Tensor:
        eps = self.fd_eps
        offsets = torch.eye(3, device=x.device, dtype=x.dtype) * eps  # [3, 3]
        probes = torch.cat([x[None] + offsets[:, None], x[None] - offsets[:, None]], 0)  # [6, N, 3]
        sigma = self.density(probes.reshape(-1, 3)).view(2, 3, -1)
        grad = (sigma[0] - sigma[1]).t() / (2 * eps)  # [N, 3]
        return F.normalize(-grad, dim=-1, eps=1e-12)

    def _analytic_normal(self, x: Tensor) -> Tensor:
        create_graph = torch.is_grad_enabled()
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            sigma = self.density(x)
            (grad,) = torch.autograd.grad(sigma.sum(), x, create_graph=create_graph)
        return F.normalize(-grad, dim=-1, eps=1e-12)
