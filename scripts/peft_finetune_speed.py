#!/usr/bin/env python3
"""PyTorch + PEFT's LoRA fine-tuning speed and peak memory on SmolLM2-135M-Instruct, the PyTorch side of
the issue's side-by-side benchmark (rank 8 on q, k, v, o; batch 4 x 256 tokens; 2 threads; f32 and bf16
base; with and without transformers' gradient checkpointing). One configuration per process, so that the
peak resident memory is that configuration's:

    /work/venv-ref/bin/python scripts/peft_finetune_speed.py GGUF --dtype f32 [--recompute] [--steps 10]

(torch 2.15, transformers 5.25, peft 0.21.2, gguf 0.19, accelerate; any venv with them.) transformers reads
the GGUF file itself (`gguf_file=`) and dequantizes it to --dtype. The batch is random token ids (the speed
does not depend on the text), the loss next-token cross-entropy on every position, the optimizer AdamW
(lr 1e-3, no weight decay) over the adapters only, dropout 0, as `kiln finetune --gguf` trains. The first
--warmup steps are not timed. Prints one JSON line: tokens/s over the timed steps (batch x block x steps /
seconds), seconds per step, the peak resident set size of the process (ru_maxrss) and the settings.

The matching kiln command (peak RSS from GNU time's "Maximum resident set size"; kiln's tokens/s is the
progress line's; any data of more than a few windows of 257 tokens will do, e.g. examples/lora/kiln_facts.jsonl):

    RAYON_NUM_THREADS=2 /usr/bin/time -v kiln finetune --gguf GGUF --data DATA --lora-rank 8 --lora-alpha 16 \\
        --lora-targets q_proj,k_proj,v_proj,o_proj --batch-size 4 --block-size 256 --steps 12 --warmup 0 \\
        --eval-interval 1000 --eval-iters 1 [--base-dtype bf16|q] [--recompute] --out RUN

For the bf16-base rows give kiln `--base-dtype bf16` (the base dequantized to bf16, the model computing
in bf16); `--base-dtype q` keeps the base quantized (no PEFT counterpart here). Run both on a quiet machine, in
one sitting; numbers from a loaded machine mean nothing.
"""

import argparse
import json
import os
import resource
import time

import torch


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("gguf")
    ap.add_argument("--dtype", choices=["f32", "bf16"], default="f32")
    ap.add_argument("--recompute", action="store_true", help="gradient_checkpointing_enable()")
    ap.add_argument("--steps", type=int, default=10, help="timed steps")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--block-size", type=int, default=256)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    dtype = {"f32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    path = os.path.abspath(args.gguf)
    model = AutoModelForCausalLM.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path), dtype=dtype)
    if args.recompute:
        # use_reentrant=False: the inputs of the first block (the frozen embedding's output) need no grad
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    lora = LoraConfig(r=args.rank, lora_alpha=2 * args.rank, lora_dropout=0.0, bias="none", task_type="CAUSAL_LM",
                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    model = get_peft_model(model, lora)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.0)
    vocab = model.config.vocab_size
    b, t = args.batch_size, args.block_size

    def step():
        ids = torch.randint(vocab, (b, t + 1))
        logits = model(input_ids=ids[:, :-1]).logits
        loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, vocab), ids[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        return loss.item()

    for _ in range(args.warmup):
        step()
    start = time.perf_counter()
    for _ in range(args.steps):
        loss = step()
    seconds = time.perf_counter() - start
    import peft
    import transformers
    print(json.dumps({
        "tool": "pytorch+peft",
        "dtype": args.dtype,
        "recompute": args.recompute,
        "batch_size": b,
        "block_size": t,
        "rank": args.rank,
        "threads": args.threads,
        "trainable_params": sum(p.numel() for p in params),
        "steps": args.steps,
        "seconds_per_step": seconds / args.steps,
        "tokens_per_s": b * t * args.steps / seconds,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "last_loss": loss,
        "versions": f"torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}",
    }))


if __name__ == "__main__":
    main()
