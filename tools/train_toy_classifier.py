"""Train the toy-world view / family / colour classifier and print its held-out accuracy.

Training images are fresh ground-truth toy renders with every view equally likely (azimuth uniform
over the circle, elevation from the text-to-3D training range, 15% overhead views; each pose in
every colour), augmented so
the classifier also reads NeRF-like renders: random blur, colour / brightness / contrast jitter and
background tint, small shifts and zooms, pixel noise, mirror flips (the objects are mirror-symmetric,
so a flip is the mirrored azimuth and keeps the view). Held-out images are rendered from another seed.

Views by true angles: overhead when elevation > 60°, else front for |azimuth| < 45°, side for
45°-135°, back above 135° (``research.toy.world.view_of``).

    python tools/train_toy_classifier.py --out dreamperp/toy/weights/toy-classifier
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from dreamperp.cameras import make_cameras  # noqa: E402
from dreamperp.config import DataConfig  # noqa: E402
from research.toy.classifier import HEADS, ToyClassifier  # noqa: E402
from research.toy.world import (  # noqa: E402
    COLOURS,
    FAMILIES,
    OVERHEAD_ELEVATION_RANGE,
    OVERHEAD_MIN_ELEVATION,
    render,
    view_of,
)


def gt_renders(n: int, seed: int, size: int = 32, overhead_share: float = 0.15, chunk: int = 64) -> dict[str, torch.Tensor]:
    """``n`` renders with uniform views: images ``[n, 3, size, size]`` in [0, 1], view / family / colour ``[n]``, azimuth, elevation.

    Each drawn pose is rendered in every colour (ray casting once per pose), consecutively.
    """
    g = torch.Generator().manual_seed(seed)
    data = DataConfig()
    k = len(COLOURS)
    m = -(-n // k)
    family = torch.randint(len(FAMILIES), (m,), generator=g)
    azimuth = 360 * torch.rand(m, generator=g) - 180
    lo, hi = data.elevation_range
    elev = (lo + (hi - lo) * torch.rand(m, generator=g)).clamp(max=OVERHEAD_MIN_ELEVATION - 1e-3)
    olo, ohi = OVERHEAD_ELEVATION_RANGE
    over = torch.rand(m, generator=g) < overhead_share
    elevation = torch.where(over, olo + (ohi - olo) * torch.rand(m, generator=g), elev)
    radius = data.radius_range[0] + (data.radius_range[1] - data.radius_range[0]) * torch.rand(m, generator=g)
    fovy = data.fov_range[0] + (data.fov_range[1] - data.fov_range[0]) * torch.rand(m, generator=g)
    light_noise = 0.35 * torch.randn(m, 3, generator=g)
    colours = torch.arange(k).repeat(m, 1)
    images = []
    for i in range(0, m, chunk):
        sl = slice(i, i + chunk)
        cams = make_cameras(elevation[sl], azimuth[sl], radius[sl], fovy[sl], size, size)
        light = cams.position / cams.radius[:, None] + torch.tensor([0.0, 0.0, 0.5]) + light_noise[sl]
        images.append(render(family[sl], colours[sl], cams, light_dir=light).reshape(-1, 3, size, size))

    def rep(x: torch.Tensor) -> torch.Tensor:  # pose values repeated for each of its colours
        return x.repeat_interleave(k, 0)[:n]

    return {
        "images": torch.cat(images)[:n],
        "view": rep(view_of(azimuth, elevation)),
        "family": rep(family),
        "colour": colours.reshape(-1)[:n],
        "azimuth": rep(azimuth),
        "elevation": rep(elevation),
    }


def augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """NeRF-like perturbations of ``[B, 3, H, W]`` images in [0, 1] (see the module docstring)."""
    b, _, h, w = x.shape
    # Mirror flip.
    flip = torch.rand(b, generator=g) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    # Zoom 0.85-1.15 and shifts up to 2 px, white outside the image.
    zoom = 0.85 + 0.3 * torch.rand(b, generator=g)
    shift = (torch.rand(b, 2, generator=g) * 2 - 1) * (2.0 / (w / 2))
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = 1 / zoom
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x - 1, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + 1
    # Gaussian blur, sigma 0-1.2 px per image (separable, one kernel per image).
    sigma = 1.2 * torch.rand(b, generator=g) ** 1.5 + 1e-3
    r = torch.arange(-3, 4, dtype=torch.float32)
    k = torch.exp(-0.5 * (r[None] / sigma[:, None]) ** 2)
    k = (k / k.sum(-1, keepdim=True)).repeat_interleave(3, 0)  # [B*3, 7]
    y = x.reshape(1, b * 3, h, w)
    y = F.conv2d(F.pad(y, (3, 3, 0, 0), mode="replicate"), k[:, None, None, :], groups=b * 3)
    y = F.conv2d(F.pad(y, (0, 0, 3, 3), mode="replicate"), k[:, None, :, None], groups=b * 3)
    x = y.reshape(b, 3, h, w)
    # Colour: per-channel gain, brightness, contrast around grey, and a background tint.
    gain = 1 + 0.08 * (torch.rand(b, 3, 1, 1, generator=g) * 2 - 1)
    bright = 0.06 * (torch.rand(b, 1, 1, 1, generator=g) * 2 - 1)
    contrast = 1 + 0.15 * (torch.rand(b, 1, 1, 1, generator=g) * 2 - 1)
    x = (x * gain - 0.5) * contrast + 0.5 + bright
    x = x + 0.02 * torch.randn(x.shape, generator=g)
    return x.clamp(0, 1)


def accuracy(model: ToyClassifier, data: dict[str, torch.Tensor], batch: int = 512) -> dict[str, float]:
    correct = {k: 0 for k in HEADS}
    n = len(data["view"])
    for i in range(0, n, batch):
        pred = model.predict(data["images"][i:i + batch])
        for k in HEADS:
            correct[k] += int((pred[k] == data[k][i:i + batch]).sum())
    return {k: correct[k] / n for k in HEADS}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(ROOT / "dreamperp" / "toy" / "weights" / "toy-classifier"), help="folder to write (replaced)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-images", type=int, default=8000)
    p.add_argument("--test-images", type=int, default=1200)
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    t0 = time.time()
    train = gt_renders(args.train_images, seed=1000 + args.seed)
    test = gt_renders(args.test_images, seed=2000 + args.seed)
    print(f"rendered {args.train_images} + {args.test_images} images in {time.time() - t0:.0f} s", flush=True)
    model = ToyClassifier()
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    warm = max(1, args.steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: min(1.0, (i + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(i, args.steps) / args.steps)))
    g = torch.Generator().manual_seed(args.seed)
    t1 = time.time()
    for step in range(1, args.steps + 1):
        idx = torch.randint(args.train_images, (args.batch_size,), generator=g)
        x = augment(train["images"][idx], g)
        out = model(x)
        loss = sum(F.cross_entropy(out[k], train[k][idx], label_smoothing=0.05) for k in HEADS)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 250 == 0 or step == args.steps:
            acc = accuracy(model, {k: v[:500] for k, v in test.items()})
            print(f"step {step} loss {loss.item():.3f} held-out(500) {json.dumps(acc)} ({time.time() - t1:.0f} s)", flush=True)
    model.eval()
    acc = accuracy(model, test)
    gen = torch.Generator().manual_seed(99)
    acc_aug = accuracy(model, {**test, "images": augment(test["images"], gen)})
    print(f"held-out accuracy on {args.test_images} fresh renders: " + ", ".join(f"{k} {100 * v:.1f}%" for k, v in acc.items()))
    print("held-out accuracy, augmented (NeRF-like): " + ", ".join(f"{k} {100 * v:.1f}%" for k, v in acc_aug.items()))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        model.save(tmp)
        (tmp / "accuracy.json").write_text(json.dumps({"held_out": acc, "held_out_augmented": acc_aug, "test_images": args.test_images,
                                                       "train_images": args.train_images, "steps": args.steps, "seed": args.seed}, indent=2) + "\n")
        os.chmod(tmp, 0o755)
        for f in tmp.rglob("*"):  # safetensors writes files private too
            os.chmod(f, 0o755 if f.is_dir() else 0o644)
        if out.exists():
            shutil.rmtree(out)
        os.rename(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"wrote {out} ({time.time() - t0:.0f} s in all)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
