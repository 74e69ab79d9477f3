"""Time the training step of a config, stage by stage, and print a table: ``dreamperp doctor --bench``
without the machine report (one implementation, in dreamperp/doctor/bench.py).

    python tools/bench_step.py configs/tiny.yaml                      # CPU, the tiny offline model
    python tools/bench_step.py configs/default.yaml --full-size       # SD 2.1-base architecture, random weights
    python tools/bench_step.py configs/default.yaml --full-size --steps 100 guidance.compile=true

Stages (device-synchronised at every boundary while benchmarking, never in normal training):
camera+render (camera sampling, rays, volume rendering), encode (resize + VAE encoder), unet (the
one batched UNet call), combine (Perp-Neg/SEGA combination, noise, SDS loss), backward (through the
VAE encoder and the renderer), optimizer (Adam). Reports the median over the timed steps, it/s of
the whole step, peak memory, and on a GPU the fraction of the physical floor (the step's FLOPs over
the GPU's peak). Without --full-size, a hub model that is not cached is replaced by the full-size
architecture with random weights, as ``dreamperp doctor --bench`` does.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import List, Optional

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the CLI does

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dreamperp.config import load_config  # noqa: E402
from dreamperp.doctor.bench import bench_config, format_bench, run_bench  # noqa: E402
from dreamperp.doctor.report import diagnose  # noqa: E402
from dreamperp.errors import DreamperpError  # noqa: E402


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config")
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--steps", type=int, default=30, help="timed steps (default 30)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed warm-up steps (default 5)")
    parser.add_argument("--full-size", action="store_true", help="SD 2.1-base UNet/VAE/text encoder with random weights")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args(argv)
    try:
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        cfg = bench_config(load_config(args.config, args.overrides, require_prompt=False))
        report = diagnose(cfg, args.config, estimate_memory=False)
        result = run_bench(cfg, report, args.steps, args.warmup, True if args.full_size else None)
    except DreamperpError as err:
        print(f"bench_step: error: {err}", file=sys.stderr)
        return err.exit_code
    print(format_bench(result, " ".join([args.config, *args.overrides])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
