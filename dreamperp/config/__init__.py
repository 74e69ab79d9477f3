"""The run config: names, schema, validation and loading (docs/design.md §12).

``from dreamperp.config import Config, load_config`` is the entry point; the pieces live in
:mod:`~dreamperp.config.names` (shared names and constants), :mod:`~dreamperp.config.schema`
(the dataclasses and their defaults), :mod:`~dreamperp.config.validate` (the rules) and
:mod:`~dreamperp.config.load` (files, ``base:`` chains, overrides, YAML out).
"""

from dreamperp.config.load import BASE_KEY, config_chain, describe, flat_dict, load_config, to_yaml
from dreamperp.config.names import (
    BACK_MIN_AZIMUTH_DEG,
    BACKGROUND_MODES,
    DATA_BACKGROUNDS,
    FRONT_MAX_AZIMUTH_DEG,
    MESH_FORMATS,
    OVERHEAD_THRESHOLD_DEG,
    PERPNEG_SCHEDULES,
    TEXTURE_SIZES,
    THREESTUDIO_DECAYS,
    VIDEO_FORMATS,
    VIDEO_MODES,
    VIEW_NAMES,
)
from dreamperp.config.schema import (
    NOT_PART_OF_A_RUN,
    Config,
    DataConfig,
    ExportConfig,
    GuidanceConfig,
    LossConfig,
    PerpNegConfig,
    RenderConfig,
    SampleConfig,
    SceneConfig,
    SegaConcept,
    SegaConfig,
    TrainerConfig,
    opt,
)
from dreamperp.config.validate import check_concepts, check_prompt, parse_threshold, validate

__all__ = [
    "BACK_MIN_AZIMUTH_DEG",
    "BACKGROUND_MODES",
    "BASE_KEY",
    "DATA_BACKGROUNDS",
    "FRONT_MAX_AZIMUTH_DEG",
    "MESH_FORMATS",
    "NOT_PART_OF_A_RUN",
    "OVERHEAD_THRESHOLD_DEG",
    "PERPNEG_SCHEDULES",
    "TEXTURE_SIZES",
    "THREESTUDIO_DECAYS",
    "VIDEO_FORMATS",
    "VIDEO_MODES",
    "VIEW_NAMES",
    "Config",
    "DataConfig",
    "ExportConfig",
    "GuidanceConfig",
    "LossConfig",
    "PerpNegConfig",
    "RenderConfig",
    "SampleConfig",
    "SceneConfig",
    "SegaConcept",
    "SegaConfig",
    "TrainerConfig",
    "check_concepts",
    "check_prompt",
    "config_chain",
    "describe",
    "flat_dict",
    "load_config",
    "opt",
    "parse_threshold",
    "to_yaml",
    "validate",
]
