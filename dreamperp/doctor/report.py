"""The doctor's report: one dict (the ``--json`` output), its table and its verdict (docs/design.md §13).

:func:`diagnose` gathers the probes, the prior and the memory estimate into a plain dict, versioned
by :data:`SCHEMA_VERSION`, with every problem found; the first is the one thing to fix.
"""

from __future__ import annotations

import platform
import sys
from typing import Any, Dict, List, Optional, Tuple

import dreamperp.doctor.probes as probes  # by module, so tests can stand in for a CUDA machine
from dreamperp import __version__
from dreamperp.config import Config
from dreamperp.doctor.estimate import memory_section
from dreamperp.doctor.model import model_section
from dreamperp.doctor.probes import GIB

#: Version of the ``--json`` report's layout: bump it when a key changes meaning or goes away.
SCHEMA_VERSION = 1
#: Top-level keys of the report, in order (tests pin them: scripts read them).
REPORT_KEYS = (
    "schema", "dreamperp", "config", "python", "torch", "gpus", "device", "encoding", "nerfacc", "estimator",
    "ffmpeg", "ray", "model", "disk", "memory", "ok", "problem", "problems", "warnings",
)
MIN_FREE_DISK = 2 * GIB  # checkpoints, validation grids, a mesh and a video of one run


def _gib(n: Optional[float]) -> str:
    if n is None:
        return "?"
    return f"{n / GIB:.2f} GiB" if n >= GIB / 4 else f"{n / 2**20:.0f} MiB"


def diagnose(cfg: Optional[Config], config_label: Optional[str] = None, *, estimate_memory: bool = True) -> Dict[str, Any]:
    """The doctor's report for ``cfg`` on this machine (``cfg`` None: the machine only)."""
    report: Dict[str, Any] = {k: None for k in REPORT_KEYS}
    problems: List[str] = []
    warnings: List[str] = []
    gpus = probes.gpu_info()
    report.update(
        schema=SCHEMA_VERSION, dreamperp=__version__, config=config_label,
        python={"version": platform.python_version(), "executable": sys.executable},
        torch=probes.torch_info(), gpus=gpus, ffmpeg=probes.ffmpeg_info(), ray=probes.ray_info(), nerfacc=probes.nerfacc_info(),
    )
    setting = cfg.device if cfg is not None else "auto"
    if setting in ("auto", None):
        device_type = "cuda" if gpus else "cpu"
    else:
        device_type = "cuda" if str(setting).startswith("cuda") else str(setting)
        if device_type == "cuda" and not gpus:
            problems.append("device=cuda but this machine has no usable CUDA device: set device=auto or device=cpu")
            device_type = "cpu"
    report["device"] = {"setting": setting, "resolves_to": device_type}
    enc = cfg.scene.encoding if cfg is not None else "auto"
    est = cfg.render.estimator if cfg is not None else "auto"
    report["encoding"] = probes.encoding_choice(enc, device_type)
    report["estimator"] = probes.estimator_choice(est, device_type, report["nerfacc"])
    if report["encoding"]["resolves_to"] is None:
        problems.append(f"scene.encoding=tcnn but {report['encoding']['why']}: set scene.encoding=auto")
    if report["estimator"]["resolves_to"] is None:
        problems.append(f"render.estimator=occgrid but {report['estimator']['why']}: set render.estimator=auto")
    if cfg is not None:
        model_sec, problem = model_section(cfg)
        report["model"] = {**model_sec, "problem": problem}
        if problem:
            problems.append(problem)
        for key in ("note", "why"):
            if model_sec.get(key) and model_sec.get("kind") in ("hub",):
                warnings.append(model_sec[key])
        report["disk"] = probes.disk_section(cfg.output_dir)
        free_disk = report["disk"]["free_bytes"]
        if free_disk is not None and free_disk < MIN_FREE_DISK:
            problems.append(f"only {_gib(free_disk)} free under output_dir '{cfg.output_dir}': free some space or set output_dir elsewhere")
        if cfg.trainer.video_at_end and not report["ffmpeg"]["available"]:
            warnings.append("imageio-ffmpeg is missing: the run trains but writes no video (pip install imageio-ffmpeg)")
        if estimate_memory:
            mem = memory_section(cfg, device_type, model_sec, gpus)
            report["memory"] = mem
            if mem["free_bytes"] is not None and mem["estimated_peak_bytes"] > mem["free_bytes"]:
                where = "GPU" if device_type == "cuda" else "host"
                problems.append(
                    f"too little {where} memory: the run needs about {_gib(mem['estimated_peak_bytes'])}, {_gib(mem['free_bytes'])} is free; "
                    f"lower data.width/data.height, data.batch_size or render.num_samples, or use guidance.dtype=float16"
                )
    report["ok"] = not problems
    report["problem"] = problems[0] if problems else None
    report["problems"] = problems
    report["warnings"] = warnings
    return report


