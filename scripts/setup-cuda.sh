#!/usr/bin/env bash
# Installs the pieces of the CUDA toolkit that kiln's build and tests need into the git-ignored
# `.cuda/` folder of this repository, from pinned PyPI wheels:
#
#   nvidia-cuda-nvrtc-cu12   12.9.86  libnvrtc: build.rs compiles kernels/*.cu to PTX and CUBIN
#   nvidia-cuda-runtime-cu12 12.9.79  headers (cuda_fp16.h, cuda_bf16.h, ...) the kernels include
#   nvidia-cuda-nvcc-cu12    12.9.86  ptxas: tests/ptxas.rs checks every kernel's registers and spills
#
# No root, nothing written outside the repository except pip's cache. Idempotent: a second run that
# finds the same versions installed does nothing. No GPU or driver is needed for any of this.
#
# Usage:   ./scripts/setup-cuda.sh            install (or check) .cuda/
#          source <(./scripts/setup-cuda.sh --env)   print the exports build.rs and the tests read
#
# NVRTC is pinned no newer than the drivers we target: PTX from a newer toolkit fails to load on an
# older driver (CUDA_ERROR_UNSUPPORTED_PTX_VERSION). 12.9 PTX loads on drivers >= 575.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
DEST="$ROOT/.cuda"
PKGS=(nvidia-cuda-nvrtc-cu12==12.9.86 nvidia-cuda-runtime-cu12==12.9.79 nvidia-cuda-nvcc-cu12==12.9.86)
STAMP="$DEST/.installed"
WANT="${PKGS[*]}"

print_env() {
    local nv="$DEST/nvidia"
    echo "export KILN_CUDA_DIR=$DEST"
    echo "export KILN_NVRTC=$nv/cuda_nvrtc/lib/libnvrtc.so.12"
    echo "export KILN_CUDA_INCLUDE=$nv/cuda_runtime/include"
    echo "export KILN_PTXAS=$nv/cuda_nvcc/bin/ptxas"
}

if [[ "${1:-}" == "--env" ]]; then
    print_env
    exit 0
fi

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" && -x "$DEST/nvidia/cuda_nvcc/bin/ptxas" ]]; then
    echo "setup-cuda: .cuda/ already has ${PKGS[*]}"
    exit 0
fi

PY=${PYTHON:-python3}
if ! "$PY" -m pip --version >/dev/null 2>&1; then
    echo "setup-cuda: needs python3 with pip to fetch the NVRTC/ptxas wheels; skipping." >&2
    echo "setup-cuda: the build still works (kernels compile at first GPU use), the ptxas test skips." >&2
    exit 0
fi

echo "setup-cuda: installing ${PKGS[*]} into .cuda/"
TMP="$DEST.tmp.$$"
rm -rf "$TMP"
trap 'rm -rf "$TMP"' EXIT
# --no-deps: these wheels need nothing else; --target keeps everything inside the repository.
if ! "$PY" -m pip install --quiet --disable-pip-version-check --no-deps --target "$TMP" "${PKGS[@]}"; then
    echo "setup-cuda: pip could not install the wheels (offline?); the build falls back to embedding" >&2
    echo "setup-cuda: kernel sources and the ptxas test skips." >&2
    exit 0
fi
# ptxas from the wheel sometimes lacks the executable bit.
chmod +x "$TMP"/nvidia/cuda_nvcc/bin/* 2>/dev/null || true
rm -rf "$DEST"
mv "$TMP" "$DEST"
echo "$WANT" >"$STAMP"
echo "setup-cuda: done; $(du -sh "$DEST" | cut -f1) in .cuda/"
