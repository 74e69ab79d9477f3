"""The GPU verification in one call; run it through ``tools/gpu_check.sh OUT_DIR [--dry-run]``.

Steps, each a subprocess with its own time limit and log (OUT_DIR/logs/), none stopping the others:

1. ``dreamperp doctor configs/default.yaml --json``: the machine, and what ``auto`` resolves to;
2. the CUDA-only tests (and the CUDA stand-in tests next to them);
3. ``dreamperp doctor configs/default.yaml --bench`` in fp16 and bf16, with and without
   ``guidance.compile``, and with ``guidance.encoder`` tiny (random-weight full-size architecture
   when the weights are not here);
4. a 300-step run of the default config on the full-size random-weight architecture, with its
   mesh export and turntable video.

``--dry-run`` runs the same steps at CPU size (the tiny config, a few steps, small export;
``guidance.compile`` rows are listed as skipped: inductor takes minutes on a CPU). Writes
OUT_DIR/gpu_check.json and OUT_DIR/gpu_check.md; exits 0 when every step passed, else 1.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

ROOT = Path(__file__).resolve().parents[1]
REPORT_SCHEMA = 1
CUDA_TESTS = [
    "tests/test_renderer.py::test_occgrid_and_dense_paths_agree_on_cuda",  # skipped without CUDA
    "tests/test_cuda_paths.py",
    "tests/test_gpu_settings.py",
]
PROMPT = "prompt=a DSLR photo of a corgi"


def plan(dry_run: bool) -> Dict[str, Any]:
    """Configs, overrides, step counts and time limits of both modes."""
    if dry_run:
        small = ["device=cpu", "data.width=16", "data.height=16", "scene.levels=4", "scene.log2_table_size=12",
                 "scene.max_resolution=64", "render.num_samples=16", "trainer.val_size=16"]
        return {
            "config": "configs/tiny.yaml", "overrides": small, "dtypes": ["float32", "bfloat16"], "compile": False,
            "bench_steps": 2, "bench_warmup": 1, "run_steps": 4, "full_size": False,
            "run_overrides": small + ["trainer.checkpoint_every=4", "trainer.val_every=4", "export.resolution=32", "export.faces=500",
                                      "export.texture_size=64", "export.video_frames=4", "export.video_size=32"],
            "timeouts": {"doctor": 120, "tests": 180, "bench": 180, "run": 240}, "budget_s": 900,
        }
    return {
        "config": "configs/default.yaml", "overrides": [], "dtypes": ["float16", "bfloat16"], "compile": True,
        "bench_steps": 20, "bench_warmup": 5, "run_steps": 300, "full_size": True,
        "run_overrides": ["trainer.checkpoint_every=300", "trainer.val_every=150"],
        "timeouts": {"doctor": 120, "tests": 150, "bench": 150, "run": 240}, "budget_s": 470,  # the 8-minute budget, less start-up
    }


class Budget:
    """The check's whole time budget: each step gets at most what is left, less what the final run needs."""

    def __init__(self, seconds: float, reserve: float):
        self.end = time.perf_counter() + seconds
        self.reserve = reserve

    def limit(self, step_timeout: float, final: bool = False) -> float:
        left = self.end - time.perf_counter() - (0.0 if final else self.reserve)
        return min(step_timeout, left)


def run_step(name: str, cmd: List[str], out: Path, timeout: float) -> Dict[str, Any]:
    """Run ``cmd`` with its output in OUT_DIR/logs/<name>.log; never raises."""
    if timeout < 10:
        print(f"gpu_check: {name}: skipped, out of time", file=sys.stderr, flush=True)
        return {"name": name, "command": " ".join(cmd), "rc": None, "seconds": 0.0, "log": None, "stdout": "", "skipped": "out of the time budget"}
    log = out / "logs" / f"{name}.log"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
        rc, stdout, stderr = proc.returncode, proc.stdout, proc.stderr
    except subprocess.TimeoutExpired as err:
        rc = 124
        stdout = err.stdout.decode() if isinstance(err.stdout, bytes) else (err.stdout or "")
        stderr = (err.stderr.decode() if isinstance(err.stderr, bytes) else (err.stderr or "")) + f"\n[gpu_check: timed out after {timeout:.0f} s]"
    seconds = time.perf_counter() - start
    log.write_text(f"$ {' '.join(cmd)}\n--- stdout\n{stdout}\n--- stderr\n{stderr}\n")
    print(f"gpu_check: {name}: rc {rc} in {seconds:.1f} s", file=sys.stderr, flush=True)
    return {"name": name, "command": " ".join(cmd), "rc": rc, "seconds": round(seconds, 2), "log": str(log.relative_to(out)), "stdout": stdout}


