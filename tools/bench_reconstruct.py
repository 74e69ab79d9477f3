#!/usr/bin/env python
"""Reconstruction benchmark: synthetic dataset → `dreamperp train` (multiview) → `dreamperp render`
on the held-out poses → PSNR.

    python tools/bench_reconstruct.py [--work DIR] [--config configs/reconstruct.yaml] [KEY=VALUE ...]

Steps (each timed): build the dataset of tools/make_synthetic_dataset.py (40 training and 10
held-out views at 64×64), train with ``data.path=<dataset>/train/transforms.json`` plus any
overrides given, render the run at ``<dataset>/test/transforms.json``, and compare with the held-out
images composited on the run's ``data.background``. Prints a table and the PSNR (mean over views of
``10·log10(1 / MSE)`` on 8-bit RGB in [0, 1], as NeRF papers report it). Target: >= 28 dB with
training under 5 minutes on a 2-core CPU. Exit status 1 when ``--min-psnr`` is given and missed.
"""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

from make_synthetic_dataset import make_dataset  # noqa: E402

BACKGROUNDS = {"white": 1.0, "black": 0.0, "random": 1.0}


def run(cmd: list[str]) -> float:
    """Run a command (streaming its output); returns its wall time. Exits on failure."""
    print("$", " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd)
    if proc.returncode != 0:
        sys.exit(f"command failed with exit code {proc.returncode}: {' '.join(cmd)}")
    return time.perf_counter() - t0


def psnr_table(gt_dir: Path, pred_dir: Path, background: float) -> list[tuple[str, float]]:
    """(view name, PSNR dB) for every held-out image."""
    from PIL import Image

    rows = []
    for gt_path in sorted(gt_dir.glob("r_*.png")):
        rgba = np.asarray(Image.open(gt_path).convert("RGBA"), dtype=np.float64) / 255
        gt = rgba[..., :3] * rgba[..., 3:] + background * (1 - rgba[..., 3:])
        gt = np.round(gt * 255) / 255  # the renders are 8-bit too
        pred_path = pred_dir / gt_path.name
        if not pred_path.is_file():
            sys.exit(f"render missing: {pred_path}")
        pred = np.asarray(Image.open(pred_path).convert("RGB"), dtype=np.float64) / 255
        if pred.shape != gt.shape:
            sys.exit(f"{pred_path}: size {pred.shape[:2]} differs from the held-out image {gt.shape[:2]}")
        mse = float(np.mean((pred - gt) ** 2))
        rows.append((gt_path.stem, 10 * math.log10(1.0 / max(mse, 1e-10))))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description="Multi-view reconstruction benchmark (PSNR on held-out views).")
    parser.add_argument("overrides", nargs="*", help="extra config overrides for dreamperp train, e.g. trainer.max_steps=500")
    parser.add_argument("--config", default=str(ROOT / "dreamperp" / "configs" / "reconstruct.yaml"), help="training config (default configs/reconstruct.yaml)")
    parser.add_argument("--work", help="working folder (default: a new temporary folder)")
    parser.add_argument("--min-psnr", type=float, help="exit with status 1 when the mean PSNR is below this")
    args = parser.parse_args()

    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="dreamperp-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    data, runs, renders = work / "dataset", work / "runs", work / "renders"
    dreamperp = [sys.executable, "-m", "dreamperp"]

    t0 = time.perf_counter()
    train_json, test_json = make_dataset(data)
    t_data = time.perf_counter() - t0

    before = set(runs.glob("*/*")) if runs.exists() else set()
    t_train = run(dreamperp + ["train", args.config, f"data.path={train_json}", f"output_dir={runs}", "name=bench", *args.overrides])
    new = sorted(set(runs.glob("*/*")) - before)
    if len(new) != 1:
        sys.exit(f"expected one new run folder under {runs}, found {len(new)}")
    run_dir = new[0]

    from omegaconf import OmegaConf

    background = BACKGROUNDS[str(OmegaConf.load(run_dir / "config.yaml").data.background)]
    out = renders / run_dir.name
    t_render = run(dreamperp + ["render", str(run_dir), "--cameras", str(test_json), "--out", str(out)])

    rows = psnr_table(test_json.parent, out, background)
    mean = sum(p for _, p in rows) / len(rows)
    print()
    print(f"{'view':<10} {'PSNR (dB)':>10}")
    for name, p in rows:
        print(f"{name:<10} {p:>10.2f}")
    print(f"{'mean':<10} {mean:>10.2f}")
    print()
    print(f"{'stage':<10} {'wall (s)':>10}")
    for name, t in (("dataset", t_data), ("train", t_train), ("render", t_render)):
        print(f"{name:<10} {t:>10.1f}")
    print(f"\nPSNR {mean:.2f} dB on {len(rows)} held-out views; training {t_train:.0f} s; run {run_dir}")
    if args.min_psnr is not None and mean < args.min_psnr:
        print(f"below the target of {args.min_psnr} dB", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
