"""Reconstruction quality, fast variant of tools/bench_reconstruct.py (issue 4): the synthetic
dataset of tools/make_synthetic_dataset.py → `dreamperp train configs/reconstruct.yaml` (multiview)
→ `dreamperp render` at the held-out poses → PSNR against the held-out images; then `dreamperp export`
→ the mesh's fidelity against the scene."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import imageio.v3 as iio
import numpy as np
from omegaconf import OmegaConf

from dreamperp.cli import main

ROOT = Path(__file__).resolve().parents[1]


def _bench_module() -> ModuleType:
    """tools/bench_reconstruct.py, for its dataset builder, PSNR table and background values."""
    spec = importlib.util.spec_from_file_location("bench_reconstruct", ROOT / "tools" / "bench_reconstruct.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_reconstruction_reaches_psnr_on_held_out_views(tmp_path: Path) -> None:
    bench = _bench_module()
    train_json, test_json = bench.make_dataset(tmp_path / "data", n_train=24, n_test=4, size=32, seed=0)
    out = tmp_path / "runs"
    # A short run of the shipped config: fewer steps, rays and samples and a smaller hash grid than
    # the 1000-step benchmark (~34 dB at 64x64), so training takes ~7 s on 2 cores.
    argv = [
        "train", str(ROOT / "dreamperp" / "configs" / "reconstruct.yaml"), f"data.path={train_json}", f"output_dir={out}", "device=cpu",
        "trainer.max_steps=200", "data.rays_per_step=512", "render.num_samples=32",
        "scene.levels=8", "scene.log2_table_size=14", "scene.max_resolution=128",
        "trainer.val_every=200", "trainer.checkpoint_every=200", "trainer.log_every=50", "trainer.val_size=32",
        "trainer.progress=false",
    ]
    assert main(argv) == 0
    runs = [p for p in out.glob("*/*") if p.is_dir()]
    assert len(runs) == 1, runs
    run = runs[0]

    renders = tmp_path / "renders"
    assert main(["render", str(run), "--cameras", str(test_json), "--out", str(renders)]) == 0
    names = sorted(p.name for p in test_json.parent.glob("r_*.png"))
    assert sorted(p.name for p in renders.glob("*.png")) == names and len(names) == 4
    for name in names:
        image = iio.imread(renders / name)
        assert image.shape == (32, 32, 3) and image.dtype == np.uint8

    background = bench.BACKGROUNDS[str(OmegaConf.load(run / "config.yaml").data.background)]
    assert background == 1.0  # configs/reconstruct.yaml composites on white
    psnr = [p for _, p in bench.psnr_table(test_json.parent, renders, background)]
    assert len(psnr) == 4
    # Measured: mean 30.31 dB (min view 28.3) with seed 0, 29.85-30.31 dB over training seeds 0-2
    # (29.75-30.33 over seeds 0-4 before the distortion loss); 12.0 dB after 1 step, 10 dB for a
    # blank white image. Bars leave ~4 dB of margin.
    assert float(np.mean(psnr)) >= 26.0, psnr
    assert min(psnr) >= 24.0, psnr

    # The mesh of the same run against its scene (docs/design.md §14), from the 8 fidelity views.
    # Measured, training seeds 0-2: worst-view IoU 0.925-0.942, PSNR 22.8-23.6 dB (ceiling of an
    # opaque surface 26.6-26.9): this 200-step field is softer than the 1000-step benchmark run, whose mesh meets the targets
    # (IoU >= 0.9 and PSNR >= 25 dB on every view; docs/benchmarks.md, "Mesh export").
    assert main(["export", str(run), "--resolution", "64", "--faces", "5000", "--texture-size", "256"]) == 0
    record = json.loads((run / "export" / "fidelity.json").read_text())
    views = [(round(v["iou"], 3), round(v["psnr"], 1), round(v["psnr_ceiling"], 1)) for v in record["views"]]
    assert len(views) == 8 and min(v["iou"] for v in record["views"]) >= 0.9, views
    assert min(v["psnr"] for v in record["views"]) >= 21.5, views
    assert record["seen_area"] >= 0.95
