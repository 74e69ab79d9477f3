"""2D SDS probe: can the prior's guided score paint a toy object's face on a single image? (docs/design.md §10)

Text-to-3D trains a NeRF with the SDS gradient of many random views. This probe isolates the prior
from the 3D part: it optimises ONE image, the toy object's front view (azimuth 0, elevation 15°,
radius 1.55, fov 42°, the middle of ``configs/toy.yaml``'s cameras), with the same guided score
(``GuidedScore.sds``: the config's Perp-Neg / view prompts, guidance scale, timestep range) and
reports what the toy classifier sees. If the prior cannot paint the face here, no 3D recipe will;
if it can, what is missing in 3D is the 3D part.

The image is the start picture's logits, optimised with Adam (``--lr``) for ``--steps`` steps per
guidance scale, from the same seed. Start pictures (``--start``):

- ``face-off``: the ground-truth front render with its front parts (face, eyes, beak / muzzle /
  screen) painted over in the body colour: can the prior redraw them?
- ``disc``: a body-coloured disc on white, no shape and no face: can it draw the object?
- ``gt``: the ground-truth render itself: does the prior keep a right face?

Prints one row per guidance scale (the classifier's front-view, family and colour probabilities
of the result) and writes a strip ``--out`` (ground truth | start | one result per scale, 3x
nearest-neighbour upscaled, labelled)::

    python tools/probe_sds2d.py --prompt "a red bird" --scales 7.5,20 --out probe.png
    python tools/probe_sds2d.py --prompt "a blue robot" --model DIR --start disc --out probe.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from dreamperp.cameras import make_cameras  # noqa: E402
from dreamperp.config import load_config  # noqa: E402
from dreamperp.errors import DreamperpError  # noqa: E402
from dreamperp.files import atomic_write_bytes  # noqa: E402
from dreamperp.guidance.prior import load_prior  # noqa: E402
from dreamperp.images import labeled_grid, png_bytes, to_uint8  # noqa: E402
from dreamperp.models.loading import load_components  # noqa: E402
from research.toy import world  # noqa: E402
from research.toy.janus import classify_frames, parse_toy_prompt  # noqa: E402

STARTS = ("face-off", "disc", "gt")
FRONT_PARTS = ("face", "eye", "front")
# The probe camera: the middle of configs/toy.yaml's training cameras, looking at the front.
ELEVATION, RADIUS, FOV = 15.0, 1.55, 42.0


def start_images(family: int, colour: int, size: int, start: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ground truth, start)`` images ``[1, 3, size, size]`` in [0, 1] of the toy object's front view."""
    cams = make_cameras(torch.tensor([ELEVATION]), torch.tensor([0.0]), torch.tensor([RADIUS]), torch.tensor([FOV]), size, size)
    gt, parts = world.render(torch.tensor([family]), torch.tensor([colour]), cams, return_parts=True)
    body = torch.tensor(world.COLOURS[world.COLOUR_NAMES[colour]]).view(1, 3, 1, 1)
    if start == "gt":
        return gt, gt.clone()
    if start == "face-off":
        front = torch.zeros_like(parts, dtype=torch.bool)
        for name in FRONT_PARTS:
            front |= parts == world.PART[name]
        # Parts are at the supersampled size: area-average to a per-pixel share of front parts.
        share = F.adaptive_avg_pool2d(front.float()[:, None], size)
        return gt, gt * (1 - share) + 0.9 * body * share  # 0.9: about the lit body's shade
    if start == "disc":
        yy, xx = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
        disc = (((yy - size / 2) ** 2 + (xx - size / 2) ** 2).sqrt() < 0.35 * size).float().view(1, 1, size, size)
        return gt, (1 - disc) + 0.8 * body * disc
    raise ValueError(f"unknown start {start!r}: use one of {', '.join(STARTS)}")


