#!/usr/bin/env bash
# The test command of the README: builds and runs every test of kiln on a fresh machine.
# It needs the Rust toolchain, a C++ compiler (Device::Emu) and python3 with pip (the CUDA wheels).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo --version
# NVRTC, CUDA headers and ptxas from pinned wheels into .cuda/ (idempotent; no GPU needed): build.rs
# compiles every kernel for sm_80/sm_90 with them, and tests/ptxas.rs checks registers and spills.
./scripts/setup-cuda.sh
source <(./scripts/setup-cuda.sh --env)
cargo test --release --all-targets "$@"
cargo test --release --doc
