"""Names and constants the whole package shares, each written once (docs/design.md §1, §12).

The schema validates against them and takes its defaults from them; every other module imports
them from here (or from :mod:`dreamperp.config`), never writes them again.
"""

from __future__ import annotations

VIEW_NAMES = ("front", "side", "back", "overhead")  # the view prompts, validation columns and 2D view choices
DATA_BACKGROUNDS = ("white", "black", "random")  # multiview: what RGBA images are composited on
BACKGROUND_MODES = ("mlp", "solid", "random")  # the scene's background model
MESH_FORMATS = ("glb", "obj", "ply")
TEXTURE_SIZES = tuple(2**k for k in range(4, 14))  # baked texture sizes: 16 … 8192
VIDEO_MODES = ("rgb", "normal", "depth", "opacity")
VIDEO_FORMATS = ("mp4", "gif")  # turntable containers (``export.video_format``, ``dreamperp video --format``)

#: Perp-Neg negative-weight schedules (``guidance.perp_neg.schedule``), the first is the default.
PERPNEG_SCHEDULES = ("threestudio", "stable-dreamfusion")
#: The threestudio schedule's default (a, b, c) of ``a·exp(−b·r) + c`` per negative (``guidance.perp_neg.f_*``).
THREESTUDIO_DECAYS: dict[str, tuple[float, float, float]] = {
    "f_sb": (1.0, 0.5, -0.606),  # side negative, behind the side
    "f_fsb": (1.0, 0.5, 0.967),  # front negative, behind the side
    "f_fs": (4.0, 0.5, -2.426),  # front negative, in front of the side
    "f_sf": (4.0, 0.5, -2.426),  # side negative, in front of the side
}

#: Elevation in degrees above which a camera sees the overhead view: the default of
#: ``guidance.perp_neg.overhead_threshold`` and the toy world's view labels.
OVERHEAD_THRESHOLD_DEG = 60.0
#: The view rule's sectors by |azimuth|: front below FRONT_MAX_AZIMUTH_DEG, back above
#: BACK_MIN_AZIMUTH_DEG, side between (both bounds included in the side).
FRONT_MAX_AZIMUTH_DEG = 45.0
BACK_MIN_AZIMUTH_DEG = 135.0
