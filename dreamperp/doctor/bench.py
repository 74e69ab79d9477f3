"""``--bench``: training steps timed stage by stage, and the physical floor (docs/design.md §13).

The stages are marked by wrapping the prior's methods and hooking the optimizer (the training code
is unchanged); on CUDA each mark synchronises first. Weights that are not here are replaced by the
full-size architecture in random weights (:mod:`dreamperp.doctor.random_weights`): speed does not
depend on weight values. ``tools/bench_step.py`` calls :func:`bench_config` and :func:`run_bench`.
"""

from __future__ import annotations

import platform
import statistics
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

from dreamperp.config import Config
from dreamperp.doctor.estimate import prior_costs
from dreamperp.doctor.probes import GIB
from dreamperp.doctor.random_weights import RANDOM_TAESD, build_bench_trainer
from dreamperp.errors import UsageError

DEFAULT_BENCH_PROMPT = "a DSLR photo of a corgi"
# Dense fp16/bf16 tensor-core peak in TFLOP/s (vendor data sheets, without sparsity), by name part.
GPU_PEAK_TFLOPS: Tuple[Tuple[str, float], ...] = (
    ("H200", 989.0), ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0),  # "H100 80GB HBM3" is the SXM card
    ("GH200", 989.0), ("B200", 2250.0), ("A100", 312.0), ("A800", 312.0), ("L40S", 362.0), ("L40", 181.0),
    ("L4", 121.0), ("A10G", 70.0), ("A10", 125.0), ("RTX 4090", 165.0), ("RTX 3090", 71.0), ("V100", 125.0), ("T4", 65.0),
)
# The stages of one step, in order: the rows of the table and the keys of ``stages_s``.
STAGES = ["camera+render", "encode", "unet", "combine", "backward", "optimizer", "other"]


class StepClock:
    """Marks named instants of a step; on CUDA each mark synchronises first (benchmarks only)."""

    def __init__(self, device: Any):
        self.device = device
        self.marks: List[Tuple[str, float]] = []
        self.unet_rows = 0

    def mark(self, name: str) -> None:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.marks.append((name, time.perf_counter()))

    def wrap(self, fn: Callable, begin: str, end: str) -> Callable:
        def timed(*args: Any, **kwargs: Any) -> Any:
            self.mark(begin)
            out = fn(*args, **kwargs)
            self.mark(end)
            return out

        return timed

    def stages(self) -> Dict[str, float]:
        """Seconds per stage from the marks of one step."""
        t: Dict[str, float] = {}
        for name, at in self.marks:
            t.setdefault(name, at)  # first occurrence
        last = {name: at for name, at in self.marks}
        out = {
            "camera+render": t["encode_begin"] - t["step_begin"],
            "encode": last["encode_end"] - t["encode_begin"],
            "unet": sum(b - a for (n1, a), (n2, b) in zip(self.marks, self.marks[1:]) if n1 == "unet_begin" and n2 == "unet_end"),
            "backward": t["opt_begin"] - last["sds_end"],
            "optimizer": last["opt_end"] - t["opt_begin"],
        }
        out["combine"] = (last["sds_end"] - t["encode_begin"]) - out["encode"] - out["unet"]
        out["other"] = (last["step_end"] - t["step_begin"]) - sum(out.values())
        out["total"] = last["step_end"] - t["step_begin"]
        return out


def instrument(trainer: Any, clock: StepClock) -> None:
    """Time the prior's stages by wrapping its methods and the trainer's guidance call (``trainer.prior``
    becomes the timed call), and the optimizer by hooks (training code unchanged)."""
    prior = trainer.prior
    prior.backend.encode_images = clock.wrap(prior.backend.encode_images, "encode_begin", "encode_end")
    trainer.prior = clock.wrap(prior, "sds_begin", "sds_end")
    unet = clock.wrap(prior.unet_forward, "unet_begin", "unet_end")

    def counting_unet(x: Any, *args: Any, **kwargs: Any) -> Any:
        clock.unet_rows = x.shape[0]
        return unet(x, *args, **kwargs)

    prior.unet_forward = counting_unet
    trainer.optimizer.register_step_pre_hook(lambda *a: clock.mark("opt_begin"))
    trainer.optimizer.register_step_post_hook(lambda *a: clock.mark("opt_end"))


def peak_tflops(gpu_name: str) -> Optional[float]:
    """Dense fp16/bf16 tensor-core peak of a GPU by name (None when unknown)."""
    for part, tflops in GPU_PEAK_TFLOPS:
        if part.lower() in gpu_name.lower():
            return tflops
    return None


def physical_floor(flops: float, tflops: float, step_s: float) -> Tuple[float, float]:
    """(seconds the step's ``flops`` take at ``tflops`` TFLOP/s, that time over the measured ``step_s``)."""
    floor = flops / (tflops * 1e12)
    return floor, floor / step_s


