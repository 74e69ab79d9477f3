#!/usr/bin/env bash
# The whole GPU verification in one call (docs/design.md §13): doctor, the CUDA-only tests, the step
# benchmark of configs/default.yaml (fp16/bf16, guidance.compile off/on, guidance.encoder vae/tiny) and a
# 300-step run on the full-size random-weight architecture with mesh export and video. Writes
# OUT_DIR/gpu_check.json and OUT_DIR/gpu_check.md. Budget: 8 minutes on a GPU machine.
#
#   tools/gpu_check.sh OUT_DIR             # on the GPU machine
#   tools/gpu_check.sh OUT_DIR --dry-run   # the same steps at CPU size (CI runs this)
#   tools/gpu_check.sh --fill-wheels       # where a package registry is reachable: fill tools/gpu_wheels/
#
# A GPU machine without a package registry installs from the wheels brought along in
# tools/gpu_wheels/ (git-ignored, filled by --fill-wheels): `pip install --no-index --find-links`.
# torch itself is not among them (the GPU machine's own CUDA build is used); set GPU_CHECK_TORCH to
# a pip requirement (e.g. "torch==2.5.1") and GPU_CHECK_TORCH_INDEX to its index
# (https://download.pytorch.org/whl/cu124) to bring it along as well. Fill for another Python or
# platform than this one with GPU_PYTHON_VERSION=3.11 (wheels only, then). The dreamperp checkout
# itself is used in place (PYTHONPATH), so nothing needs building there.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
WHEELS="tools/gpu_wheels"

usage() { echo "usage: tools/gpu_check.sh OUT_DIR [--dry-run] | tools/gpu_check.sh --fill-wheels" >&2; exit 2; }

requirements() {
  # dreamperp's dependencies and the test runner, without torch, from pyproject.toml.
  "$PY" - <<'EOF'
import re
text = open("pyproject.toml", encoding="utf-8").read()
deps = re.search(r"^dependencies = \[(.*?)^\]", text, re.S | re.M).group(1)
names = re.findall(r'"([^"]+)"', deps)
for name in names + ["pytest>=7"]:
    if not re.match(r"torch\b", name):
        print(name)
EOF
}

if [[ "${1:-}" == "--fill-wheels" ]]; then
  mkdir -p "$WHEELS"
  TMP="$(mktemp -d)"; requirements > "$TMP/req.txt"
  TARGET=()
  if [[ -n "${GPU_PYTHON_VERSION:-}" ]]; then
    TARGET=(--only-binary=:all: --python-version "$GPU_PYTHON_VERSION" --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 --platform any)
  fi
  # Resolve the whole dependency tree (metadata only), then fetch every package in it except torch and
  # its CUDA libraries: `pip download` alone would pull gigabytes of them in as dependencies.
  "$PY" -m pip install -q --dry-run --ignore-installed --target "$TMP/none" --report "$TMP/report.json" "${TARGET[@]}" -r "$TMP/req.txt"
  "$PY" - "$TMP/report.json" > "$TMP/pins.txt" <<'EOF'
import json, re, sys
for item in json.load(open(sys.argv[1]))["install"]:
    meta = item["metadata"]
    if not re.match(r"(torch|triton|nvidia-|cuda-)", meta["name"].lower()):
        print(f"{meta['name']}=={meta['version']}")
EOF
  "$PY" -m pip download -q --no-deps --dest "$WHEELS" "${TARGET[@]}" -r "$TMP/pins.txt"
  if [[ -n "${GPU_CHECK_TORCH:-}" ]]; then
    "$PY" -m pip download -q --no-deps --dest "$WHEELS" "${TARGET[@]}" "$GPU_CHECK_TORCH" ${GPU_CHECK_TORCH_INDEX:+--index-url "$GPU_CHECK_TORCH_INDEX"}
  fi
  # Packages published only as source (e.g. omegaconf's antlr4 runtime) become wheels here, so the
  # GPU machine installs without building anything.
  shopt -s nullglob
  for sdist in "$WHEELS"/*.tar.gz "$WHEELS"/*.zip; do
    "$PY" -m pip wheel -q --no-deps --wheel-dir "$WHEELS" "$sdist" && rm -f "$sdist"
  done
  rm -rf "$TMP"
  echo "filled $WHEELS: $(ls "$WHEELS" | wc -l) files, $(du -sh "$WHEELS" | cut -f1)"
  exit 0
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

if ! "$PY" -c "import torch, diffusers, transformers, nerfacc, trimesh, mcubes, imageio_ffmpeg, pytest" 2>/dev/null; then
  if compgen -G "$WHEELS/*.whl" > /dev/null; then
    REQ="$(mktemp)"; requirements > "$REQ"
    "$PY" -c "import torch" 2>/dev/null || echo "torch" >> "$REQ"   # only when the machine has none (wheel brought along)
    "$PY" -m pip install -q --no-index --find-links "$WHEELS" -r "$REQ"
    rm -f "$REQ"
  else
    echo "gpu_check: dreamperp's dependencies are missing and $WHEELS/ has no wheels: run 'tools/gpu_check.sh --fill-wheels' where a package registry is reachable, and bring the folder along" >&2
    exit 2
  fi
fi

export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
exec "$PY" tools/gpu_check.py "$OUT" "${DRY[@]}"
