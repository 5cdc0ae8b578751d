#!/usr/bin/env bash
# The test command of the README: builds and runs every test of kiln on a fresh machine.
# It needs only the Rust toolchain; everything else is a cargo dependency.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo --version
cargo test --release --all-targets "$@"
cargo test --release --doc