def bench(cfg: Config, steps: int = 30, warmup: int = 5, full_size: bool = False, flops: Optional[int] = None) -> Dict[str, Any]:
    """Time ``steps`` training steps of ``cfg`` after ``warmup`` untimed ones. Returns the per-stage
    medians (seconds), it/s, peak memory, and for a GPU the fraction of the physical floor (``flops``
    of the prior's work in one step over the GPU's peak)."""
    import torch

    if steps < 1 or warmup < 0:
        raise UsageError(f"--steps must be >= 1 and --warmup >= 0, got {steps} and {warmup}")
    trainer = build_bench_trainer(cfg, full_size)
    random_encoder = cfg.guidance.encoder == "tiny" and cfg.guidance.tiny_encoder_model.endswith(RANDOM_TAESD)
    device = trainer.device
    clock = StepClock(device)
    prior = trainer.prior
    instrument(trainer, clock)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    rows: List[Dict[str, float]] = []
    for i in range(warmup + steps):
        clock.marks.clear()
        clock.mark("step_begin")
        trainer.train_step()
        clock.mark("step_end")
        if i >= warmup:
            rows.append(clock.stages())
    med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    if device.type == "cuda":
        peak = int(torch.cuda.max_memory_allocated(device))
        name = torch.cuda.get_device_name(device)
    else:
        import resource

        peak = int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)  # Linux: KiB
        name = platform.processor() or platform.machine()
    result: Dict[str, Any] = {
        "device": device.type, "device_name": name, "torch": torch.__version__, "cuda": getattr(torch.version, "cuda", None),
        "threads": torch.get_num_threads(), "prior": "SD 2.1-base architecture, random weights" if full_size else cfg.guidance.model,
        "dtype": str(prior.dtype).replace("torch.", ""), "resolution": prior.resolution,
        "render": [cfg.data.width, cfg.data.height], "batch_size": cfg.data.batch_size, "perp_neg": cfg.guidance.perp_neg.enabled,
        "compile": cfg.guidance.compile, "sampler": trainer.scene.sampler,
        "encoder": cfg.guidance.encoder + (" (random weights)" if random_encoder else ""),
        "warmup": warmup, "steps": len(rows), "unet_rows_per_sample": clock.unet_rows // cfg.data.batch_size,
        "stages_s": {k: med[k] for k in STAGES}, "step_s": med["total"],
        "it_s": len(rows) / sum(r["total"] for r in rows), "it_s_median": 1.0 / med["total"],
        "outside_prior_share": (med["camera+render"] + med["backward"] + med["optimizer"]) / med["total"],
        "peak_memory_bytes": peak, "peak_memory_kind": "GPU (max allocated)" if device.type == "cuda" else "process (max RSS)",
        "flops": flops, "peak_tflops": None, "floor_s": None, "floor_fraction": None,
    }
    if device.type == "cuda" and flops:
        tflops = peak_tflops(name)
        if tflops:
            floor, fraction = physical_floor(flops, tflops, med["total"])
            result.update(peak_tflops=tflops, floor_s=floor, floor_fraction=fraction)
    return result


def format_bench(res: Dict[str, Any], label: str = "") -> str:
    lines = [
        f"config: {label}",
        f"device: {res['device_name']} ({res['device']}, torch {res['torch']}, {res['threads']} CPU threads)",
        f"prior: {res['prior']}, dtype {res['dtype']}, resolution {res['resolution']}; render {res['render'][0]}x{res['render'][1]}, "
        f"batch {res['batch_size']}, Perp-Neg {'on' if res['perp_neg'] else 'off'}, sampler {res['sampler']}, "
        f"encoder {res['encoder']}, compile {'on' if res['compile'] else 'off'}",
        f"steps: {res['warmup']} warm-up + {res['steps']} timed (median per stage); UNet rows per sample: {res['unet_rows_per_sample']}",
        "",
        "| stage | ms | share |",
        "| --- | ---: | ---: |",
    ]
    total = res["step_s"]
    for stage in STAGES:
        s = res["stages_s"][stage]
        lines.append(f"| {stage} | {s * 1e3:.2f} | {100 * s / total:.0f}% |")
    lines.append(f"| **step** | **{total * 1e3:.2f}** | 100% |")
    lines.append("")
    lines.append(f"it/s: {res['it_s']:.2f} (mean over timed steps), {res['it_s_median']:.2f} (median step)")
    lines.append(f"outside the prior forward (render + backward + optimizer): {100 * res['outside_prior_share']:.0f}% of the step")
    if res["device"] == "cuda":
        lines.append(f"peak GPU memory: {res['peak_memory_bytes'] / GIB:.2f} GiB")
    else:
        lines.append(f"peak process memory (max RSS): {res['peak_memory_bytes'] / GIB:.2f} GiB")
    if res["flops"]:
        amount = f"{res['flops'] / 1e12:.2f} TFLOP" if res["flops"] >= 1e11 else f"{res['flops'] / 1e9:.2f} GFLOP"
        work = f"work: {amount} per step (UNet on every row + VAE encoder forward/backward)"
        if res["floor_fraction"] is not None:
            work += (f"; at {res['peak_tflops']:.0f} TFLOP/s the floor is {res['floor_s'] * 1e3:.1f} ms, "
                     f"this step runs at {100 * res['floor_fraction']:.0f}% of it")
        lines.append(work)
    return "\n".join(lines)


def bench_config(cfg: Config) -> Config:
    """``cfg`` made ready to time: no progress bar, a prompt when it has none."""
    cfg.trainer.progress = False
    if cfg.data.type == "text" and not cfg.prompt.strip():
        cfg.prompt = DEFAULT_BENCH_PROMPT
    return cfg


def run_bench(cfg: Config, report: Dict[str, Any], steps: int, warmup: int, full_size: Optional[bool] = None) -> Dict[str, Any]:
    """:func:`bench` with the full-size random architecture when the weights are not here (or asked
    for), and the FLOPs of the prior's work taken from the meta-device trace."""
    import torch

    from dreamperp.models.loading import as_dtype

    model = report.get("model") or {}
    if full_size is None:
        full_size = model.get("kind") in ("hub", "folder") and not model.get("cached")
    device_type = report["device"]["resolves_to"]
    if full_size:
        model = {**model, "path": None}
    elif model.get("kind") == "hub" and model.get("cached"):
        cfg.guidance.model = model["loads"]  # a withdrawn id's successor: load it without the note
    costs = prior_costs(cfg, model, as_dtype(cfg.guidance.dtype, torch.device(device_type)))
    return bench(cfg, steps, warmup, full_size, flops=costs["flops"])
