"""The 2D view benchmark on the toy world (the Perp-Neg paper's 2D experiment; docs/design.md §3, §10).

For every family x colour of the toy world, ask the toy prior for the side and the back view with
several samplers and the SAME seeds (sample i of a prompt and view starts from the same noise under
every sampler), classify every sample with the toy classifier, and report per sampler and asked view:

- success: the classifier sees the asked view AND the right family and colour;
- identity: the right family and colour, whatever the view;
- the share of each predicted view (a "back view" that comes out as a front is the Janus bias).

Samplers (the guided score of dreamperp.guidance.score, as `dreamperp sample` and SDS use it):

- ``view-prompt``: the plain view prompt ("a red bird, back view") with classifier-free guidance;
- ``plain-negatives``: the other views' prompts subtracted without projection (composable
  diffusion, ``guidance.perp_neg.projection: false``), threestudio weights at that azimuth;
- ``perp-neg``: Perp-Neg with the threestudio schedule's weights at that azimuth;
- ``perp-neg-sdf``: Perp-Neg with the stable-dreamfusion schedule's weights.

Writes ``OUT/bench_views.json`` (the table, settings and timing) and ``OUT/grid-<sampler>.png``
(rows: prompts; columns: the samples of each asked view). Without a classifier (none trained yet)
the images and timings are still produced and the rates are reported as pending (null).

    python tools/bench_views.py --out benchmarks/views            # full: 16 samples, 15 DDIM steps
    python tools/bench_views.py --quick --out /tmp/bench-views       # smoke test: 2 samples, 2 steps
    python tools/bench_views.py --view-directions --out benchmarks/views   # how far apart the view prompts point

``--view-directions`` measures what Perp-Neg has to work with, without sampling: toy renders of each
prompt's object (front, side and back, eval camera) are noised at t = 300, 600, 900 and the prior's
ε is taken for "", the prompt, and the prompt with each view suffix. Per t it reports, averaged over
prompts and renders: the suffix effect ``|ε(p, v) − ε(p)| / |ε(p) − ε("")|`` per view (0: the suffix
is ignored), and the cosine between the front and back directions ``ε(p, v) − ε("")`` with the share
of the back direction perpendicular to the front one, ``sqrt(1 − cos²)`` (what Perp-Neg keeps when
it subtracts the front). Written to ``OUT/view_directions.json``.

Cost: per prompt and step the UNet sees 2 (view-prompt) + 4 + 4 + 4 rows per sample, 2 views x 16
samples: 448 rows; 12 prompts x 15 steps = 80,640 rows of the 32x32 toy UNet. Measured on the
shared 2-core CPU (one prompt, all samplers, 20 steps): 469 s wall at load 5-8, 280 CPU-seconds;
an idle machine is estimated at 10-22 minutes for the full default run. ``--samplers
view-prompt,plain-negatives,perp-neg`` saves 2/7 of it, ``--steps`` scales it linearly.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch

# As the CLI: OpenMP workers that spin between the many small ops cost a lot on a busy CPU (set before torch starts).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from dreamperp.config import GuidanceConfig, PerpNegConfig, SampleConfig  # noqa: E402
from dreamperp.errors import DreamperpError  # noqa: E402
from dreamperp.guidance.backends import make_backend  # noqa: E402
from dreamperp.guidance.score import GuidedScore  # noqa: E402
from dreamperp.guidance.views import VIEWS, named_view_mix  # noqa: E402
from dreamperp.images import labeled_grid, to_uint8  # noqa: E402
from dreamperp.models.loading import load_components  # noqa: E402
from dreamperp.sample import denoise  # noqa: E402

#: sampler name → Perp-Neg settings (enabled False: the nearest view's prompt, no negatives).
SAMPLERS: Dict[str, Dict[str, Any]] = {
    "view-prompt": dict(enabled=False),
    "plain-negatives": dict(enabled=True, projection=False, schedule="threestudio"),
    "perp-neg": dict(enabled=True, projection=True, schedule="threestudio"),
    "perp-neg-sdf": dict(enabled=True, projection=True, schedule="stable-dreamfusion"),
}
# The toy world's lists, used when research.toy is not importable (it then cannot classify either).
FALLBACK_FAMILIES = ("bird", "cat", "robot")
FALLBACK_COLOURS = ("red", "green", "blue", "yellow")


def toy_lists() -> tuple[Sequence[str], Sequence[str]]:
    """(families, colours) of the toy world."""
    try:
        from research.toy.world import COLOUR_NAMES, FAMILIES
    except ImportError:
        return FALLBACK_FAMILIES, FALLBACK_COLOURS
    return tuple(FAMILIES), tuple(COLOUR_NAMES)


def load_classifier(folder: Optional[str], device: torch.device) -> Any:
    """The toy classifier (``predict(images [N, 3, H, W] in [0, 1]) → {view, family, colour} indices``), or None."""
    if folder == "none":
        return None
    try:
        from research.toy.classifier import ToyClassifier
    except ImportError:
        return None
    if folder is None:
        try:
            from dreamperp.toy.assets import toy_asset_path

            folder = str(toy_asset_path("toy-classifier"))
        except (ImportError, DreamperpError):
            return None
    return ToyClassifier.load(folder, device)


def class_names() -> tuple[Sequence[str], Sequence[str], Sequence[str]]:
    """(views, families, colours) in the classifier's index order."""
    try:
        from research.toy.captions import VIEWS as TOY_VIEWS
    except ImportError:
        TOY_VIEWS = VIEWS
    fam, col = toy_lists()
    return tuple(TOY_VIEWS), fam, col


