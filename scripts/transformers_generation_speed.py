#!/usr/bin/env python3
"""Hugging Face transformers' inference speed on a Llama GGUF or on GPT-2 124M, measured as `kiln bench
--gguf` and `kiln bench --generate gpt2` measure kiln's (src/bench/generation.rs), for docs/perf.md's
side-by-side tables:

    python3 scripts/transformers_generation_speed.py "$(scripts/fetch-smollm2.sh)" \\
        [--threads 2] [--prompt-lens 128,512] [--new-tokens 128] [--dtypes f32,bf16] [--reps 3] [--json FILE]
    python3 scripts/transformers_generation_speed.py gpt2 --prompt-lens 16   # GPT-2 124M, random weights

(written with torch 2.15.0, transformers 5.25.0, gguf 0.19.0; any venv with torch, transformers, gguf
and accelerate will do.)

The same work as kiln's, step for step, at batch 1:
  - the model: `from_pretrained(dir, gguf_file=...)` dequantizes the file to float32 (for `gpt2`:
    `GPT2LMHeadModel(GPT2Config())`, GPT-2 124M's shape with random weights, as kiln's); bf16 casts
    those weights once (`model.to(torch.bfloat16)`), activations and KV cache in bf16 as kiln's
    `to_dtype`; logits are read as float32;
  - prefill: one forward of the whole prompt with an empty cache (`use_cache=True`, every position's
    logits computed, as kiln's `forward_cached`), then the greedy pick of the first new token from the
    last position (prompt tokens/s);
  - generation: NEW_TOKENS forwards of one token each on the cache, each picking the next token
    greedily, never stopping at end-of-sequence (new tokens/s). The loop is written out rather than
    `model.generate`, whose extra work (logits processors, stopping criteria, and a prefill that
    computes only the last position's logits) kiln does not do;
  - the prompt: PROMPT_LEN ids drawn with a fixed seed (speed does not depend on which);
  - timing: the host clock around each prefill and around all generation steps together; one
    untimed warm-up (16 ids, 2 steps) per dtype, then REPS repetitions with fresh caches; the median.
"""
import argparse
import copy
import json
import statistics
import time
from pathlib import Path

import torch
import transformers
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16}


def prefill_and_generate(model, prompt, new_tokens):
    """(prefill seconds, generation seconds) of one prompt and new_tokens greedy steps."""
    with torch.inference_mode():
        t0 = time.perf_counter()
        out = model(input_ids=prompt, use_cache=True)
        nxt = out.logits[:, -1].float().argmax(-1, keepdim=True)
        cache = out.cache
        prefill = time.perf_counter() - t0
        t1 = time.perf_counter()
        for _ in range(new_tokens):
            out = model(input_ids=nxt, cache=cache, use_cache=True)
            nxt = out.logits[:, -1].float().argmax(-1, keepdim=True)
            cache = out.cache
        return prefill, time.perf_counter() - t1


def stats(samples):
    return {"reps": len(samples), "median_s": statistics.median(samples), "min_s": min(samples), "max_s": max(samples)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help="a GGUF file, or gpt2 for GPT-2 124M with random weights")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt-lens", default="128,512")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--dtypes", default="f32,bf16")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    prompt_lens = [int(n) for n in args.prompt_lens.split(",")]
    dtypes = args.dtypes.split(",")
    if not all(d in DTYPES for d in dtypes) or min(prompt_lens) < 1 or args.new_tokens < 1 or args.reps < 1:
        ap.error("dtypes are f32 or bf16; prompt lengths, new tokens and reps are positive")

    t0 = time.perf_counter()
    if args.model == "gpt2":
        torch.manual_seed(1234)
        model_name = "GPT-2 124M, random weights"
        base = GPT2LMHeadModel(GPT2Config()).eval()
    else:
        path = Path(args.model).resolve()
        model_name = path.name
        base = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()
    load_s = time.perf_counter() - t0
    vocab = base.config.vocab_size
    gen = torch.Generator().manual_seed(1234)
    ids = torch.randint(0, vocab, (1, max(prompt_lens)), generator=gen)
    rows = []
    print(
        f"transformers {transformers.__version__} / torch {torch.__version__} on {model_name} "
        f"({sum(p.numel() for p in base.parameters()) / 1e6:.1f}M parameters), {torch.get_num_threads()} threads, "
        f"batch 1, greedy; loaded in {load_s:.1f} s"
    )
    print(f"{'dtype':<5} {'prompt':>7} {'new':>5} {'prefill ms':>11} {'prompt tok/s':>13} {'generate ms':>11} {'new tok/s':>13} {'reps':>4}")
    for name in dtypes:
        model = copy.deepcopy(base).to(DTYPES[name])  # .to casts in place: keep base in f32
        prefill_and_generate(model, ids[:, :16], 2)  # warm-up
        for n in prompt_lens:
            times = [prefill_and_generate(model, ids[:, :n], args.new_tokens) for _ in range(args.reps)]
            prefill, generation = stats([t[0] for t in times]), stats([t[1] for t in times])
            row = {
                "dtype": name,
                "batch": 1,
                "prompt_tokens": n,
                "new_tokens": args.new_tokens,
                "prefill": prefill,
                "prefill_tokens_per_s": n / prefill["median_s"],
                "generation": generation,
                "generation_tokens_per_s": args.new_tokens / generation["median_s"],
            }
            rows.append(row)
            print(
                f"{name:<5} {n:>7} {args.new_tokens:>5} {prefill['median_s'] * 1e3:>11.1f} {row['prefill_tokens_per_s']:>13.1f} "
                f"{generation['median_s'] * 1e3:>11.1f} {row['generation_tokens_per_s']:>13.2f} {args.reps:>4}",
                flush=True,
            )
    if args.json:
        report = {
            "engine": f"transformers {transformers.__version__}, torch {torch.__version__}",
            "model": model_name,
            "threads": torch.get_num_threads(),
            "load_s": load_s,
            "rows": rows,
        }
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