def bench_rows(p: Dict[str, Any]) -> List[Dict[str, Any]]:
    """The bench matrix: each dtype with compile off and on, plus the tiny encoder."""
    rows = []
    for dtype in p["dtypes"]:
        for compile_ in (False, True):
            rows.append({"dtype": dtype, "compile": compile_, "encoder": "vae"})
    rows.append({"dtype": p["dtypes"][0], "compile": False, "encoder": "tiny"})
    return rows


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", metavar="OUT_DIR")
    parser.add_argument("--dry-run", action="store_true", help="the same steps at CPU size")
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()
    (out / "logs").mkdir(parents=True, exist_ok=True)
    p = plan(args.dry_run)
    py = sys.executable
    started = time.perf_counter()
    budget = Budget(p["budget_s"], reserve=p["timeouts"]["run"] * 0.5)
    steps: List[Dict[str, Any]] = []

    doc = run_step("doctor", [py, "-m", "dreamperp", "doctor", p["config"], *p["overrides"], "--json"], out, budget.limit(p["timeouts"]["doctor"]))
    machine = _json(doc.pop("stdout"))
    steps.append(doc)

    tests = run_step("cuda-tests", [py, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", *CUDA_TESTS], out, budget.limit(p["timeouts"]["tests"]))
    tests["summary"] = (tests.pop("stdout").strip().splitlines() or [""])[-1]
    steps.append(tests)

    bench: List[Dict[str, Any]] = []
    for row in bench_rows(p):
        name = f"bench-{row['dtype']}-{'compile' if row['compile'] else 'eager'}-{row['encoder']}"
        entry: Dict[str, Any] = {"name": name, **row}
        if row["compile"] and not p["compile"]:
            entry.update(rc=None, skipped="dry run: torch.compile takes minutes on a CPU")
            bench.append(entry)
            continue
        overrides = [*p["overrides"], PROMPT, f"guidance.dtype={row['dtype']}", f"guidance.compile={str(row['compile']).lower()}",
                     f"guidance.encoder={row['encoder']}"]
        warmup = p["bench_warmup"] + (5 if row["compile"] else 0)  # compiling happens in the first steps
        cmd = [py, "-m", "dreamperp", "doctor", p["config"], *overrides, "--bench", "--json",
               "--steps", str(p["bench_steps"]), "--warmup", str(warmup)]
        if p["full_size"]:
            cmd.append("--full-size")
        result = run_step(name, cmd, out, budget.limit(p["timeouts"]["bench"]))
        report = _json(result.pop("stdout"))
        entry.update(result, result_bench=(report or {}).get("bench"), memory_estimate=((report or {}).get("memory") or {}).get("estimated_peak_bytes"))
        bench.append(entry)
    steps.extend(bench)

    run_dir = out / "run"
    overrides = [*p["run_overrides"], PROMPT, f"trainer.max_steps={p['run_steps']}", "trainer.progress=false"]
    code = ("import sys; from dreamperp.doctor import random_weight_run; "
            "sys.exit(random_weight_run(sys.argv[1], sys.argv[4:], sys.argv[2], full_size=sys.argv[3] == '1'))")
    cmd = [py, "-c", code, p["config"], str(run_dir), "1" if p["full_size"] else "0", *overrides]
    run = run_step("run", cmd, out, budget.limit(p["timeouts"]["run"], final=True))
    run.pop("stdout")
    run.update(_run_summary(run_dir, p["run_steps"]))
    steps.append(run)

    failed = [s["name"] for s in steps if s.get("rc") != 0 and not ("compile" in s["name"] and args.dry_run) or s.get("ok") is False]
    report = {
        "schema": REPORT_SCHEMA, "dry_run": args.dry_run, "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "host": platform.node(), "python": platform.python_version(), "config": p["config"], "machine": machine,
        "steps": steps, "failed": failed, "ok": not failed, "total_seconds": round(time.perf_counter() - started, 1),
    }
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2))
    (out / "gpu_check.md").write_text(markdown(report))
    print(f"gpu_check: {'all steps passed' if not failed else 'failed: ' + ', '.join(failed)} in {report['total_seconds']:.0f} s; "
          f"report: {out / 'gpu_check.md'}", file=sys.stderr)
    return 0 if not failed else 1


