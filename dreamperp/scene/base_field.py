"""The field contract: what the renderer, the exporters and the optimizer may ask of a field.

A field maps world points to density and appearance. The renderer asks for density first (every
sample) and for appearance only where a sample matters, so the contract has two halves, as
nerfstudio's fields do (docs/design.md §6):

* :meth:`FieldBase.get_density` — points ``x [N, 3]`` → ``(σ [N] ≥ 0, features [N, D])``;
* :meth:`FieldBase.get_outputs` — points and their features → ``{"albedo": [N, 3] in [0, 1]}``;
* :meth:`FieldBase.get_normals` — unit outward normals ``[N, 3]``.

``density``, ``albedo`` (exporters, occupancy updates) and ``param_groups`` derive from them; a
field overrides them only to be cheaper. A second representation implements these methods and
renders, exports and trains unchanged.
"""

from __future__ import annotations

from typing import Dict, List, Tuple

from torch import Tensor, nn


class FieldBase(nn.Module):
    """Density and appearance at world points; see the module docstring for the contract."""

    def get_density(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        """Density ``σ [N]`` at world points ``x [N, 3]`` and the features ``[N, D]`` that
        :meth:`get_outputs` reads (any D, possibly ``x`` itself)."""
        raise NotImplementedError

    def get_outputs(self, x: Tensor, features: Tensor) -> Dict[str, Tensor]:
        """Appearance at ``x [N, 3]`` from its :meth:`get_density` features: ``{"albedo": [N, 3]}``."""
        raise NotImplementedError

    def get_normals(self, x: Tensor) -> Tensor:
        """Unit outward normals at ``x [N, 3]`` → ``[N, 3]`` (differentiable when grad is on)."""
        raise NotImplementedError

    def density(self, x: Tensor) -> Tensor:
        """σ at ``x [N, 3]`` → ``[N]``."""
        return self.get_density(x)[0]

    def albedo(self, x: Tensor) -> Tensor:
        """Albedo in [0, 1] at ``x [N, 3]`` → ``[N, 3]``."""
        return self.get_outputs(x, self.get_density(x)[1])["albedo"]

    def normal(self, x: Tensor) -> Tensor:
        """Unit outward normals at ``x [N, 3]`` → ``[N, 3]`` (the point-query name of :meth:`get_normals`)."""
        return self.get_normals(x)

    def grid_parameters(self) -> List[nn.Parameter]:
        """Parameters trained at the grid learning rate (a hash table); the rest at the MLP rate."""
        return []
