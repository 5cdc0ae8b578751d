#!/usr/bin/env python3
"""llama.cpp's logits for SmolLM2-135M-Instruct decoded one token at a time, for tests/llama_smollm2.rs.

kiln's `LlamaLoad::AsStored` multiplies with the Q4_1/Q8_0 blocks as llama.cpp's dot products do
(each activation row rounded to 8 bits per block of 32), so this fixture checks that kiln's quantized
decode lands where llama.cpp's does on the same file. llama.cpp is built from source by the PyPI
package llama-cpp-python:

    python3 -m venv .venv-llama
    .venv-llama/bin/pip install llama-cpp-python==0.3.16 numpy      # compiles llama.cpp (minutes)
    .venv-llama/bin/python scripts/llamacpp_logits_reference.py "$(./scripts/fetch-smollm2.sh)" \\
        tests/fixtures/smollm2/logits.json tests/fixtures/smollm2/llamacpp_logits.json

(written with llama-cpp-python 0.3.16, numpy 2.4.6; the CPU's features as llama.cpp reports them go
into the fixture's "source", since they choose llama.cpp's kernels.)

What llama.cpp runs. The chat prompt "What is the capital of France?" with the token ids of the
transformers fixture (argument 2: the ids transformers' and kiln's tokenizers give; llama.cpp's own
tokenizer is checked to give the same ids), fed ONE TOKEN PER llama_decode call (n_batch =
n_ubatch = 1), as kiln's `forward_cached` is fed in the test: every matrix product then has a single
row of activations, which llama.cpp rounds to Q8_1 (for Q4_1 weights) or Q8_0 (the Q8_0 tied head)
blocks before its integer dot products. Its KV cache holds f16 (llama.cpp's default; flash attention
off, n_threads = 2). After the prompt, GREEDY_NEW tokens are generated greedily (the argmax of each
row fed back), stopping after <|im_end|>.

What is stored (JSON), in the format of logits.json so the test reads both alike:
{"source", "llama_cpp_version", "sample_ids" (logits.json's), "prompts": [{"name", "text", "ids"
(prompt ids followed by the generated ids that were fed back), "rows": [...]}], "prompt_len",
"greedy_ids", "argmax" (of every evaluated position)}. Each of the rows (the prompt's first, middle
and last position and two positions of the continuation) has the full row's argmax, max logit,
max |logit| and min logit, its TOP_K largest logits with their ids and the logits at sample_ids,
all float32 as llama.cpp returns them.
"""
import json
import sys
from pathlib import Path

import llama_cpp
import numpy as np
from llama_cpp import Llama

TOP_K = 64
GREEDY_NEW = 12
THREADS = 2
EOS = 2  # <|im_end|>


def f32(x):
    """x (a float32) as the shortest decimal that reads back to it."""
    return float(str(np.float32(x)))


def main():
    if len(sys.argv) != 4:
        sys.exit(f"usage: {sys.argv[0]} MODEL.gguf TRANSFORMERS_LOGITS.json OUT.json")
    gguf_path, hf_path, out = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    hf = json.loads(hf_path.read_text())
    chat = next(p for p in hf["prompts"] if p["name"] == "chat_capital_of_france")
    prompt_ids, sample_ids = chat["ids"], hf["sample_ids"]

    llm = Llama(model_path=str(gguf_path), n_threads=THREADS, n_threads_batch=THREADS,
                n_ctx=128, n_batch=1, n_ubatch=1, logits_all=False, flash_attn=False, verbose=False)
    llama_ids = llm.tokenize(chat["text"].encode(), add_bos=False, special=True)
    if llama_ids != prompt_ids:
        sys.exit(f"llama.cpp tokenizes the prompt as {llama_ids}, transformers as {prompt_ids}")
    vocab = llm.n_vocab()

    def step(token):
        """Feeds one token (one llama_decode of one token) and returns its logits row."""
        llm.eval([token])
        return np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(vocab,)).copy()

    logits = [step(t) for t in prompt_ids]
    greedy = []
    while len(greedy) < GREEDY_NEW:
        greedy.append(int(np.argmax(logits[-1])))
        if greedy[-1] == EOS or len(greedy) == GREEDY_NEW:
            break
        logits.append(step(greedy[-1]))
    fed = prompt_ids + greedy[:-1]  # every id whose logits row was computed
    assert len(logits) == len(fed)

    n, m = len(prompt_ids), len(logits)
    positions = sorted({0, n // 2, n - 1, (n - 1 + m - 1) // 2, m - 1})
    rows = []
    for p in positions:
        row = logits[p]
        top = np.argsort(-row, kind="stable")[:TOP_K]
        rows.append({
            "position": p,
            "argmax": int(np.argmax(row)),
            "max_logit": f32(row.max()),
            "max_abs_logit": f32(np.abs(row).max()),
            "min_logit": f32(row.min()),
            "top_ids": [int(i) for i in top],
            "top_logits": [f32(row[i]) for i in top],
            "sample_logits": [f32(row[i]) for i in sample_ids],
        })
    text = llm.detokenize(greedy, special=True).decode(errors="replace")
    print(f"greedy continuation {greedy}: {text!r}")
    print(f"rows at positions {positions}, argmax {[r['argmax'] for r in rows]}")

    system = llama_cpp.llama_print_system_info().decode().strip()
    result = {
        "source": f"llama-cpp-python {llama_cpp.__version__} (llama.cpp built from source), "
        f"{gguf_path.name}: one token per llama_decode (n_batch=n_ubatch=1), f16 KV cache, "
        f"flash_attn off, n_threads={THREADS}; {system}",
        "llama_cpp_version": llama_cpp.__version__,
        "sample_ids": sample_ids,
        "prompts": [{"name": "chat_capital_of_france_then_greedy", "text": chat["text"], "ids": fed,
                     "rows": rows}],
        "prompt_len": n,
        "greedy_ids": greedy,
        "greedy_text": text,
        "argmax": [int(np.argmax(r)) for r in logits],
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    body = json.dumps(result, ensure_ascii=False, separators=(",", ":"))
    out.write_text(body + "\n")
    print(f"wrote {out} ({len(body)} bytes)")


if __name__ == "__main__":
    main()
