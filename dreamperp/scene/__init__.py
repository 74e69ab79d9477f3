"""The 3D scene: the field contract and its hash-grid field, background, Scene, renderer, objectives.

``Scene.from_config(cfg)`` builds everything; ``render_rays`` / ``render_chunked`` draw rays from
:mod:`dreamperp.cameras`; :mod:`dreamperp.scene.objectives` turns renders into ``loss_*`` terms.
"""

from dreamperp.scene.background import Background
from dreamperp.scene.base_field import FieldBase
from dreamperp.scene.encoding import HashGridEncoding, TorchHashGrid
from dreamperp.scene.field import Field
from dreamperp.scene.renderer import (
    SHADING_MODES,
    ray_sphere,
    render,
    render_chunked,
    render_rays,
)
from dreamperp.scene.scene import Scene, pin_encoding, resolve_estimator

__all__ = [
    "Background",
    "Field",
    "FieldBase",
    "HashGridEncoding",
    "TorchHashGrid",
    "SHADING_MODES",
    "Scene",
    "pin_encoding",
    "ray_sphere",
    "render",
    "render_chunked",
    "render_rays",
    "resolve_estimator",
]
