#!/usr/bin/env bash
# The GPU check: on a machine with an NVIDIA GPU and no Rust toolchain, runs the release binaries
# that scripts/pack-gpu-check.sh put in target/gpu-check/, in this order:
#   1. the CUDA correctness tests (tests/devices.rs: every op's generic body on Cpu, Emu and Cuda(0),
#      compared with the CPU; tests/gpt_bf16.rs: the tiny GPT's bf16 training, gradients and
#      generation against the CPU's f32; tests/linear_quantized_devices.rs: the quantized-weight
#      kernels against the CPU; KILN_REQUIRE_CUDA=1 fails them if the GPU is not seen,
#      KILN_CUDA_SYNC=1 names a faulting kernel);
#   2. `kiln bench --device cuda` at its default (main) shapes: kernels against the measured copy
#      bandwidth and cuBLAS, and the GPT-2 124M training step in bf16 (JSON and SVG written to the
#      output folder); then the same step in f32;
#   3. a short GPT-2 124M bf16 training run on kiln's embedded corpus whose training loss must fall;
#   4. scripts/torch_gpt2_step.py, PyTorch's GPT-2 124M training step on the same GPU and shapes
#      (f32, and bf16 autocast), for comparison;
#   5. where Nsight Compute's `ncu` is on the PATH, its memory counters (global sectors and requests,
#      shared-memory wavefronts and bank conflicts) for a few kernels at fixed shapes, next to Emu's
#      profiler on the same shapes (docs/emulator.md, "The profiler"), for comparison;
#   6. where an NCCL library is found (KILN_NCCL, PyTorch's nvidia-nccl-cu12 wheel, the system's
#      libnccl.so.2), a single-rank ncclAllReduce of device buffers (`kiln bench --kernels allreduce
#      --collective nccl`): every sum checked, from the blocking all-reduce and from the overlapped one
#      on the communication stream that training uses, the bandwidth per size; skipped, not failed,
#      without NCCL.
# Each step has a time limit so that the whole check stays under 8 minutes on an H200; a summary
# table comes last. Exit status: 0 if every step passed, 1 if one failed, 2 if nothing could run.
#
#   ./scripts/gpu-check.sh [OUTPUT_DIR]      (default target/gpu-check/out; see docs/gpu.md)
# KILN_GPU_CHECK_PACK=DIR runs the binaries in DIR instead (tests/gpu_check_script.rs: fakes).
set -uo pipefail
cd "$(dirname "$0")/.."
PACK=${KILN_GPU_CHECK_PACK:-target/gpu-check}
OUT_DIR=${1:-$PACK/out}
# pack-gpu-check.sh gzips the binaries (the carry is size-limited): unzip them in place
for packed in "$PACK"/bin/*.gz "$PACK"/tests/*.gz; do
    [[ -e $packed ]] && gunzip -f "$packed"
done
if [[ ! -x $PACK/bin/kiln ]]; then
    echo "gpu-check: $PACK/bin/kiln is missing; build it first with ./scripts/pack-gpu-check.sh (on a machine with Rust)" >&2
    exit 2
fi
if ! command -v nvidia-smi >/dev/null || ! nvidia-smi >/dev/null 2>&1; then
    echo "gpu-check: nvidia-smi does not see a GPU on this machine; the check needs one" >&2
    exit 2
fi
mkdir -p "$OUT_DIR"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader | tee "$OUT_DIR/gpu.txt"

# cuBLAS for the library comparison: the CUDA toolkit's or PyTorch's wheel's. cudarc looks for
# libcublas.so or libcublas.so.12; a CUDA 13 wheel has only libcublas.so.13, so link it by name.
CUBLAS_DIRS=$(python3 -c 'import nvidia.cublas, os; print(os.path.join(list(nvidia.cublas.__path__)[0], "lib"))' 2>/dev/null)
for d in $CUBLAS_DIRS /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do
    lib=$(ls "$d"/libcublas.so* 2>/dev/null | head -1)
    if [[ -n $lib ]]; then
        mkdir -p "$PACK/lib"
        ln -sf "$(cd "$(dirname "$lib")" && pwd)/$(basename "$lib")" "$PACK/lib/libcublas.so"
        for dep in "$(dirname "$lib")"/libcublasLt.so*; do
            [[ -e $dep ]] && ln -sf "$(cd "$(dirname "$dep")" && pwd)/$(basename "$dep")" "$PACK/lib/"
        done
        export LD_LIBRARY_PATH="$(cd "$PACK/lib" && pwd):$(dirname "$lib")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
        echo "cuBLAS: $lib"
        break
    fi
done

declare -a rows
status=0
# step NAME LIMIT_S COMMAND...: runs it with a time limit, logs to OUT_DIR/NAME.log, records a row.
step() {
    local name=$1 limit=$2
    shift 2
    echo
    echo "== $name (limit ${limit}s): $*"
    local start=$SECONDS
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$OUT_DIR/$name.log"
    local rc=${PIPESTATUS[0]}
    local result=ok
    if [[ $rc == 124 || $rc == 137 ]]; then
        result="TIMEOUT"
    elif [[ $rc != 0 ]]; then
        result="FAIL($rc)"
    fi
    [[ $result == ok ]] || status=1
    LAST_RESULT=$result
    LAST_SECS=$((SECONDS - start))
}
row() { rows+=("$(printf '%-16s %-9s %5ss  %s' "$1" "$LAST_RESULT" "$LAST_SECS" "$2")"); }

export KILN_REQUIRE_CUDA=1 RUST_BACKTRACE=1

# 1. correctness
for exe in "$PACK"/tests/*; do
    name=$(basename "$exe")
    KILN_CUDA_SYNC=1 step "test-$name" 150 "$exe" --test-threads=4
    row "test $name" "$(grep -E '^test result:' "$OUT_DIR/test-$name.log" | tail -1)"
done

# 2. kernels and the GPT-2 step
step bench 200 "$PACK/bin/kiln" bench --device cuda --gpt-steps 5 \
    --json "$OUT_DIR/bench.json" --plot "$OUT_DIR/bench.svg"
row bench "$(grep -E '^GPT training step' "$OUT_DIR/bench.log" | sed 's/.*: //' | head -1)"
step gpt-f32 90 "$PACK/bin/kiln" bench --device cuda --kernels gpt --gpt-dtype f32 --gpt-steps 3 \
    --json "$OUT_DIR/gpt-f32.json"
row "gpt f32" "$(grep -E '^GPT training step' "$OUT_DIR/gpt-f32.log" | sed 's/.*: //' | head -1)"

# 3. a short GPT-2 124M training run in bf16: the loss must fall
RUN=$OUT_DIR/train-gpt2
rm -rf "$RUN"
step train 150 "$PACK/bin/kiln" train --device cuda --preset gpt2 --tokenizer gpt2 --dtype bf16 --steps 30 \
    --batch-size 8 --warmup 5 --lr 6e-4 --eval-interval 30 --eval-iters 2 --sample-tokens 0 --out "$RUN"
if [[ $LAST_RESULT == ok ]]; then
    if ! falls=$(python3 - "$RUN/metrics.jsonl" <<'EOF'
import json, sys
loss = [r["loss"] for r in map(json.loads, open(sys.argv[1])) if r["kind"] == "train"]
first, last = sum(loss[:5]) / 5, sum(loss[-5:]) / 5
print(f"train loss {first:.3f} -> {last:.3f} over {len(loss)} steps")
sys.exit(0 if last < first - 0.5 else 1)
EOF
    ); then
        LAST_RESULT="FAIL"
        status=1
    fi
else
    falls="(no loss: the run failed)"
fi
row "train gpt2 bf16" "$falls"

# 4. PyTorch for comparison (its figure only; it cannot fail the check unless it breaks)
step torch 90 python3 scripts/torch_gpt2_step.py --batch 16 --steps 10
row "torch gpt2" "$(grep -E '^torch ' "$OUT_DIR/torch.log" | tr '\n' ' ')"

# 5. Nsight Compute next to Emu's profiler (issue 16): the same kernels at the same shapes, counted
#    on the GPU by ncu (ncu.csv) and on the CPU by Emu (emu-profile.json); a comparison, never a failure
PROFILED=(--kernels matmul_bf16,matmul_f32,softmax,layer_norm --sizes 128x128x128,100x192x40,64x1000)
if command -v ncu >/dev/null; then
    NCU_METRICS=l1tex__t_requests_pipe_lsu_mem_global_op_ld.sum,l1tex__t_sectors_pipe_lsu_mem_global_op_ld.sum
    NCU_METRICS+=,l1tex__t_requests_pipe_lsu_mem_global_op_st.sum,l1tex__t_sectors_pipe_lsu_mem_global_op_st.sum
    NCU_METRICS+=,l1tex__data_pipe_lsu_wavefronts_mem_shared_op_ld.sum,l1tex__data_pipe_lsu_wavefronts_mem_shared_op_st.sum
    NCU_METRICS+=,l1tex__data_bank_conflicts_pipe_lsu_mem_shared_op_ld.sum,l1tex__data_bank_conflicts_pipe_lsu_mem_shared_op_st.sum
    step ncu 120 ncu --csv --metrics "$NCU_METRICS" -k 'regex:^(matmul|softmax|layer_norm)' --launch-count 24 \
        --log-file "$OUT_DIR/ncu.csv" "$PACK/bin/kiln" bench --device cuda "${PROFILED[@]}" --reps 5 --seconds 0.01 --copy-mib 16
    KILN_EMU_PROFILE_JSON="$OUT_DIR/emu-profile.json" "$PACK/bin/kiln" bench --device emu --profile "${PROFILED[@]}" \
        --reps 1 --seconds 0.01 --copy-mib 1 >"$OUT_DIR/emu-profile.log" 2>&1
    row "ncu vs emu" "ncu.csv and emu-profile.json in $OUT_DIR (compare by hand: docs/emulator.md)"
else
    rows+=("$(printf '%-16s %-9s %5ss  %s' "ncu vs emu" skipped 0 "no ncu on the PATH")")
fi

# 6. NCCL (issue 19): one rank's ncclAllReduce of GPU buffers, no MPI (the unique id made locally).
#    kiln tries KILN_NCCL, then libnccl.so.2 and libnccl.so on the loader's path; PyTorch's wheel puts
#    libnccl.so.2 in site-packages/nvidia/nccl/lib, outside that path, so it is named here.
NCCL_LIB=${KILN_NCCL:-}
if [[ -z $NCCL_LIB ]]; then
    NCCL_DIRS=$(python3 -c 'import nvidia.nccl, os; print(os.path.join(list(nvidia.nccl.__path__)[0], "lib"))' 2>/dev/null)
    for d in $NCCL_DIRS /usr/lib/x86_64-linux-gnu /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib /usr/local/nccl/lib /usr/lib64; do
        if [[ -e $d/libnccl.so.2 ]]; then
            NCCL_LIB=$d/libnccl.so.2
            break
        fi
    done
fi
if [[ -z $NCCL_LIB ]]; then
    NCCL_LIB=$(ldconfig -p 2>/dev/null | awk '/libnccl\.so\.2 /{print $NF; exit}')
fi
if [[ -n $NCCL_LIB ]]; then
    echo
    echo "NCCL: $NCCL_LIB"
    export KILN_NCCL=$NCCL_LIB
    step nccl 90 "$PACK/bin/kiln" bench --device cuda --kernels allreduce --collective nccl \
        --sizes 4,4096,1048576,16777216,67108864 --reps 20 --json "$OUT_DIR/nccl.json"
    nccl_sums=$(grep -E '^sums: ' "$OUT_DIR/nccl.log" | head -1 | sed -E 's/^sums: //; s/, each .*//')
    row "nccl allreduce" "$(grep -oE 'peak algorithm bandwidth [0-9.]+ GB/s' "$OUT_DIR/nccl.log" | head -1)${nccl_sums:+; $nccl_sums}"
else
    rows+=("$(printf '%-16s %-9s %5ss  %s' "nccl allreduce" skipped 0 "no NCCL library found (pip install nvidia-nccl-cu12, apt-get install libnccl2, or set KILN_NCCL)")")
fi

echo
echo "== gpu-check summary ($(head -1 "$OUT_DIR/gpu.txt"); logs in $OUT_DIR) =="
printf '%s\n' "${rows[@]}"
exit $status
