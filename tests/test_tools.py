"""The step benchmark runs and prints its per-stage table (timings themselves are not asserted)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_step_prints_a_stage_table(tiny_model_dir: Path) -> None:
    result = subprocess.run(
        [sys.executable, "tools/bench_step.py", "configs/tiny.yaml", f"guidance.model={tiny_model_dir}", "--steps", "3", "--warmup", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    for stage in ("camera+render", "encode", "unet", "combine", "backward", "optimizer", "**step**"):
        assert f"| {stage} |" in out
    assert "UNet rows per sample: 4" in out  # Perp-Neg: uncond, positive and two negatives in one call
    it_s = float(out.split("it/s: ")[1].split()[0])
    assert it_s > 0
    assert "peak process memory" in out