def rates(pred: Dict[str, torch.Tensor], view: str, family: str, colour: str) -> Dict[str, Any]:
    """Success/identity counts of one cell's predictions (indices into the classifier's classes)."""
    views, families, colours = class_names()
    ident = (pred["family"] == families.index(family)) & (pred["colour"] == colours.index(colour))
    ok_view = pred["view"] == views.index(view)
    return {
        "n": int(ident.numel()),
        "success": int((ident & ok_view).sum()),
        "identity": int(ident.sum()),
        "views": {v: int((pred["view"] == i).sum()) for i, v in enumerate(views)},
    }


def run(args: argparse.Namespace) -> Dict[str, Any]:
    device = torch.device(args.device)
    families, colours = toy_lists()
    if args.families:
        families = args.families.split(",")
    if args.colours:
        colours = args.colours.split(",")
    views = args.views.split(",")
    samplers = args.samplers.split(",")
    for name in samplers:
        if name not in SAMPLERS:
            raise SystemExit(f"unknown sampler {name!r}: use {', '.join(SAMPLERS)}")
    classifier = load_classifier(args.classifier, device)
    comp = load_components(args.model, device, "float32")
    base = GuidanceConfig(model=args.model, scale=args.scale, dtype="float32")
    backend = make_backend(base, device, comp)
    # Channels-last convolutions are ~20% cheaper on this CPU (measured on the toy prior at batch 128).
    backend.unet.to(memory_format=torch.channels_last)
    sample_cfg = SampleConfig(steps=args.steps, scheduler=args.scheduler)
    n = args.samples
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)

    cells: Dict[str, Dict[str, Any]] = {}
    totals: Dict[str, Dict[str, Dict[str, Any]]] = {}
    seconds: Dict[str, float] = {}
    t_start = time.perf_counter()
    for sampler in samplers:
        pn = PerpNegConfig(**SAMPLERS[sampler])
        cfg = GuidanceConfig(model=args.model, scale=args.scale, dtype="float32", perp_neg=pn, view_dependent=True)
        tiles: List[np.ndarray] = []
        row_names: List[str] = []
        t0 = time.perf_counter()
        for p_idx, (family, colour) in enumerate((f, c) for f in families for c in colours):
            prompt = f"a {colour} {family}"
            score = GuidedScore(backend, cfg, prompt)
            mixes = [named_view_mix(v, n, pn, 0.0, use_perp_neg=pn.enabled) for v in views]
            pos_mix = torch.cat([m[0] for m in mixes])
            neg_weights = torch.cat([m[1] for m in mixes])
            # The seed depends on the prompt only: every sampler starts sample i of a view from the same noise.
            images = denoise(score, sample_cfg, pos_mix, neg_weights, n * len(views), args.seed + 1000 * p_idx)  # [V*n, H, W, 3]
            with torch.no_grad():
                chw = torch.from_numpy(images).permute(0, 3, 1, 2).to(device)
                pred = classifier.predict(chw) if classifier is not None else None
            for v_idx, view in enumerate(views):
                key = f"{sampler}/{view}/{prompt}"
                if pred is not None:
                    sl = slice(v_idx * n, (v_idx + 1) * n)
                    cells[key] = rates({k: t[sl].cpu() for k, t in pred.items()}, view, family, colour)
            tiles.append(to_uint8(images))
            row_names.append(f"{colour[:1].upper()} {family}")
        seconds[sampler] = time.perf_counter() - t0
        totals[sampler] = summarise(cells, sampler, views) if classifier is not None else {}
        write_grid(out_dir / f"grid-{sampler}.png", np.stack(tiles), views, n, row_names, args.tile)
        print(f"{sampler}: {len(families) * len(colours) * len(views) * n} samples in {seconds[sampler]:.0f} s", file=sys.stderr)

    result = {
        "settings": {
            "model": args.model, "classifier": "none" if classifier is None else (args.classifier or "dreamperp/toy/weights/toy-classifier"),
            "families": list(families), "colours": list(colours), "views": views, "samples_per_cell": n, "steps": args.steps,
            "scheduler": args.scheduler, "scale": args.scale, "seed": args.seed, "device": str(device),
            "samplers": {s: SAMPLERS[s] for s in samplers},
        },
        "table": None if classifier is None else totals,
        "cells": cells,
        "seconds": {**seconds, "total": time.perf_counter() - t_start},
    }
    (out_dir / "bench_views.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return result


DIRECTION_TIMESTEPS = (300, 600, 900)
DIRECTION_VIEWS = ("front", "side", "back")


@torch.no_grad()
def view_directions(args: argparse.Namespace) -> Dict[str, Any]:
    """The view-direction measurement of ``--view-directions`` (see the module docstring)."""
    from dreamperp.cameras import make_cameras
    from dreamperp.config import DataConfig
    from research.toy.world import COLOUR_NAMES, FAMILIES, render

    device = torch.device(args.device)
    families, colours = toy_lists()
    families = args.families.split(",") if args.families else list(families)
    colours = args.colours.split(",") if args.colours else list(colours)
    comp = load_components(args.model, device, "float32")
    backend = make_backend(GuidanceConfig(model=args.model, dtype="float32"), device, comp)
    d = DataConfig()
    azimuths = torch.tensor([0.0, 90.0, 180.0])  # one render per view the prompts name
    k = len(azimuths)
    cams = make_cameras(torch.full((k,), d.eval_elevation), azimuths, torch.full((k,), d.eval_radius), torch.full((k,), d.eval_fov), 32, 32)
    suffixes = [""] + [f", {v} view" for v in DIRECTION_VIEWS]
    per_t: Dict[int, Dict[str, List[float]]] = {t: {"cos_front_back": [], **{f"suffix_{v}": [] for v in DIRECTION_VIEWS}} for t in DIRECTION_TIMESTEPS}
    gen = torch.Generator().manual_seed(args.seed)
    for family in families:
        for colour in colours:
            prompt = f"a {colour} {family}"
            fam = torch.full((k,), FAMILIES.index(family))
            col = torch.full((k,), COLOUR_NAMES.index(colour))
            x0 = backend.encode_images(render(fam, col, cams.to(device)).to(device))  # [k, C, H, W]
            texts = [""] + [prompt + s for s in suffixes]
            emb = backend.encode_text(texts)  # [T, L, D]: "", p, p+front, p+side, p+back
            n_text = emb.shape[0]
            for t in DIRECTION_TIMESTEPS:
                a = backend.alphas_cumprod[t]
                noise = torch.randn(x0.shape, generator=gen).to(device)
                x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
                x_in = x_t.repeat_interleave(n_text, 0)  # image-major: [k * T, C, H, W]
                tt = torch.full((x_in.shape[0],), t, device=device)
                out = backend.unet(x_in, tt, encoder_hidden_states=emb.repeat(k, 1, 1)).sample
                eps = backend.to_epsilon(out, x_in, tt).double().flatten(1).view(k, n_text, -1)
                uncond, plain = eps[:, 0], eps[:, 1]
                views = {v: eps[:, 2 + i] for i, v in enumerate(DIRECTION_VIEWS)}
                base = (plain - uncond).norm(dim=-1)
                for v, e in views.items():
                    per_t[t][f"suffix_{v}"] += ((e - plain).norm(dim=-1) / base).tolist()
                front, back = views["front"] - uncond, views["back"] - uncond
                per_t[t]["cos_front_back"] += torch.nn.functional.cosine_similarity(front, back, dim=-1).tolist()
    table = {}
    for t, lists in per_t.items():
        row = {name: float(np.mean(xs)) for name, xs in lists.items()}
        row["perp_share_back"] = float(np.mean([np.sqrt(max(0.0, 1 - c * c)) for c in lists["cos_front_back"]]))
        table[str(t)] = row
    return {"settings": {"model": args.model, "families": families, "colours": colours, "timesteps": list(DIRECTION_TIMESTEPS),
                         "renders": "front/side/back (azimuth 0/90/180) at the eval camera", "seed": args.seed}, "table": table}


def print_directions(result: Dict[str, Any]) -> None:
    print("view directions of the prior (mean over prompts and renders):")
    print("| t | suffix effect: front | side | back | cos(front, back) | back ⟂ front |")
    print("|---|---|---|---|---|---|")
    for t, r in result["table"].items():
        print(f"| {t} | {r['suffix_front']:.3f} | {r['suffix_side']:.3f} | {r['suffix_back']:.3f} | {r['cos_front_back']:.4f} | {r['perp_share_back']:.1%} |")


def summarise(cells: Dict[str, Dict[str, Any]], sampler: str, views: Sequence[str]) -> Dict[str, Dict[str, Any]]:
    """Per asked view: success and identity rates and predicted-view shares over every prompt."""
    table: Dict[str, Dict[str, Any]] = {}
    for view in views:
        mine = [c for k, c in cells.items() if k.startswith(f"{sampler}/{view}/")]
        total = sum(c["n"] for c in mine)
        table[view] = {
            "n": total,
            "success_rate": sum(c["success"] for c in mine) / total,
            "identity_rate": sum(c["identity"] for c in mine) / total,
            "predicted_views": {v: sum(c["views"][v] for c in mine) / total for v in mine[0]["views"]},
        }
    return table


def write_grid(path: Path, tiles: np.ndarray, views: Sequence[str], n: int, row_names: List[str], size: int) -> None:
    """``tiles [prompts, views*n, S, S, 3]`` uint8 → one labelled PNG, tiles upscaled to ``size``."""
    from PIL import Image

    s = tiles.shape[2]
    if size > s:
        k = size // s
        tiles = tiles.repeat(k, axis=2).repeat(k, axis=3)  # nearest: keep the pixels the prior drew
    cols = [views[j // n] if j % n == 0 else "" for j in range(tiles.shape[1])]
    Image.fromarray(labeled_grid(tiles, cols, row_names)).save(path)


def print_table(result: Dict[str, Any]) -> None:
    table = result["table"]
    st = result["settings"]
    print(f"toy 2D view benchmark: {len(st['families'])} families x {len(st['colours'])} colours, {st['samples_per_cell']} samples each, "
          f"{st['steps']} {st['scheduler'] or 'model-scheduler'} steps, scale {st['scale']}")
    if table is None:
        print("rates: pending (no toy classifier: train it with python tools/train_toy_classifier.py --out dreamperp/toy/weights/toy-classifier)")
    else:
        views = st["views"]
        print("| sampler | " + " | ".join(f"{v}: success | {v}: identity | {v}: seen as front" for v in views) + " |")
        print("|---|" + "---|" * (3 * len(views)))
        for sampler, per_view in table.items():
            cells = []
            for v in views:
                r = per_view[v]
                cells += [f"{r['success_rate']:.0%}", f"{r['identity_rate']:.0%}", f"{r['predicted_views'].get('front', 0.0):.0%}"]
            print(f"| {sampler} | " + " | ".join(cells) + " |")
    print("seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in result["seconds"].items()))


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="toy", help="prior: 'toy' (dreamperp/toy/weights/toy-prior) or any guidance.model value")
    p.add_argument("--classifier", default=None, help="toy classifier folder (default dreamperp/toy/weights/toy-classifier; 'none': skip the rates)")
    p.add_argument("--samples", type=int, default=16, help="samples per family x colour x view (default 16)")
    p.add_argument("--steps", type=int, default=15, help="DDIM steps (default 15: the cost is rows x steps, see the module docstring)")
    p.add_argument("--scheduler", default="DDIMScheduler", help="diffusers scheduler class (default DDIMScheduler)")
    p.add_argument("--scale", type=float, default=7.5, help="guidance scale (default 7.5)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--views", default="side,back", help="asked views (default side,back)")
    p.add_argument("--samplers", default=",".join(SAMPLERS), help=f"comma-separated subset of {', '.join(SAMPLERS)}")
    p.add_argument("--families", default="", help="comma-separated subset of the toy families (default all)")
    p.add_argument("--colours", default="", help="comma-separated subset of the toy colours (default all)")
    p.add_argument("--tile", type=int, default=64, help="tile size in the sample grids (default 64)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--quick", action="store_true", help="smoke test: 2 samples, 2 steps")
    p.add_argument("--out", default="bench-views", help="output folder (bench_views.json, grid-<sampler>.png)")
    p.add_argument("--view-directions", action="store_true", help="only measure the view prompts' ε directions (no sampling): OUT/view_directions.json")
    args = p.parse_args(argv)
    if args.quick:
        args.samples, args.steps = 2, 2
    try:
        if args.view_directions:
            result = view_directions(args)
            out_dir = Path(args.out)
            out_dir.mkdir(parents=True, exist_ok=True)
            (out_dir / "view_directions.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
            print_directions(result)
            return 0
        result = run(args)
    except DreamperpError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print_table(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
