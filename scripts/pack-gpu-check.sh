#!/usr/bin/env bash
# Builds the CUDA correctness tests (release, x86-64) on a machine with Rust and packs them, with
# scripts/gpu-check.sh, into the git-ignored target/gpu-check/ (small enough to carry to a GPU
# machine: the binaries are stripped of debug info). Then, on the GPU machine, from the repository
# root and without a Rust toolchain:   ./scripts/gpu-check.sh
# See docs/gpu.md.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup-cuda.sh >/dev/null
source <(./scripts/setup-cuda.sh --env)
OUT=target/gpu-check
rm -rf "$OUT"
mkdir -p "$OUT/bin"
# The kernels must be precompiled (PTX + CUBIN embedded): a GPU machine has no NVRTC.
cargo test --release --no-run --message-format=json --test devices 2>/dev/null |
    python3 -c '
import json, sys
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        print(m["target"]["name"], m["executable"])
' | while read -r name exe; do
    cp "$exe" "$OUT/bin/$name"
    strip --strip-debug "$OUT/bin/$name" 2>/dev/null || true
done
grep -q "PRECOMPILED: bool = true" target/release/build/kiln-*/out/kernels.rs 2>/dev/null ||
    echo "pack-gpu-check: warning: this build has no precompiled kernels (NVRTC missing?)" >&2
ls -la "$OUT/bin"
echo "pack-gpu-check: $(du -sh "$OUT" | cut -f1) in $OUT (carry it with the working tree; run ./scripts/gpu-check.sh there)"
