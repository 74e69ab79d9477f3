"""The 3D scene: hash-grid radiance field, background, and the volume renderer.

``Scene.from_config(cfg)`` builds everything; ``render`` / ``render_chunked`` draw rays from
:mod:`dreamperp.cameras`.
"""

from dreamperp.scene.background import Background
from dreamperp.scene.encoding import HashGridEncoding, TorchHashGrid
from dreamperp.scene.field import Field
from dreamperp.scene.renderer import (
    SHADING_MODES,
    Scene,
    choose_shading,
    pin_encoding,
    ray_sphere,
    render,
    render_chunked,
    resolve_estimator,
)

__all__ = [
    "Background",
    "Field",
    "HashGridEncoding",
    "TorchHashGrid",
    "SHADING_MODES",
    "Scene",
    "choose_shading",
    "pin_encoding",
    "ray_sphere",
    "render",
    "render_chunked",
    "resolve_estimator",
]
