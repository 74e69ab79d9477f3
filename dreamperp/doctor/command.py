"""``dreamperp doctor``: the command (docs/design.md §13). Exit 0 when the config can run here (or
the timing asked for was taken), else 2 with the one thing to fix on stderr."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from dreamperp.config import load_config
from dreamperp.doctor.bench import bench_config, format_bench, run_bench
from dreamperp.doctor.model import fetch_model
from dreamperp.doctor.report import diagnose, format_report
from dreamperp.errors import UsageError


def doctor_command(args: argparse.Namespace) -> int:
    """``dreamperp doctor [CONFIG] [key=value ...] [--json] [--bench [--steps N]] | --fetch MODEL``."""
    if getattr(args, "fetch", None):
        print(fetch_model(args.fetch))
        return 0
    overrides = list(getattr(args, "overrides", None) or [])
    config = args.config
    if config and "=" in config and not Path(config).is_file():
        config, overrides = None, [config, *overrides]
    if args.bench and config is None:
        raise UsageError("--bench needs a config, e.g. dreamperp doctor configs/tiny.yaml --bench")
    cfg = load_config(config, overrides, require_prompt=False) if (config or overrides) else None
    if cfg is not None and args.bench:
        bench_config(cfg)
    report = diagnose(cfg, config or ("schema defaults" if cfg is not None else None))
    if args.bench and cfg is not None:
        model = report["model"] or {}
        substitute = bool(args.full_size) or (model.get("kind") in ("hub", "folder") and not model.get("cached"))
        # The full-size architecture with random weights stands in for weights that are not here.
        blockers = [p for p in report["problems"] if not (substitute and p == model.get("problem"))]
        if blockers:
            report["bench"] = None
        else:
            report["bench"] = run_bench(cfg, report, args.steps, args.warmup, substitute)
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=False))
    else:
        print(format_report(report))
        if "bench" in report:
            print()
            print(format_bench(report["bench"], " ".join([config or "", *overrides]).strip()))
    if report.get("bench"):
        return 0  # the timing asked for was taken (the verdict above still says what a real run lacks)
    if not report["ok"]:
        if not args.json:
            print(f"dreamperp doctor: error: {report['problem']}", file=sys.stderr)
        return 2
    return 0
