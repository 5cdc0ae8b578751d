#!/usr/bin/env bash
# Runs kiln's CUDA correctness tests on a machine with an NVIDIA GPU and no Rust toolchain, from the
# prebuilt binaries that scripts/pack-gpu-check.sh put in target/gpu-check/bin. Every op's generic
# test body then runs on Cpu, Emu and Cuda(0) and compares against the CPU (tests/devices.rs);
# KILN_REQUIRE_CUDA=1 makes the run fail if the GPU is not seen, and KILN_CUDA_SYNC=1 waits after every
# launch so a faulting kernel is named. Prints a summary table last. See docs/gpu.md.
set -uo pipefail
cd "$(dirname "$0")/.."
BIN=target/gpu-check/bin
if [[ ! -d $BIN ]]; then
    echo "gpu-check: $BIN is missing; build it first with ./scripts/pack-gpu-check.sh (on a machine with Rust)" >&2
    exit 2
fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
export KILN_REQUIRE_CUDA=1 KILN_CUDA_SYNC=1 RUST_BACKTRACE=1
declare -a rows
status=0
for exe in "$BIN"/*; do
    name=$(basename "$exe")
    start=$SECONDS
    log=$(mktemp)
    "$exe" --test-threads=4 2>&1 | tee "$log"
    rc=${PIPESTATUS[0]}
    secs=$((SECONDS - start))
    result=$(grep -E "^test result:" "$log" | tail -1)
    rows+=("$(printf '%-12s %-6s %5ss  %s' "$name" "$([[ $rc == 0 ]] && echo ok || echo FAIL)" "$secs" "$result")")
    [[ $rc == 0 ]] || status=1
    rm -f "$log"
done
echo
echo "== gpu-check summary =="
printf '%s\n' "${rows[@]}"
exit $status
