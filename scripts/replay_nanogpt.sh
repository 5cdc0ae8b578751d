#!/usr/bin/env bash
# kiln on nanoGPT's own run: PyTorch runs nanoGPT's Shakespeare CPU recipe with its own seed and
# records it (initial weights, every batch's windows, its losses); kiln then trains from those
# weights on those windows (`--init-weights`, `--windows`) and the two runs are printed side by
# side. Both runs share the seed's draws, so what differs is the engine alone (and GELU's erf
# form against kiln's tanh, unless GELU=tanh).
#
#   scripts/replay_nanogpt.sh [SEED] [extra kiln train flags, e.g. --stop-at 10]
#
# Needs .venv-torch (see scripts/nanogpt_cpu.py; PYTHON overrides) and the Shakespeare text;
# KILN=path/to/kiln runs a built binary instead of `cargo run --release`; ITERS=N stops PyTorch
# after N iterations (a smoke test: pass --stop-at N for kiln too).
set -euo pipefail
cd "$(dirname "$0")/.."
seed=${1:-1337}
shift || true
py=${PYTHON:-.venv-torch/bin/python}
dir=runs/nanogpt-$seed
rm -rf "$dir"
$py scripts/nanogpt_cpu.py --seed "$seed" --gelu "${GELU:-erf}" --export-run "$dir/export" ${ITERS:+--iters $ITERS}
${KILN:-cargo run --release --quiet --} train --data ../shared/data/tinyshakespeare.txt --tokenizer char \
    --n-layer 4 --n-head 4 --n-embd 128 --block-size 64 --bias false --dropout 0 \
    --batch-size 12 --steps 2000 --lr 1e-3 --min-lr 1e-4 --warmup 100 \
    --beta2 0.99 --weight-decay 0.1 --grad-clip 1.0 --eval-interval 250 --eval-iters 20 \
    --init-weights "$dir/export/init.safetensors" --windows "$dir/export/windows.json" \
    --sample-tokens 0 --out "$dir/kiln" "$@"
$py scripts/nanogpt_cpu.py --compare "$dir/export" "$dir/kiln"
