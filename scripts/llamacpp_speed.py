#!/usr/bin/env python3
"""llama.cpp's prompt and generation speed on a GGUF file, measured as `kiln bench --gguf` measures
kiln's: the reference for docs/perf.md (issue 20).

llama.cpp is built from source by the PyPI package llama-cpp-python:

    python3 -m venv .venv-llama
    .venv-llama/bin/pip install llama-cpp-python==0.3.16      # compiles llama.cpp (minutes)
    .venv-llama/bin/python scripts/llamacpp_speed.py "$(./scripts/fetch-smollm2.sh)" --threads 2

For each prompt length P (128 and 512 by default): the KV cache is cleared, P token ids are
evaluated in one call (prefill, timed), then 128 tokens are generated greedily one at a time
(decode, timed; the argmax of the last logits is fed back, end-of-text is not a stop). The ids of
the prompt are an English paragraph repeated, cut to P tokens. One JSON line per prompt length:
{"prompt_tokens", "prefill_tokens_per_s", "new_tokens", "decode_tokens_per_s", "threads"}.
"""
import argparse
import json
import time

import numpy as np
from llama_cpp import Llama

PARAGRAPH = (
    "The history of the kiln is the history of fired clay: pots, bricks and tiles hardened by heat "
    "in pits, then in chambers of brick that hold the fire and let the potter control it. "
)


def last_logits(llm):
    # llama-cpp-python keeps no logits unless logits_all; read the context's last row directly
    return np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("gguf")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt", type=int, nargs="+", default=[128, 512])
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=1, help="runs per prompt length; the best is printed")
    a = ap.parse_args()

    n_ctx = max(a.prompt) + a.new_tokens + 8
    llm = Llama(model_path=a.gguf, n_threads=a.threads, n_threads_batch=a.threads, n_ctx=n_ctx,
                n_batch=max(a.prompt), n_ubatch=max(a.prompt), logits_all=False, verbose=False)
    text_ids = llm.tokenize(PARAGRAPH.encode(), add_bos=False)
    for p in a.prompt:
        ids = (text_ids * (p // len(text_ids) + 1))[:p]
        best = None
        for _ in range(a.repeats):
            llm.reset()
            t0 = time.perf_counter()
            llm.eval(ids)
            t1 = time.perf_counter()
            for _ in range(a.new_tokens):
                nxt = int(np.argmax(last_logits(llm)))
                llm.eval([nxt])
            t2 = time.perf_counter()
            run = (p / (t1 - t0), a.new_tokens / (t2 - t1))
            best = run if best is None else (max(best[0], run[0]), max(best[1], run[1]))
        print(json.dumps({"prompt_tokens": p, "prefill_tokens_per_s": round(best[0], 1),
                          "new_tokens": a.new_tokens, "decode_tokens_per_s": round(best[1], 1),
                          "threads": a.threads}), flush=True)


if __name__ == "__main__":
    main()
