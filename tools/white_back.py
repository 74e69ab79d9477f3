"""Does a toy run's back show the background's colour? (docs/design.md §10)

The toy world is photographed on white, and SDS can draw a white front cue (the robot's chest
plate) as white that fills the body, so that it shows from behind as well. The Janus classifier
does not see it: composited on white, opaque white and empty space look the same. This tool
renders each run at a few azimuths (``data.eval_elevation``, the evaluation radius and fov, 64×64
by default) and reports, per azimuth, the share of the frame that is *opaque* (opacity > 0.5) and
near-white (every channel > 0.8): white material, not background::

    python tools/white_back.py RUN_DIR [RUN_DIR ...]
    python tools/white_back.py runs/perpneg-ts-robot-blue-s* --azimuths 0,180 --threshold 0.05

A run is flagged when a back frame (|azimuth| > 135°) has more than ``--threshold`` of it white.
The robot measurements of docs/toy-world.md (How the recipe was found) come from this tool on
the run folders of ``tools/bench_janus.py``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Dict, Sequence

import torch
from torch import Tensor

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from dreamperp.cameras import wrap_azimuth  # noqa: E402
from dreamperp.errors import DreamperpError  # noqa: E402
from research.toy.janus import BACK_SECTOR_DEG  # noqa: E402

OPAQUE = 0.5  # opacity above which a pixel is material
WHITE = 0.8  # every channel above this is white


def white_share(rgb: Tensor, opacity: Tensor, opaque: float = OPAQUE, white: float = WHITE) -> float:
    """Share of the pixels of ``rgb [H, W, 3]`` (albedo composited on any background) with
    ``opacity [H, W, 1]`` above ``opaque`` and every channel above ``white``."""
    material = opacity[..., 0] > opaque
    is_white = rgb.min(-1).values > white
    return float((material & is_white).float().mean())


def is_back(azimuth_deg: float) -> bool:
    """In the back sector of the Janus metrics: |azimuth| > BACK_SECTOR_DEG, wrapped to (-180, 180]."""
    return abs(float(wrap_azimuth(torch.tensor(float(azimuth_deg))))) > BACK_SECTOR_DEG


def score_run(run_dir: str | Path, azimuths: Sequence[float], size: int) -> Dict[float, float]:
    """Per azimuth, :func:`white_share` of the run's albedo render (newest checkpoint, CPU)."""
    from dreamperp.export.video import render_views
    from dreamperp.runs.checkpoint import load_run
    from research.toy.turntable import azimuth_cameras

    run = load_run(run_dir, device="cpu")
    cams = azimuth_cameras(run.cfg, azimuths, size)
    # Composited on white like the classifier's frames; the opacity test keeps the background out.
    views = render_views(run.scene, cams, torch.ones(3), need_normals=False)
    return {float(a): white_share(out["rgb"], out["opacity"]) for a, out in zip(azimuths, views)}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="run folders (dreamperp train outputs)")
    p.add_argument("--azimuths", default="0,90,150,180,210,270", help="comma-separated azimuths in degrees (0 = front)")
    p.add_argument("--size", type=int, default=64, help="render size in pixels (default 64)")
    p.add_argument("--threshold", type=float, default=0.05, help="flag a run whose back frame is more than this share white (default 0.05)")
    args = p.parse_args(argv)
    try:
        azimuths = [float(a) for a in args.azimuths.split(",") if a.strip()]
    except ValueError:
        p.error(f"--azimuths: expected comma-separated numbers, got {args.azimuths!r}")
    if not azimuths or args.size < 8:
        p.error("--azimuths needs at least one azimuth and --size at least 8")
    print("| run | " + " | ".join(f"{a:g}°" for a in azimuths) + " | white back |")
    print("|---|" + "---|" * (len(azimuths) + 1))
    flagged = 0
    for run in args.runs:
        try:
            shares = score_run(run, azimuths, args.size)
        except DreamperpError as err:
            print(f"white_back: {err}", file=sys.stderr)
            return 2
        back = [s for a, s in shares.items() if is_back(a)]
        white_back = bool(back) and max(back) > args.threshold
        flagged += white_back
        print(f"| {Path(run).name} | " + " | ".join(f"{s:.1%}" for s in shares.values()) + f" | {'yes' if white_back else 'no'} |")
    print(f"{flagged} of {len(args.runs)} runs show white from behind (a back frame over {args.threshold:.0%} white)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