def _json(text: str) -> Optional[Dict[str, Any]]:
    try:
        return json.loads(text)
    except ValueError:
        return None


def _run_summary(run_dir: Path, steps: int) -> Dict[str, Any]:
    """What the run left: steps logged, mean it/s over the second half, export files."""
    metrics = run_dir / "metrics.jsonl"
    records = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()] if metrics.is_file() else []
    late = [r["it_s"] for r in records[len(records) // 2:] if "it_s" in r]
    export = sorted(p.name for p in (run_dir / "export").iterdir()) if (run_dir / "export").is_dir() else []
    mesh = any(name.startswith("mesh.") for name in export)
    video = any(name.startswith("turntable.") for name in export)
    last = records[-1]["step"] if records else 0
    return {"steps_done": last, "it_s": round(sum(late) / len(late), 2) if late else None, "export": export,
            "ok": last == steps and mesh and video}


def _gib(n: Optional[float]) -> str:
    return "" if n is None else f"{n / 2**30:.2f}"


def markdown(r: Dict[str, Any]) -> str:
    m = r["machine"] or {}
    gpus = ", ".join(f"{g['name']} ({_gib(g['memory_bytes'])} GiB, compute {g['capability']})" for g in m.get("gpus") or []) or "none"
    torch = m.get("torch") or {}
    enc, est = m.get("encoding") or {}, m.get("estimator") or {}
    lines = [
        f"# GPU check{' (dry run, CPU-sized)' if r['dry_run'] else ''}",
        "",
        f"{r['date']} on {r['host']}: {'all steps passed' if r['ok'] else 'FAILED: ' + ', '.join(r['failed'])}, {r['total_seconds']:.0f} s in all.",
        "",
        f"- GPU: {gpus}",
        f"- torch {torch.get('version')}, {torch.get('build')}; Python {r['python']}",
        f"- scene.encoding {enc.get('setting')} -> {enc.get('resolves_to')} ({enc.get('why')})",
        f"- render.estimator {est.get('setting')} -> {est.get('resolves_to')} ({est.get('why')})",
        f"- config: `{r['config']}`; command: `tools/gpu_check.sh OUT_DIR{' --dry-run' if r['dry_run'] else ''}`",
        "",
        "| step | rc | seconds | result |",
        "| --- | ---: | ---: | --- |",
    ]
    for s in r["steps"]:
        if s.get("skipped"):
            lines.append(f"| {s['name']} | | | skipped: {s['skipped']} |")
            continue
        result = s.get("summary", "")
        if s["name"] == "run":
            result = f"{s['steps_done']} steps, {s['it_s']} it/s (second half), export: {', '.join(s['export']) or 'none'}"
        lines.append(f"| {s['name']} | {s['rc']} | {s['seconds']:.1f} | {result} |")
    lines += ["", "## Step benchmark", "",
              "| dtype | compile | encoder | it/s | step ms | unet ms | encode ms | outside prior | peak GiB | estimated GiB | floor |",
              "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for s in r["steps"]:
        if not s["name"].startswith("bench-"):
            continue
        b = s.get("result_bench")
        if not b:
            why = s.get("skipped") or f"failed (rc {s.get('rc')}, see {s.get('log')})"
            lines.append(f"| {s['dtype']} | {'on' if s['compile'] else 'off'} | {s['encoder']} | {why} | | | | | | | |")
            continue
        st = b["stages_s"]
        floor = f"{100 * b['floor_fraction']:.0f}%" if b.get("floor_fraction") is not None else "n/a"
        lines.append(f"| {b['dtype']} | {'on' if b['compile'] else 'off'} | {b['encoder']} | {b['it_s']:.2f} | {1e3 * b['step_s']:.1f} | "
                     f"{1e3 * st['unet']:.1f} | {1e3 * st['encode']:.1f} | {100 * b['outside_prior_share']:.0f}% | "
                     f"{_gib(b['peak_memory_bytes'])} | {_gib(s.get('memory_estimate'))} | {floor} |")
    lines += ["", "Peak is GPU max allocated on CUDA, process max RSS on a CPU (the Python runtime included, so not comparable with the "
              "estimate there). Floor: FLOPs of the prior's work in one step over the GPU's "
              "dense fp16/bf16 peak, divided by the measured step.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
