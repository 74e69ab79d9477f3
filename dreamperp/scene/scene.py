"""The scene of a run (docs/design.md §6): a field, a background and (CUDA) an occupancy grid.

:class:`Scene` is what a checkpoint of the 3D half holds and what the renderer, the exporters and
the optimizer are given; it talks to its field only through the field contract
(:class:`~dreamperp.scene.base_field.FieldBase`). :func:`pin_encoding` and
:func:`resolve_estimator` decide which hash grid and which sampler a scene is built with.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any, List, Mapping, Optional

import torch
from torch import Tensor, nn

from dreamperp.config import Config, RenderConfig, SceneConfig
from dreamperp.device import resolve_device
from dreamperp.errors import UsageError
from dreamperp.scene.background import Background
from dreamperp.scene.base_field import FieldBase
from dreamperp.scene.encoding import backend_for_checkpoint, backend_mismatch, tcnn_usable
from dreamperp.scene.field import Field
from dreamperp.scene.nerfacc_cuda import nerfacc_cuda_status

logger = logging.getLogger(__name__)


def resolve_estimator(estimator: str, device: torch.device) -> str:
    """``render.estimator`` → ``"dense"`` or ``"occgrid"`` for this device (nerfacc's CUDA kernels are
    probed once per process, see :mod:`dreamperp.scene.nerfacc_cuda`)."""
    if estimator == "auto":
        if device.type != "cuda":
            return "dense"
        ok, why = nerfacc_cuda_status()
        if ok:
            return "occgrid"
        logger.warning("%s: using the dense sampler", why)
        return "dense"
    if estimator == "occgrid":
        if device.type != "cuda":
            raise UsageError(
                "render.estimator=occgrid needs CUDA (nerfacc's marching kernels); use render.estimator=dense or auto on CPU"
            )
        ok, why = nerfacc_cuda_status()
        if not ok:
            raise UsageError(
                f"render.estimator=occgrid but {why}; install a CUDA toolkit (nvcc) or use render.estimator=auto"
            )
    return estimator


def pin_encoding(cfg: Config, scene_state: Mapping[str, Any], device: torch.device) -> Config:
    """``cfg`` with ``scene.encoding`` set to the hash-grid back end ``scene_state`` was saved from,
    so that loading or resuming builds the grid the checkpoint holds (docs/design.md §6): a
    torch-grid run stays on the torch grid where tinycudann is installed. A tinycudann checkpoint
    where tinycudann cannot run on ``device`` → UsageError."""
    backend = backend_for_checkpoint(scene_state.keys(), tcnn_ok=tcnn_usable(device))
    if backend is None or backend == cfg.scene.encoding:
        return cfg
    return replace(cfg, scene=replace(cfg.scene, encoding=backend))


class Scene(nn.Module):
    """Everything a checkpoint of the 3D half needs: field, background and (occgrid) occupancy grid.

    ``state_dict()`` holds the hash grid, MLPs, background MLP and the occupancy grid buffers.
    A checkpoint from an occgrid (CUDA) run loads into a dense (CPU) scene and vice versa; the
    hash-grid back end (torch / tcnn) must match: build the scene from :func:`pin_encoding`'s config.
    """

    def __init__(
        self,
        field: FieldBase,
        background: Background,
        *,
        bound: float,
        render_cfg: RenderConfig,
        estimator: Optional[nn.Module] = None,
    ):
        super().__init__()
        self.field = field
        self.background = background
        self.bound = float(bound)
        self.render_cfg = render_cfg
        self.estimator = estimator
        if estimator is not None:
            # Until the first occupancy update every cell counts as occupied, so a fresh scene renders.
            estimator.binaries.fill_(True)

    @classmethod
    def from_config(cls, cfg: Config, device: torch.device | str | None = None) -> "Scene":
        """Build from ``cfg.scene`` / ``cfg.render`` on ``device`` (default: ``cfg.device``)."""
        dev = resolve_device(device if device is not None else cfg.device)
        sc: SceneConfig = cfg.scene
        kind = resolve_estimator(cfg.render.estimator, dev)
        estimator = None
        if kind == "occgrid":
            from nerfacc import OccGridEstimator

            b = float(sc.bound)
            estimator = OccGridEstimator(roi_aabb=[-b, -b, -b, b, b, b], resolution=cfg.render.occ_resolution, levels=1)
        scene = cls(
            Field(sc, device=dev),
            Background(sc.background, sc.background_color),
            bound=sc.bound,
            render_cfg=cfg.render,
            estimator=estimator,
        )
        return scene.to(dev)

    @property
    def device(self) -> torch.device:
        return next(self.field.parameters()).device

    @property
    def sampler(self) -> str:
        """``"occgrid"`` or ``"dense"``."""
        return "occgrid" if self.estimator is not None else "dense"

    def density(self, x: Tensor) -> Tensor:
        """Density at world points ``x [N, 3]`` → ``[N]``."""
        return self.field.density(x)

    def albedo(self, x: Tensor) -> Tensor:
        """Albedo at world points ``x [N, 3]`` → ``[N, 3]``."""
        return self.field.albedo(x)

    def param_groups(self, lr_grid: float, lr_mlp: float) -> List[dict]:
        """Adam parameter groups: ``"grid"`` (hash table) at ``lr_grid``, ``"mlp"`` (MLPs, background) at ``lr_mlp``."""
        grid = list(self.field.grid_parameters())
        grid_ids = {id(p) for p in grid}
        rest = [p for p in self.parameters() if id(p) not in grid_ids and p.requires_grad]
        groups = [{"name": "grid", "params": grid, "lr": lr_grid}, {"name": "mlp", "params": rest, "lr": lr_mlp}]
        return [g for g in groups if g["params"]]

    @torch.no_grad()
    def update_occupancy(self, step: int) -> None:
        """Refresh the occupancy grid every ``render.occ_update_every`` steps (occgrid only; no-op otherwise)."""
        if self.estimator is None or not self.training:
            return
        step_size = self.render_cfg.render_step_size

        def occ_eval_fn(x: Tensor) -> Tensor:
            return self.field.density(x)[:, None] * step_size  # ≈ opacity of one marching step

        self.estimator.update_every_n_steps(
            step=step,
            occ_eval_fn=occ_eval_fn,
            occ_thre=self.render_cfg.occ_threshold,
            n=self.render_cfg.occ_update_every,
        )

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):  # type: ignore[override]
        """Like ``nn.Module.load_state_dict``, tolerating a present/absent occupancy grid."""
        state = dict(state_dict)
        own = self.state_dict()
        has_est = any(k.startswith("estimator.") for k in own)
        if not has_est:
            state = {k: v for k, v in state.items() if not k.startswith("estimator.")}
        elif not any(k.startswith("estimator.") for k in state):
            state.update({k: v for k, v in own.items() if k.startswith("estimator.")})
        mismatch = backend_mismatch(state.keys(), own.keys())
        if mismatch is not None:  # build the scene with pin_encoding to avoid this
            raise UsageError(mismatch)
        return super().load_state_dict(state, strict=strict, assign=assign)
