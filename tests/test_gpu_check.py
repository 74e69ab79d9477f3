"""``tools/gpu_check.sh OUT_DIR --dry-run`` end to end: every step of the GPU check at CPU size,
and the report files it writes (the same script runs on a GPU machine; CI also runs it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_dry_run_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "check"
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(["bash", "tools/gpu_check.sh", str(out), "--dry-run"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["schema"] == 1 and report["dry_run"] and report["ok"] and report["failed"] == []
    names = [s["name"] for s in report["steps"]]
    assert names == ["doctor", "cuda-tests", "bench-float32-eager-vae", "bench-float32-compile-vae", "bench-bfloat16-eager-vae",
                     "bench-bfloat16-compile-vae", "bench-float32-eager-tiny", "run"]
    assert report["machine"]["schema"] == 1 and report["machine"]["ok"]  # doctor's own JSON, embedded
    for step in report["steps"]:
        if "compile" in step["name"]:
            assert step["rc"] is None and "torch.compile" in step["skipped"]
            continue
        assert step["rc"] == 0 and (out / step["log"]).is_file()
        if step["name"].startswith("bench-"):
            bench = step["result_bench"]
            assert bench["it_s"] > 0 and bench["steps"] == 2 and bench["dtype"] == step["dtype"]
            assert bench["encoder"].startswith(step["encoder"]) and step["memory_estimate"] > 0
    run = report["steps"][-1]
    assert run["steps_done"] == 4 and run["ok"] and {"mesh.glb", "turntable.mp4"} <= set(run["export"])
    assert (out / "run" / "export" / "turntable.mp4").stat().st_size > 0
    md = (out / "gpu_check.md").read_text()
    assert "all steps passed" in md and "| float32 | off | tiny (random weights) |" in md and "| run | 0 |" in md


def test_gpu_check_usage_errors() -> None:
    for args in ([], ["--bogus"], ["out", "--bogus"]):
        result = subprocess.run(["bash", "tools/gpu_check.sh", *args], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert result.returncode == 2 and result.stderr.startswith("usage: tools/gpu_check.sh OUT_DIR [--dry-run]")
