#!/usr/bin/env python3
"""PyTorch's GPT-2 124M training step on a GPU, for comparison with `kiln bench --device cuda`.

A plain GPT-2 (learned positions, pre-LN blocks, tanh GELU, tied LM head, biases, no dropout) as
kiln's model is, trained on random token ids with AdamW and gradient clipping at 1.0, the steps
timed with CUDA events after warm-up. Prints one line per precision:

    torch bf16 batch 16 x 1024: 123.4 ms/step, 132,000 tokens/s, 112.8 TFLOP/s, MFU 15.1% of measured
    745 TFLOP/s (torch.matmul bf16 8192^3), 11.4% of 989 (datasheet), loss 10.98

f32 is kiln's f32 mode (TF32 off, as kiln's f32 matmul); bf16 is autocast, as nanoGPT trains and as
kiln's `--dtype bf16` (the same shapes; kiln's bench runs GPT-2 in bf16 on a GPU): bf16 matmuls and
attention, f32 master weights and AdamW state. One difference: autocast keeps the residual stream
and LayerNorm in f32 and runs the loss on f32 logits, where kiln keeps them bf16 (as llm.c) with
f32 statistics inside its kernels. Attention is torch's scaled_dot_product_attention (fused). MFU
uses kiln's FLOPs per token (6·N + 12·L·H·Q·T, N without the position embeddings) over the rate of
torch.matmul at 8192^3 in the same dtype measured here (kiln's bench divides by cuBLAS's measured
rate the same way), and over the H100/H200 datasheet's dense peaks (bf16 989, fp32 67 TFLOP/s).

`--device cpu --shape tiny` runs the same code on a 2-layer model on the CPU: a check of the
script itself (it needs no GPU), not a figure to compare.

Usage: python3 scripts/torch_gpt2_step.py [--batch 16] [--context 1024] [--steps 10] [--dtype f32,bf16]
                                          [--device cuda|cpu] [--shape gpt2|tiny] [--threads N]

On the CPU, as issue 18's GPT-2 124M figures: `--device cpu --batch 2 --context 256 --steps 5 --threads 2`.
"""

import argparse
import math
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

PEAK_TFLOPS = {"f32": 67.0, "bf16": 989.0}  # H100/H200 SXM datasheet, dense
TORCH_DTYPE = {"f32": torch.float32, "bf16": torch.bfloat16}
# (vocab, block, n_layer, n_head, n_embd)
SHAPES = {"gpt2": (50257, 1024, 12, 12, 768), "tiny": (256, 64, 2, 2, 64)}


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
        return F.cross_entropy(logits.view(-1, logits.shape[-1]).float(), targets.reshape(-1))  # targets: a strided view

    def flops_per_token(self, t):
        """Training FLOPs per token of a sequence of t tokens."""
        vocab, block, n_layer, n_head, c = self.cfg
        n = sum(p.numel() for p in self.parameters()) - self.wpe.weight.numel()
        return 6 * n + 12 * n_layer * n_head * (c // n_head) * t


class Timer:
    """Elapsed milliseconds of a region: CUDA events on a GPU, the host clock on the CPU."""

    def __init__(self, device):
        self.cuda = device == "cuda"

    def start(self):
        if self.cuda:
            self.events = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
            self.events[0].record()
        else:
            self.t0 = time.perf_counter()

    def stop(self):
        """A callable returning the region's milliseconds (after a synchronize on a GPU)."""
        if self.cuda:
            self.events[1].record()
            start, end = self.events
            return lambda: start.elapsed_time(end)
        ms = (time.perf_counter() - self.t0) * 1e3
        return lambda: ms


def median_ms(device, fn, reps, warmup):
    timer, times = Timer(device), []
    for i in range(warmup + reps):
        timer.start()
        out = fn(i)
        if i >= warmup:
            times.append(timer.stop())
    if device == "cuda":
        torch.cuda.synchronize()
    return sorted(t() for t in times)[len(times) // 2], out


def matmul_tflops(dtype, device, n):
    """The measured ceiling: torch.matmul of two n x n matrices in `dtype`."""
    a = torch.randn(n, n, device=device, dtype=TORCH_DTYPE[dtype])
    b = torch.randn(n, n, device=device, dtype=TORCH_DTYPE[dtype])
    ms, _ = median_ms(device, lambda i: a @ b, reps=10, warmup=3)
    return 2 * n**3 / (ms / 1e3) / 1e12


def run(dtype, batch, context, steps, device, shape, warmup=3):
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(0)
    vocab, block, n_layer, n_head, c = SHAPES[shape]
    context = context or block
    model = GPT(vocab, block, n_layer, n_head, c).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=6e-4, betas=(0.9, 0.95), weight_decay=0.1)
    data = torch.randint(0, vocab, (4, batch, context + 1), device=device)

    def step(i):
        x, y = data[i % 4, :, :-1], data[i % 4, :, 1:]
        with torch.autocast(device, dtype=torch.bfloat16, enabled=dtype == "bf16"):
            loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    ms, loss = median_ms(device, step, steps, warmup)
    tokens = batch * context / (ms / 1e3)
    tflops = model.flops_per_token(context) * tokens / 1e12
    n = 8192 if device == "cuda" else 512
    peak = matmul_tflops(dtype, device, n)
    datasheet = f", {100 * tflops / PEAK_TFLOPS[dtype]:.1f}% of {PEAK_TFLOPS[dtype]:.0f} (datasheet)" if device == "cuda" else ""
    print(
        f"torch {dtype:<4} batch {batch} x {context}: {ms:.1f} ms/step, {tokens:,.0f} tokens/s, {tflops:.3g} TFLOP/s, "
        f"MFU {100 * tflops / peak:.1f}% of measured {peak:.3g} TFLOP/s (torch.matmul {dtype} {n}^3){datasheet}, "
        f"loss {loss.item():.3f}",
        flush=True,
    )
    del model, opt
    if device == "cuda":
        torch.cuda.empty_cache()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--context", type=int, default=0, help="tokens per sequence [the model's block, 1024]")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads on the CPU [torch's default]")
    ap.add_argument("--dtype", default="f32,bf16", help="comma-separated: f32, bf16")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--shape", default="gpt2", choices=sorted(SHAPES), help="tiny: a check of the script")
    a = ap.parse_args()
    dtypes = a.dtype.split(",")
    for dtype in dtypes:
        if dtype not in PEAK_TFLOPS:
            print(f"torch_gpt2_step: unknown dtype {dtype!r}; use f32 or bf16", file=sys.stderr)
            return 2
    if a.device == "cuda" and not torch.cuda.is_available():
        print("torch_gpt2_step: PyTorch sees no CUDA GPU", file=sys.stderr)
        return 2
    if a.threads:
        torch.set_num_threads(a.threads)
    where = torch.cuda.get_device_name() if a.device == "cuda" else "the CPU"
    print(f"torch {torch.__version__} on {where}, {a.shape} shape", flush=True)
    for dtype in dtypes:
        run(dtype, a.batch, a.context, a.steps, a.device, a.shape)
    return 0


if __name__ == "__main__":
    sys.exit(main())
