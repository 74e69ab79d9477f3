"""Validation of a loaded config: every field's declared range/choices, then the cross-field rules.

Each rule is written once here; commands that take a prompt without a full validation (``sample``,
the guidance itself) call :func:`check_prompt` and :func:`check_concepts` (docs/design.md §12).
"""

from __future__ import annotations

import math
from dataclasses import fields, is_dataclass
from typing import Any, List, Optional, Sequence

from dreamperp.config.names import MESH_FORMATS, VIDEO_MODES
from dreamperp.config.schema import Config
from dreamperp.errors import ConfigError, UsageError


def check_prompt(prompt: str) -> None:
    """ConfigError unless ``prompt`` has text: text-to-3D and 2D sampling need one."""
    if not str(prompt).strip():
        raise ConfigError("prompt", 'is required: pass prompt="a photo of a corgi" or set it in the config file')


def check_concepts(concepts: Sequence[Any]) -> None:
    """ConfigError naming the first SEGA concept without a prompt."""
    for i, concept in enumerate(concepts):
        if not str(concept.prompt).strip():
            raise ConfigError(f"guidance.sega.concepts.{i}.prompt", "is required: every SEGA concept needs a prompt")


def _check_field(key: str, value: Any, meta: dict) -> None:
    if value is None:
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(key, f"must be a finite number, got {value}")
    if "choices" in meta and value not in meta["choices"]:
        choices = ", ".join(repr(c) for c in meta["choices"])
        raise ConfigError(key, f"must be one of {choices}, got {value!r}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "min" in meta and value < meta["min"]:
            raise ConfigError(key, f"must be >= {meta['min']}, got {value}")
        if "gt" in meta and value <= meta["gt"]:
            raise ConfigError(key, f"must be > {meta['gt']}, got {value}")
        if "max" in meta and value > meta["max"]:
            raise ConfigError(key, f"must be <= {meta['max']}, got {value}")
        if "lt" in meta and value >= meta["lt"]:
            raise ConfigError(key, f"must be < {meta['lt']}, got {value}")
        if "multiple_of" in meta and value % meta["multiple_of"] != 0:
            raise ConfigError(key, f"must be a multiple of {meta['multiple_of']}, got {value}")


def _walk(obj: Any, prefix: str = "") -> None:
    for f in fields(obj):
        key = f"{prefix}{f.name}"
        value = getattr(obj, f.name)
        _check_field(key, value, dict(f.metadata))
        if is_dataclass(value):
            _walk(value, key + ".")
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if is_dataclass(item):
                    _walk(item, f"{key}.{i}.")


def _check_range(key: str, value: List[float], lo: float = -math.inf, hi: float = math.inf) -> None:
    if len(value) != 2 or value[0] > value[1]:
        raise ConfigError(key, f"must be [min, max] with min <= max, got {list(value)}")
    if value[0] < lo or value[1] > hi:
        raise ConfigError(key, f"must lie within [{lo}, {hi}], got {list(value)}")


def validate(cfg: Config, *, require_prompt: bool = True) -> None:
    """Range, choice and cross-field checks. Raises :class:`ConfigError` naming the first bad key."""
    _walk(cfg)
    if require_prompt and cfg.data.type == "text":
        check_prompt(cfg.prompt)
    if cfg.data.type == "multiview" and not cfg.data.path:
        raise ConfigError("data.path", "is required for data.type=multiview: point it at a transforms.json")
    d = cfg.data
    _check_range("data.elevation_range", d.elevation_range, -90, 90)
    _check_range("data.azimuth_range", d.azimuth_range, -360, 360)
    _check_range("data.front_first_steps", d.front_first_steps, 0)
    _check_range("data.radius_range", d.radius_range, 1e-6)
    _check_range("data.fov_range", d.fov_range, 1e-3, 179)
    _check_range("render.light_distance_range", cfg.render.light_distance_range, 0)
    g = cfg.guidance
    if g.t_min > g.t_max:
        raise ConfigError("guidance.t_min", f"must be <= guidance.t_max ({g.t_max}), got {g.t_min}")
    if g.t_max_final < g.t_min:
        raise ConfigError("guidance.t_max_final", f"must be >= guidance.t_min ({g.t_min}), got {g.t_max_final}")
    if not g.model.strip():
        raise ConfigError("guidance.model", "is empty: use a hub id, a local folder, or 'tiny'")
    for name in ("f_sb", "f_fsb", "f_fs", "f_sf"):
        if len(getattr(g.perp_neg, name)) != 3:
            raise ConfigError(f"guidance.perp_neg.{name}", "must be three numbers [a, b, c] of a*exp(-b*r)+c")
    check_concepts(g.sega.concepts)
    if len(cfg.scene.background_color) != 3 or not all(0 <= c <= 1 for c in cfg.scene.background_color):
        raise ConfigError(
            "scene.background_color", f"must be three numbers in [0, 1], got {list(cfg.scene.background_color)}"
        )
    if cfg.scene.max_resolution < cfg.scene.base_resolution:
        raise ConfigError("scene.max_resolution", "must be >= scene.base_resolution")
    if len(cfg.trainer.betas) != 2 or not all(0 <= b < 1 for b in cfg.trainer.betas):
        raise ConfigError("trainer.betas", f"must be two numbers in [0, 1), got {list(cfg.trainer.betas)}")
    for fmt in cfg.export.formats:
        if fmt not in MESH_FORMATS:
            raise ConfigError("export.formats", f"unknown format {fmt!r}: use glb, obj or ply")
    for mode in cfg.export.video_modes:
        if mode not in VIDEO_MODES:
            raise ConfigError("export.video_modes", f"unknown mode {mode!r}: use rgb, normal, depth or opacity")
    parse_threshold(cfg.export.threshold)


def parse_threshold(value: Any, flag: Optional[str] = None) -> Optional[float]:
    """'auto' (or None) → None, else a finite float; anything else is a ConfigError for
    export.threshold, or a UsageError naming ``flag`` (a command-line flag) when given."""
    if value is None or str(value).strip().lower() == "auto":
        return None
    try:
        level = float(value)
    except (TypeError, ValueError):
        level = math.nan
    if not math.isfinite(level):
        if flag is not None:
            raise UsageError(f"{flag} must be 'auto' or a number, got {value!r}")
        raise ConfigError("export.threshold", f"must be 'auto' or a number, got {value!r}")
    return level
