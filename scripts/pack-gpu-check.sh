#!/usr/bin/env bash
# Builds what scripts/gpu-check.sh runs (x86-64 release binaries: the `kiln` command and the CUDA
# correctness tests, kernels precompiled to PTX + CUBIN) and packs them into the git-ignored
# target/gpu-check/ (bin/kiln.gz, tests/*.gz), stripped and gzipped (the embedded kernels compress
# about 5:1) so that the folder stays well under the 64 MiB a device machine takes with the working
# tree; gpu-check.sh unzips them where it runs. Then, on the GPU machine, from the repository root and
# without a Rust toolchain:   ./scripts/gpu-check.sh
# See docs/gpu.md.
set -euo pipefail
cd "$(dirname "$0")/.."
# A device machine takes 64 MiB in all: this folder plus the working tree's tracked files.
TREE_MIB=$(( ($(git ls-files -z | xargs -0 du -cb | tail -1 | cut -f1) >> 20) + 1 ))
LIMIT_MIB=$((64 - TREE_MIB))
if [[ $(uname -m) != x86_64 ]]; then
    echo "pack-gpu-check: this machine is $(uname -m); the GPU machines are x86-64, so build there or on x86-64" >&2
    exit 1
fi
./scripts/setup-cuda.sh >/dev/null
source <(./scripts/setup-cuda.sh --env)
OUT=target/gpu-check
rm -rf "$OUT"
mkdir -p "$OUT/bin" "$OUT/tests"
# The kernels must be precompiled (PTX + CUBIN embedded): a GPU machine has no NVRTC.
cargo build --release --bin kiln
cargo test --release --no-run --message-format=json --test devices --test gpt_bf16 --test linear_quantized_devices --test ptx_helpers 2>/dev/null |
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
    cp "$exe" "$OUT/tests/$name"
done
cp target/release/kiln "$OUT/bin/kiln"
strip "$OUT"/bin/* "$OUT"/tests/*
gzip -9 "$OUT"/bin/* "$OUT"/tests/*
if ! grep -q "PRECOMPILED: bool = true" target/release/build/kiln-*/out/kernels.rs 2>/dev/null; then
    echo "pack-gpu-check: this build has no precompiled kernels (NVRTC missing?); a GPU machine could not compile them" >&2
    exit 1
fi
ls -la "$OUT/bin" "$OUT/tests"
mib=$(du -sm "$OUT" | cut -f1)
echo "pack-gpu-check: ${mib} MiB in $OUT (carry it with the working tree; run ./scripts/gpu-check.sh there)"
if ((mib >= LIMIT_MIB)); then
    echo "pack-gpu-check: $OUT is ${mib} MiB, over the ${LIMIT_MIB} MiB a device machine takes beside the ${TREE_MIB} MiB working tree" >&2
    exit 1
fi
