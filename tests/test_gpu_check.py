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


def _wheel(folder: Path, name: str, version: str) -> Path:
    """A minimal pure-Python wheel holding the module ``name`` (what pip needs: WHEEL, METADATA, RECORD)."""
    import zipfile

    info = f"{name}-{version}.dist-info"
    files = {f"{name}/__init__.py": f"VERSION = {version!r}\n", f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
             f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    files[f"{info}/RECORD"] = "".join(f"{path},,\n" for path in [*files, f"{info}/RECORD"])
    path = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as whl:
        for member, text in files.items():
            whl.writestr(member, text)
    return path


def test_gpu_check_installs_missing_packages_into_its_own_folder(tmp_path: Path) -> None:
    """An interpreter that lacks dreamperp's packages (like the GPU image lacks some): with no wheels the
    script says how to get them; with wheels it installs them into GPU_CHECK_SITE, not into the
    interpreter's environment, then names what is still missing."""
    subprocess.run([sys.executable, "-m", "venv", str(tmp_path / "venv")], check=True, timeout=120)
    python = tmp_path / "venv" / "bin" / "python"
    site_packages = {p.name for p in next((tmp_path / "venv" / "lib").glob("python3*/site-packages")).iterdir()}
    wheels, site = tmp_path / "wheels", tmp_path / "site"
    wheels.mkdir()
    env = {**os.environ, "PYTHON": str(python), "GPU_WHEELS": str(wheels), "GPU_CHECK_SITE": str(site), "PYTHONPATH": ""}
    check = ["bash", "tools/gpu_check.sh", str(tmp_path / "out"), "--dry-run"]

    result = subprocess.run(check, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "missing torch numpy diffusers" in result.stderr
    assert "has no wheels: run 'tools/gpu_check.sh --fill-wheels'" in result.stderr

    _wheel(wheels, "dreamperp_probe", "1.0")
    result = subprocess.run(check, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and f"installing {wheels}/*.whl into {site}" in result.stderr
    assert "still missing after installing" in result.stderr and ": torch numpy diffusers" in result.stderr
    assert (site / "dreamperp_probe" / "__init__.py").read_text() == "VERSION = '1.0'\n"
    assert {p.name for p in next((tmp_path / "venv" / "lib").glob("python3*/site-packages")).iterdir()} == site_packages
    assert not (tmp_path / "out").exists()
