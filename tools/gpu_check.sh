#!/usr/bin/env bash
# The whole GPU verification in one call (docs/design.md §13): doctor, the CUDA-only tests, the step
# benchmark of configs/default.yaml (fp16/bf16, guidance.compile off/on, guidance.encoder vae/tiny) and a
# 300-step run on the full-size random-weight architecture with mesh export and video. Writes
# OUT_DIR/gpu_check.json and OUT_DIR/gpu_check.md. Budget: 8 minutes on a GPU machine.
#
#   tools/gpu_check.sh OUT_DIR                 # on the GPU machine
#   tools/gpu_check.sh OUT_DIR --dry-run       # the same steps at CPU size (CI runs this)
#   tools/gpu_check.sh --fill-wheels [--local] # where a package registry is reachable: fill tools/gpu_wheels/
#
# The GPU machines lent through the device tool (nvidia-h100-x1, nvidia-h200) reach no package
# registry; their image has Python 3.12 with torch and many packages (tools/gpu_image_packages.txt).
# `--fill-wheels` (tools/fill_wheels.py) puts into tools/gpu_wheels/ (git-ignored) the CPython 3.12
# manylinux x86-64 wheels of what dreamperp needs beyond those, never torch (10 wheels, 36 MiB on
# 2026-12-05), and fails over 60 MiB: one device call carries 64 MiB, the checkout included.
# `--fill-wheels --local` fills for this interpreter instead (every package but torch; add
# GPU_WHEELS_MAX_MIB=0 to lift the size limit); GPU_PYTHON_VERSION=3.13 targets another CPython.
#
# On the GPU machine, when an import is missing, the script installs the wheels of tools/gpu_wheels
# (GPU_WHEELS names another folder) into a folder of its own (GPU_CHECK_SITE, default
# /tmp/dreamperp-site: the image's environment is not written) with `pip install --no-index
# --no-deps --target`, puts it on PYTHONPATH, checks the imports and runs the checkout in place.
# The device call; tools/gpu_wheels is git-ignored, so it must be named in carry (at most 8 files
# come back from $OUT: the report is copied there and the logs go in one archive):
#
#   run(command="tools/gpu_check.sh /tmp/gc; rc=$?; cp /tmp/gc/gpu_check.json /tmp/gc/gpu_check.md $OUT/;
#       tar -czf $OUT/logs.tgz -C /tmp/gc logs; exit $rc", carry=["tools/gpu_wheels"], timeout_s=540)
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
WHEELS="${GPU_WHEELS:-tools/gpu_wheels}"
SITE="${GPU_CHECK_SITE:-/tmp/dreamperp-site}"
# What the check imports: dreamperp's dependencies (import names) and the test runner.
MODULES=(torch numpy diffusers transformers safetensors nerfacc omegaconf imageio imageio_ffmpeg trimesh mcubes fast_simplification xatlas scipy tqdm PIL pytest)

usage() { echo "usage: tools/gpu_check.sh OUT_DIR [--dry-run] | tools/gpu_check.sh --fill-wheels [--local]" >&2; exit 2; }

if [[ "${1:-}" == "--fill-wheels" ]]; then
  shift
  exec "$PY" tools/fill_wheels.py "$@"
fi

[[ $# -ge 1 && "$1" != -* ]] || usage
OUT="$1"; shift
DRY=()
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY=(--dry-run) ;;
    *) usage ;;
  esac
done

missing() {  # the modules of MODULES that this interpreter cannot find (nothing is imported)
  "$PY" -c 'import importlib.util, sys; print(" ".join(m for m in sys.argv[1:] if importlib.util.find_spec(m) is None))' "${MODULES[@]}"
}

MISSING="$(missing)"
if [[ -n "$MISSING" ]]; then
  if ! compgen -G "$WHEELS/*.whl" > /dev/null; then
    echo "gpu_check: missing $MISSING and $WHEELS/ has no wheels: run 'tools/gpu_check.sh --fill-wheels' where a package registry is reachable, and bring the folder along (carry=[\"$WHEELS\"])" >&2
    exit 2
  fi
  echo "gpu_check: missing $MISSING: installing $WHEELS/*.whl into $SITE" >&2
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$WHEELS"/*.whl
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
  MISSING="$(missing)"
  if [[ -n "$MISSING" ]]; then
    echo "gpu_check: still missing after installing $WHEELS/: $MISSING (fill the wheels for this machine: tools/gpu_check.sh --fill-wheels, docs/design.md §13)" >&2
    exit 2
  fi
  # A wheel for another Python, or one that needs newer packages than the machine holds, fails here, not mid-check.
  if ! ERR="$("$PY" -c 'import importlib, sys; [importlib.import_module(m) for m in sys.argv[1:]]' "${MODULES[@]}" 2>&1)"; then
    echo "gpu_check: an import fails after installing $WHEELS/: $(echo "$ERR" | tail -n 1) (fill the wheels for this machine: tools/gpu_check.sh --fill-wheels, docs/design.md §13)" >&2
    exit 2
  fi
fi

export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
exec "$PY" tools/gpu_check.py "$OUT" "${DRY[@]}"
