"""Run the test suite under several CPU numerics variants and print a table.

fp32 results depend on the CPU's kernels, the thread count and the batch shape. The suite must pass
on any CPU, so it is run here with different thread counts, ATen vector widths and MKL/oneDNN
instruction sets (which change the GEMM kernels the way a different CPU would)::

    python tools/test_variants.py                  # every variant
    python tools/test_variants.py --only 1thread   # one of them
    python tools/test_variants.py -- -k prior      # extra pytest arguments after --

Exit code 0 when every variant passed.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

VARIANTS: dict[str, dict[str, str]] = {
    "default": {},
    "1thread": {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"},
    "aten-default": {"ATEN_CPU_CAPABILITY": "default"},
    "aten-avx2": {"ATEN_CPU_CAPABILITY": "avx2"},
    # Older GEMM kernels in MKL and oneDNN: the closest a single machine gets to another CPU model.
    "gemm-sse": {"MKL_ENABLE_INSTRUCTIONS": "SSE4_2", "ONEDNN_MAX_CPU_ISA": "SSE41", "ATEN_CPU_CAPABILITY": "default", "OMP_NUM_THREADS": "1"},
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", choices=sorted(VARIANTS), help="run only this variant (repeatable)")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    args = parser.parse_args(argv)
    names = args.only or list(VARIANTS)
    rows = []
    for name in names:
        env = {**os.environ, **VARIANTS[name]}
        start = time.perf_counter()
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests", *args.pytest_args]
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        lines = [ln for ln in proc.stdout.strip().splitlines() if ln.strip()]
        summary = lines[-1] if lines else proc.stderr.strip()[-200:]
        rows.append((name, proc.returncode == 0, seconds, summary))
        print(f"{name:<13} {'ok' if proc.returncode == 0 else 'FAILED':<7} {seconds:7.1f} s  {summary}", flush=True)
        if proc.returncode != 0:
            failed = [ln for ln in lines if ln.startswith("FAILED")]
            for ln in failed[:20]:
                print(f"    {ln}", flush=True)
    print()
    print("| variant | environment | result | time |")
    print("| --- | --- | --- | ---: |")
    for name, ok, seconds, _ in rows:
        env = " ".join(f"{k}={v}" for k, v in VARIANTS[name].items()) or "(machine defaults)"
        print(f"| {name} | `{env}` | {'pass' if ok else 'FAIL'} | {seconds:.0f} s |")
    return 0 if all(ok for _, ok, _, _ in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
