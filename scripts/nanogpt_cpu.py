#!/usr/bin/env python3
"""nanoGPT's Shakespeare CPU recipe in plain PyTorch: the yardstick for kiln's training speed.

The model is nanoGPT's (karpathy/nanoGPT model.py, rewritten here, not imported): GPT-2
blocks, pre-LN, no biases, tied LM head, GELU (exact erf, as nanoGPT's nn.GELU()), attention
through F.scaled_dot_product_attention, GPT-2 init (residual projections scaled by
1/sqrt(2 n_layer)). The run is nanoGPT's `train_shakespeare_char` config with its CPU
overrides: n_layer 4, n_head 4, n_embd 128, block 64, batch 12, dropout 0, AdamW (beta2 0.99,
weight decay 0.1 on every 2-D weight), lr 1e-3 with 100 warmup iterations, cosine to 1e-4 at
iteration 2000, grad clip 1.0, character vocabulary, 90/10 train/val split.

    python3 -m venv .venv-torch && .venv-torch/bin/pip install torch numpy
    .venv-torch/bin/python scripts/nanogpt_cpu.py --iters 2000            # the whole recipe
    .venv-torch/bin/python scripts/nanogpt_cpu.py --iters 200 --no-eval   # a speed sample

Prints the val loss at every eval (250 iterations, and the last) and, at the end, the median
milliseconds per iteration (forward, backward, clip and AdamW: what kiln's tokens/s counts)
and the tokens per second that gives. Runs on 2 threads (--threads).
"""

import argparse
import math
import statistics
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    def __init__(self, n_embd, n_head):
        super().__init__()
        self.n_head = n_head
        self.ln_1 = nn.LayerNorm(n_embd, bias=False)
        self.c_attn = nn.Linear(n_embd, 3 * n_embd, bias=False)
        self.attn_proj = nn.Linear(n_embd, n_embd, bias=False)
        self.ln_2 = nn.LayerNorm(n_embd, bias=False)
        self.c_fc = nn.Linear(n_embd, 4 * n_embd, bias=False)
        self.mlp_proj = nn.Linear(4 * n_embd, n_embd, bias=False)

    def forward(self, x):
        b, t, c = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(c, dim=2)
        # (B, T, C) -> (B, nh, T, hs)
        q, k, v = (z.view(b, t, self.n_head, c // self.n_head).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.attn_proj(y.transpose(1, 2).contiguous().view(b, t, c))
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x))))


class Gpt(nn.Module):
    def __init__(self, vocab, block_size, n_layer, n_head, n_embd):
        super().__init__()
        self.wte = nn.Embedding(vocab, n_embd)
        self.wpe = nn.Embedding(block_size, n_embd)
        self.h = nn.ModuleList(Block(n_embd, n_head) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd, bias=False)
        self.lm_head = nn.Linear(n_embd, vocab, bias=False)
        self.lm_head.weight = self.wte.weight  # tied
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, mean=0.0, std=0.02)
        for name, p in self.named_parameters():
            if name.endswith("proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * n_layer))

    def forward(self, idx, targets):
        t = idx.shape[1]
        x = self.wte(idx) + self.wpe(torch.arange(t))
        for block in self.h:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data/tinyshakespeare.txt")
    ap.add_argument("--iters", type=int, default=2000, help="iterations to run (the schedule is always 2000 long)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-eval", action="store_true", help="skip the evaluations (speed samples)")
    ap.add_argument("--seed", type=int, default=1337)
    a = ap.parse_args()

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    text = open(a.data, encoding="utf-8").read()
    chars = sorted(set(text))
    stoi = {ch: i for i, ch in enumerate(chars)}
    ids = np.array([stoi[ch] for ch in text], dtype=np.int64)
    n = int(0.9 * len(ids))
    splits = {"train": torch.from_numpy(ids[:n]), "val": torch.from_numpy(ids[n:])}

    block, batch, max_iters, warmup, lr, min_lr = 64, 12, 2000, 100, 1e-3, 1e-4

    def get_batch(split):
        d = splits[split]
        ix = torch.randint(len(d) - block, (batch,))
        x = torch.stack([d[i : i + block] for i in ix])
        y = torch.stack([d[i + 1 : i + 1 + block] for i in ix])
        return x, y

    def lr_at(it):
        if it < warmup:
            return lr * (it + 1) / (warmup + 1)
        ratio = (it - warmup) / (max_iters - warmup)
        return min_lr + 0.5 * (1.0 + math.cos(math.pi * min(ratio, 1.0))) * (lr - min_lr)

    model = Gpt(len(chars), block, n_layer=4, n_head=4, n_embd=128)
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.1},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.99))
    print(f"{sum(p.numel() for p in params)} parameters, vocabulary {len(chars)}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")

    @torch.no_grad()
    def evaluate(it):
        model.eval()
        out = {}
        for split in ("train", "val"):
            out[split] = torch.stack([model(*get_batch(split)) for _ in range(20)]).mean().item()
        model.train()
        print(f"step {it}: train loss {out['train']:.4f}, val loss {out['val']:.4f}", flush=True)

    times = []
    for it in range(a.iters + 1):
        if not a.no_eval and (it % 250 == 0 or it == a.iters):
            evaluate(it)
        if it == a.iters:
            break
        for g in opt.param_groups:
            g["lr"] = lr_at(it)
        x, y = get_batch("train")
        t0 = time.perf_counter()
        loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        times.append(time.perf_counter() - t0)
    timed = times[5:] or times
    ms = statistics.median(timed) * 1e3
    print(f"median {ms:.2f} ms/iter over {len(timed)} iterations (mean {statistics.mean(timed) * 1e3:.2f}); "
          f"{batch * block / ms * 1e3:.0f} tokens/s")


if __name__ == "__main__":
    main()
