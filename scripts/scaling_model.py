#!/usr/bin/env python3
"""The scaling model of data-parallel training (docs/distributed.md, "Scaling model").

Weak scaling: every rank keeps its batch, so the compute per step per rank is fixed and N ranks
process N times the tokens; the step adds the gradient all-reduce. For a ring all-reduce of S
bytes over N ranks, sent in B buckets (kiln: 16 MiB each, one all-reduce per bucket):

    t_comm(N) = B · 2(N−1) · α  +  2(N−1)/N · S / β

(α: the latency of one ring step; β: the bus bandwidth of each rank's link, which is what
`kiln bench --kernels allreduce` reports as busbw). A step without overlap takes
t_compute + t_comm (kiln before it overlapped, and still under ZeRO-1); with the all-reduce fully
overlapped with the backward, at best max(t_compute, t_comm) + the last bucket's time (kiln
starts each bucket during the backward; the bound is optimistic: the backward is about 2/3 of
t_compute, and an MPI without a progress thread advances a bucket only when kiln tests it, between
backward nodes). Efficiency is t_compute / t_step.

Every input below is an ASSUMPTION unless marked measured: datasheet link rates and a guessed
fraction of peak FLOP/s. Change them and rerun: `python3 scripts/scaling_model.py`
(standard library only; any Python 3.8+).
"""

MiB = 1 << 20
BUCKET_BYTES = 16 * MiB  # kiln's gradient bucket (src/train/data_parallel.rs: 4 Mi f32)

# name: (parameters, layers, heads, head size, sequence length)
MODELS = {
    # GPT-2 small with tied embeddings, as kiln counts it (vocab 50257, block 1024)
    "GPT-2 124M": (124_439_808, 12, 12, 64, 1024),
    # SmolLM2-135M (30 layers, 9 heads of 64, tied embeddings), trained at 2048 tokens
    "SmolLM2-135M": (134_515_008, 30, 9, 64, 2048),
}

# name: (sequences per rank per step, achieved FLOP/s per rank, [(max ranks, alpha s, beta B/s)])
# The link list gives, for N up to each bound, the slowest link a ring crosses.
SETUPS = {
    # One rank per CPU node: a 2-socket, 64-core AVX-512 server, assumed to reach 2 TFLOP/s in
    # f32 (about a quarter of its FMA peak); nodes joined by 100 Gb/s InfiniBand (HDR100,
    # 12.5 GB/s per direction, ~2 µs per step).
    "CPU cluster, 100 Gb/s InfiniBand": (8, 2e12, [(1 << 30, 2e-6, 12.5e9)]),
    # The same nodes on 25 Gb/s Ethernet (3.125 GB/s, ~15 µs per step through TCP).
    "CPU cluster, 25 GbE": (8, 2e12, [(1 << 30, 15e-6, 3.125e9)]),
    # One rank per H100 SXM GPU, 40% of its 989 TFLOP/s dense bf16 (datasheet); within a node
    # of 8, NVLink 4 at 450 GB/s per direction (datasheet); across nodes one 400 Gb/s NDR NIC
    # per GPU (50 GB/s, ~2 µs per step).
    "8-GPU NVLink nodes (H100 SXM), NDR 400G between nodes": (16, 0.4 * 989e12, [(8, 1e-6, 450e9), (1 << 30, 2e-6, 50e9)]),
}

RANKS = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024]


def flops_per_token(params, layers, heads, head, seq):
    """nanoGPT's estimate: 6 per parameter plus the attention scores, 12·L·H·Q·T."""
    return 6 * params + 12 * layers * heads * head * seq


def link(links, n):
    for bound, alpha, beta in links:
        if n <= bound:
            return alpha, beta
    raise ValueError(n)


def allreduce_s(n, size, links):
    if n == 1:
        return 0.0, 0.0
    alpha, beta = link(links, n)
    buckets = -(-size // BUCKET_BYTES)
    latency = buckets * 2 * (n - 1) * alpha
    bandwidth = 2 * (n - 1) / n * size / beta
    last_bucket = 2 * (n - 1) * alpha + 2 * (n - 1) / n * min(size, BUCKET_BYTES) / beta
    return latency + bandwidth, last_bucket


def main():
    for model, (params, layers, heads, head, seq) in MODELS.items():
        grad_bytes = 4 * params  # f32 gradients
        for setup, (seqs, flops, links) in SETUPS.items():
            compute = seqs * seq * flops_per_token(params, layers, heads, head, seq) / flops
            print(f"\n{model} on {setup}: {seqs} × {seq} tokens per rank, modelled compute {compute * 1e3:.1f} ms per step, "
                  f"gradients {grad_bytes / MiB:.0f} MiB")
            print("| N | all-reduce ms | step ms (no overlap) | efficiency | step ms (overlap bound) | efficiency |")
            print("|---:|---:|---:|---:|---:|---:|")
            for n in RANKS:
                comm, last = allreduce_s(n, grad_bytes, links)
                plain = compute + comm
                overlap = max(compute, comm) + last
                print(f"| {n} | {comm * 1e3:.1f} | {plain * 1e3:.1f} | {compute / plain:.1%} | "
                      f"{overlap * 1e3:.1f} | {compute / overlap:.1%} |")


if __name__ == "__main__":
    main()