def optimise(prior: Any, image: torch.Tensor, steps: int, lr: float, seed: int) -> torch.Tensor:
    """``image [1, 3, H, W]`` in [0, 1] after ``steps`` Adam steps on its logits under the guidance from the front."""
    torch.manual_seed(seed)
    logits = torch.logit(image.clamp(0.02, 0.98)).clone().requires_grad_(True)
    opt = torch.optim.Adam([logits], lr=lr)
    az, el = torch.tensor([0.0]), torch.tensor([ELEVATION])
    state = None
    for step in range(steps):
        out = prior(torch.sigmoid(logits), az, el, step=step, state=state)
        loss, state = out["loss_sds"], out["state"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return torch.sigmoid(logits).detach()


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prompt", default="a red bird", help='a toy prompt, "a {red|green|blue|yellow} {bird|cat|robot}"')
    p.add_argument("--config", default=str(ROOT / "dreamperp" / "configs" / "toy.yaml"), help="config whose guidance section is used")
    p.add_argument("--model", default=None, help="override guidance.model (default: the config's, 'toy')")
    p.add_argument("--start", default="face-off", choices=STARTS, help="start picture (see above)")
    p.add_argument("--scales", default="7.5", help="comma-separated guidance scales, one result each")
    p.add_argument("--steps", type=int, default=300, help="Adam steps per scale")
    p.add_argument("--lr", type=float, default=0.05, help="Adam learning rate on the image logits")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--classifier", default=None, help="toy classifier folder (default dreamperp/toy/weights/toy-classifier)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="extra config override (repeatable)")
    p.add_argument("--out", default="probe-sds2d.png", help="strip PNG to write")
    args = p.parse_args(argv)
    try:
        args.scales = [float(s) for s in str(args.scales).split(",") if s.strip()]
    except ValueError:
        p.error(f"--scales: expected comma-separated numbers, got {args.scales!r}")
    if not args.scales or args.steps < 1:
        p.error("--scales needs at least one scale and --steps at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        from dreamperp.toy.assets import toy_asset_path
        from research.toy.classifier import ToyClassifier

        family, colour = parse_toy_prompt(args.prompt)
        classifier = ToyClassifier.load(args.classifier or toy_asset_path("toy-classifier"))
        overrides = list(args.overrides) + ([f"guidance.model={args.model}"] if args.model else [])
        cfg = load_config(args.config, [f"prompt={args.prompt}"] + overrides)
        components = load_components(cfg.guidance.model, "cpu", cfg.guidance.dtype)  # once for every scale
        results = []
        gt = start = None
        for scale in args.scales:
            cfg.guidance.scale = scale
            prior = load_prior(cfg.guidance, cfg.prompt, cfg.negative_prompt, "cpu", components)
            if gt is None:
                gt, start = start_images(family, colour, prior.resolution, args.start)
            results.append(optimise(prior, start, args.steps, args.lr, args.seed))
    except DreamperpError as err:
        print(f"probe_sds2d: {err}", file=sys.stderr)
        return 2
    assert gt is not None and start is not None
    probs = classify_frames(classifier, torch.cat(results))
    print(f"{args.prompt!r}, start {args.start}, {args.steps} steps, lr {args.lr}: the classifier on each result")
    print("| scale | front view | family | colour |\n|---|---|---|---|")
    for i, scale in enumerate(args.scales):
        print(f"| {scale:g} | {probs['view'][i, 0]:.2f} | {probs['family'][i, family]:.2f} | {probs['colour'][i, colour]:.2f} |")
    tiles = torch.cat([gt, start] + results)
    tiles = F.interpolate(tiles, scale_factor=3, mode="nearest").permute(0, 2, 3, 1)
    row = Path(args.model).name if args.model else "toy"
    strip = labeled_grid(to_uint8(tiles)[None], ["truth", args.start] + [f"s {s:g}" for s in args.scales], [row[:8]])
    atomic_write_bytes(Path(args.out), png_bytes(np.ascontiguousarray(strip)))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