def format_report(report: Dict[str, Any]) -> str:
    """The report as a two-column table (what, finding) and a verdict line."""
    rows: List[Tuple[str, str]] = []
    t = report["torch"]
    rows.append(("dreamperp", str(report["dreamperp"])))
    rows.append(("python", f"{report['python']['version']} ({report['python']['executable']})"))
    rows.append(("torch", f"{t['version']}, {t['build']}"))
    if not report["gpus"]:
        rows.append(("GPU", "none (CUDA not available to torch)"))
    for g in report["gpus"]:
        rows.append((f"GPU {g['index']}", f"{g['name']}, {_gib(g['memory_bytes'])} ({_gib(g['free_bytes'])} free), "
                                          f"compute {g['capability']}, bf16 {'yes' if g['bf16'] else 'no'}, fp16 {'yes' if g['fp16'] else 'no'}"))
    d = report["device"]
    rows.append(("device", f"{d['setting']} -> {d['resolves_to']}"))
    e = report["encoding"]
    rows.append(("scene.encoding", f"{e['setting']} -> {e['resolves_to'] or 'cannot run'} ({e['why']}; tinycudann "
                                   f"{'importable' if e['tinycudann'] else 'not importable'})"))
    n = report["nerfacc"]
    rows.append(("nerfacc CUDA ext", f"{n['state']}: {n['why']}"))
    r = report["estimator"]
    rows.append(("render.estimator", f"{r['setting']} -> {r['resolves_to'] or 'cannot run'} ({r['why']})"))
    f = report["ffmpeg"]
    rows.append(("imageio-ffmpeg", f["path"] if f["available"] else f"missing ({f['why']}): no videos"))
    ray = report["ray"]
    rows.append(("ray", f"{ray['version'] or 'installed'}" if ray["installed"] else "not installed (dreamperp batch --engine ray needs it)"))
    m = report["model"]
    if m is not None:
        if m["kind"] == "none":
            rows.append(("guidance.model", m["why"]))
        else:
            where = f"cached, {_gib(m['size_bytes'])} in {m['path']}" if m["cached"] else "not in the cache"
            if not m["cached"] and m.get("download_bytes"):
                where += f" (downloads {_gib(m['download_bytes'])} on first use)"
            gated = {True: "gated", False: "not gated", None: "gated: unknown (hub not asked)"}[m["gated"]] if m["kind"] == "hub" else ""
            rows.append(("guidance.model", f"{m['name']} ({m['kind']}): {where}" + (f"; {gated}" if gated else "")))
            if m["withdrawn"]:
                rows.append(("withdrawn id", f"{m['name']} -> {m['successor']}; loads {m['loads'] or m['successor']}"))
    if report["disk"] is not None:
        rows.append(("free disk", f"{_gib(report['disk']['free_bytes'])} under {report['disk']['output_dir']}"))
    mem = report["memory"]
    if mem is not None:
        p = mem["parts"]
        rows.append(("peak memory", f"~{_gib(mem['estimated_peak_bytes'])} estimated on {mem['device']} ({mem['dtype']}; weights {_gib(p['weights'])}, "
                                    f"prior activations {_gib(p['activations'])}, scene {_gib(p['scene'])}) vs {_gib(mem['free_bytes'])} free"))
    width = max(len(k) for k, _ in rows)
    lines = [f"{k.ljust(width)}  {v}" for k, v in rows]
    lines += [f"warning: {w}" for w in report["warnings"]]
    lines.append("verdict: this config can run here" if report["ok"] else f"verdict: cannot run here: {report['problem']}")
    if report["config"] is None:
        lines[-1] = "verdict: machine checked; give a CONFIG to check a run" if report["ok"] else lines[-1]
    return "\n".join(lines)
