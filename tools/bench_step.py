"""Time the training step of a config, stage by stage, and print a table.

    python tools/bench_step.py configs/tiny.yaml                      # CPU, the tiny offline model
    python tools/bench_step.py configs/default.yaml --full-size       # SD 2.1-base architecture, random weights
    python tools/bench_step.py configs/default.yaml --full-size --steps 100 guidance.compile=true

Stages (device-synchronised at every boundary while benchmarking, never in normal training):
camera+render (camera sampling, rays, volume rendering), encode (resize + VAE encoder), unet (the
one batched UNet call), combine (Perp-Neg/SEGA combination, noise, SDS loss), backward (through the
VAE encoder and the renderer), optimizer (Adam). The training code is not modified: the stages are
timed by wrapping the prior's methods and by optimizer hooks. Reports the median over the timed
steps, it/s of the whole step, and peak memory.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the CLI does

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dreamperp.config import load_config  # noqa: E402
from dreamperp.train.trainer import Trainer  # noqa: E402

STAGES = ["camera+render", "encode", "unet", "combine", "backward", "optimizer", "other"]
# Full-size SD 2.1-base numbers from torch's FLOP counter (issue 6): per UNet row at a 64x64
# latent, and the VAE encoder forward + backward to its input at 512x512.
UNET_TFLOP_PER_ROW = 0.80
VAE_TFLOP = 2.27


class StepClock:
    """Marks named instants of a step; on CUDA each mark synchronises first."""

    def __init__(self, device: torch.device):
        self.device = device
        self.marks: List[tuple[str, float]] = []
        self.unet_rows = 0

    def mark(self, name: str) -> None:
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
        t = {}
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


def build(cfg_path: str, overrides: List[str], full_size: bool) -> Trainer:
    cfg = load_config(cfg_path, overrides)
    if cfg.data.type != "text":
        raise SystemExit("bench_step times text-to-3D steps: use a config with data.type=text")
    prior = None
    if full_size:
        from dreamperp.device import resolve_device
        from dreamperp.guidance.prior import load_prior
        from dreamperp.models.full_size import full_size_components

        device = resolve_device(cfg.device)
        prior = load_prior(cfg.guidance, cfg.prompt, cfg.negative_prompt, device, components=full_size_components(device, cfg.guidance.dtype))
    return Trainer(cfg, prior=prior)


def instrument(trainer: Trainer, clock: StepClock) -> None:
    prior = trainer.prior
    prior.backend.encode_images = clock.wrap(prior.backend.encode_images, "encode_begin", "encode_end")
    prior.sds = clock.wrap(prior.sds, "sds_begin", "sds_end")
    unet = clock.wrap(prior.unet_forward, "unet_begin", "unet_end")

    def counting_unet(x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        clock.unet_rows = x.shape[0]
        return unet(x, *args, **kwargs)

    prior.unet_forward = counting_unet
    trainer.optimizer.register_step_pre_hook(lambda *a: clock.mark("opt_begin"))
    trainer.optimizer.register_step_post_hook(lambda *a: clock.mark("opt_end"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config")
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--steps", type=int, default=30, help="timed steps (default 30)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed warm-up steps (default 5)")
    parser.add_argument("--full-size", action="store_true", help="SD 2.1-base UNet/VAE/text encoder with random weights")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    overrides = ["trainer.progress=false", *args.overrides]
    if not any(o.startswith("prompt=") for o in overrides):
        overrides.append("prompt=a DSLR photo of a corgi")
    trainer = build(args.config, overrides, args.full_size)
    device = trainer.device
    clock = StepClock(device)
    instrument(trainer, clock)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    rows: List[Dict[str, float]] = []
    for i in range(args.warmup + args.steps):
        clock.marks.clear()
        clock.mark("step_begin")
        trainer.train_step()
        clock.mark("step_end")
        if i >= args.warmup:
            rows.append(clock.stages())
    med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    steps_per_s = len(rows) / sum(r["total"] for r in rows)

    cfg = trainer.cfg
    rows_in_unet = clock.unet_rows // cfg.data.batch_size
    print(f"config: {args.config} {' '.join(args.overrides)}")
    print(f"device: {torch.cuda.get_device_name(device) if device.type == 'cuda' else platform.processor() or platform.machine()}"
          f" ({device.type}, torch {torch.__version__}, {torch.get_num_threads()} CPU threads)")
    print(f"prior: {'SD 2.1-base architecture, random weights' if args.full_size else cfg.guidance.model}, dtype {trainer.prior.dtype},"
          f" resolution {trainer.prior.resolution}; render {cfg.data.width}x{cfg.data.height}, batch {cfg.data.batch_size},"
          f" Perp-Neg {'on' if cfg.guidance.perp_neg.enabled else 'off'}, sampler {trainer.scene.sampler}")
    print(f"steps: {args.warmup} warm-up + {len(rows)} timed (median per stage); UNet rows per sample: {rows_in_unet}\n")
    print("| stage | ms | share |\n| --- | ---: | ---: |")
    for stage in STAGES:
        print(f"| {stage} | {med[stage] * 1e3:.2f} | {100 * med[stage] / med['total']:.0f}% |")
    print(f"| **step** | **{med['total'] * 1e3:.2f}** | 100% |")
    outside = med["camera+render"] + med["backward"] + med["optimizer"]
    print(f"\nit/s: {steps_per_s:.2f} (mean over timed steps), {1 / med['total']:.2f} (median step)")
    print(f"outside the prior forward (render + backward + optimizer): {100 * outside / med['total']:.0f}% of the step")
    if device.type == "cuda":
        print(f"peak GPU memory: {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB")
    else:
        import resource

        print(f"peak process memory (max RSS): {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")
    if args.full_size:
        rows_n = rows_in_unet
        floor_tflop = rows_n * UNET_TFLOP_PER_ROW * cfg.data.batch_size + VAE_TFLOP * cfg.data.batch_size
        print(f"work: ~{floor_tflop:.1f} TFLOP per step ({rows_n} UNet rows per sample + VAE fwd/bwd);"
              f" at 790 TFLOP/s the floor is {floor_tflop / 790 * 1e3:.1f} ms, this step is {floor_tflop / 790 / med['total'] * 100:.0f}% of it")


if __name__ == "__main__":
    main()
