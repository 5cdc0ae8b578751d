#!/usr/bin/env python3
"""PyTorch's GPT-2 124M training step on a GPU, for comparison with `kiln bench --device cuda`.

A plain GPT-2 (learned positions, pre-LN blocks, tanh GELU, tied LM head, biases, no dropout) as
kiln's model is, trained on random token ids with AdamW and gradient clipping at 1.0, the steps
timed with CUDA events after warm-up. Prints one line per precision:

    torch f32  batch 16 x 1024: 123.4 ms/step, 132,000 tokens/s, MFU 12.3% (of 989 TFLOP/s bf16 dense, datasheet)

f32 is kiln's model's precision (TF32 off, as kiln's f32 matmul); bf16 is autocast, as nanoGPT and
llm.c train. Attention is torch's scaled_dot_product_attention (fused). MFU uses the same FLOPs per
token as kiln's bench (6·N + 12·L·H·Q·T, N without the position embeddings) over H100/H200 datasheet
peaks (dense bf16 989, fp32 67 TFLOP/s); kiln's bench divides by cuBLAS's measured rate instead.

Usage: python3 scripts/torch_gpt2_step.py [--batch 16] [--steps 10] [--dtype f32,bf16]
"""

import argparse
import math
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

PEAK_TFLOPS = {"f32": 67.0, "bf16": 989.0}  # H100/H200 SXM datasheet, dense


class Block(nn.Module):
    def __init__(self, c, n_head):
        super().__init__()
        self.n_head = n_head
        self.ln_1 = nn.LayerNorm(c)
        self.c_attn = nn.Linear(c, 3 * c)
        self.c_proj = nn.Linear(c, c)
        self.ln_2 = nn.LayerNorm(c)
        self.c_fc = nn.Linear(c, 4 * c)
        self.mlp_proj = nn.Linear(4 * c, c)

    def forward(self, x):
        b, t, c = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(c, dim=2)
        q, k, v = (z.view(b, t, self.n_head, c // self.n_head).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.c_proj(y.transpose(1, 2).reshape(b, t, c))
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))


class GPT(nn.Module):
    def __init__(self, vocab=50257, block=1024, n_layer=12, n_head=12, c=768):
        super().__init__()
        self.wte = nn.Embedding(vocab, c)
        self.wpe = nn.Embedding(block, c)
        self.h = nn.ModuleList(Block(c, n_head) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(c)
        self.cfg = (vocab, block, n_layer, n_head, c)
        for name, p in self.named_parameters():
            if p.dim() >= 2:
                std = 0.02 / math.sqrt(2 * n_layer) if name.endswith(("c_proj.weight", "mlp_proj.weight")) else 0.02
                nn.init.normal_(p, 0.0, std)
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    def forward(self, idx, targets):
        t = idx.shape[1]
        x = self.wte(idx) + self.wpe(torch.arange(t, device=idx.device))
        for block in self.h:
            x = block(x)
        logits = self.ln_f(x) @ self.wte.weight.t()  # tied head
        return F.cross_entropy(logits.view(-1, logits.shape[-1]).float(), targets.view(-1))

    def flops_per_token(self):
        vocab, block, n_layer, n_head, c = self.cfg
        n = sum(p.numel() for p in self.parameters()) - self.wpe.weight.numel()
        return 6 * n + 12 * n_layer * n_head * (c // n_head) * block


def run(dtype, batch, steps, warmup=3):
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(0)
    model = GPT().cuda()
    opt = torch.optim.AdamW(model.parameters(), lr=6e-4, betas=(0.9, 0.95), weight_decay=0.1)
    vocab, block = model.cfg[0], model.cfg[1]
    data = torch.randint(0, vocab, (4, batch, block + 1), device="cuda")
    times = []
    for i in range(warmup + steps):
        x, y = data[i % 4, :, :-1], data[i % 4, :, 1:]
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=dtype == "bf16"):
            loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        end.record()
        if i >= warmup:
            times.append((start, end))
    torch.cuda.synchronize()
    ms = sorted(s.elapsed_time(e) for s, e in times)[len(times) // 2]
    tokens = batch * block / (ms / 1e3)
    mfu = 100 * model.flops_per_token() * tokens / (PEAK_TFLOPS[dtype] * 1e12)
    print(
        f"torch {dtype:<4} batch {batch} x {block}: {ms:.1f} ms/step, {tokens:,.0f} tokens/s, "
        f"MFU {mfu:.1f}% (of {PEAK_TFLOPS[dtype]:.0f} TFLOP/s {dtype} dense, datasheet), loss {loss.item():.3f}",
        flush=True,
    )
    del model, opt
    torch.cuda.empty_cache()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--dtype", default="f32,bf16", help="comma-separated: f32, bf16")
    a = ap.parse_args()
    if not torch.cuda.is_available():
        print("torch_gpt2_step: PyTorch sees no CUDA GPU", file=sys.stderr)
        return 2
    print(f"torch {torch.__version__} on {torch.cuda.get_device_name()}", flush=True)
    for dtype in a.dtype.split(","):
        if dtype not in PEAK_TFLOPS:
            print(f"torch_gpt2_step: unknown dtype {dtype!r}; use f32 or bf16", file=sys.stderr)
            return 2
        run(dtype, a.batch, a.steps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
