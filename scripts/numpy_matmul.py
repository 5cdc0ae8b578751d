#!/usr/bin/env python3
"""Baseline for kiln's CPU sgemm: time NumPy's f32 `a @ b` on square matrices.

Prints median and best GFLOP/s (2*n^3 / time) at 256, 512, 1024, 2048 (by
default) plus the BLAS backend / kernel ("architecture") that threadpoolctl
reports, so results can be compared against `cargo bench --bench matmul`.

Threads are capped to 2 via threadpoolctl (and honour OMP_NUM_THREADS /
OPENBLAS_NUM_THREADS if set before start-up). Typical invocations:

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE \
        OMP_NUM_THREADS=2 OPENBLAS_NUM_THREADS=2 python3 scripts/numpy_matmul.py
    python3 scripts/numpy_matmul.py            # default environment

Options: --sizes 256 512 ..., --threads N, --seconds S (minimum timing time per size;
raise it on a noisy machine, where the best run is the least disturbed one).
"""

import argparse
import os
import time

import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits

WARMUP = 3
MIN_RUNS = 7


def bench(n: int, min_seconds: float) -> tuple[float, float]:
    """(median, best) GFLOP/s of `a @ b` for n×n f32 after warm-up."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    out = np.empty((n, n), dtype=np.float32)
    for _ in range(WARMUP):
        np.matmul(a, b, out=out)
    times = []
    start = time.perf_counter()
    while len(times) < MIN_RUNS or time.perf_counter() - start < min_seconds:
        t0 = time.perf_counter()
        np.matmul(a, b, out=out)
        times.append(time.perf_counter() - t0)
    flops = 2.0 * n * n * n
    return flops / np.median(times) / 1e9, flops / min(times) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024, 2048])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=1.0)
    args = parser.parse_args()
    env_keys = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OPENBLAS_CORETYPE",
                "OPENBLAS_L2_SIZE", "MKL_NUM_THREADS")
    env = {k: os.environ[k] for k in env_keys if k in os.environ}
    print(f"numpy {np.__version__}, env: {env or '(none set)'}")
    with threadpool_limits(limits=args.threads):
        for pool in threadpool_info():
            print(f"  {pool.get('internal_api')} {pool.get('version')}: "
                  f"kernel/architecture={pool.get('architecture')}, "
                  f"threads={pool.get('num_threads')}, "
                  f"threading={pool.get('threading_layer')}")
        print(f"{'n':>6} {'median GFLOP/s':>15} {'best GFLOP/s':>13}")
        for n in args.sizes:
            med, best = bench(n, args.seconds)
            print(f"{n:>6} {med:>15.1f} {best:>13.1f}")


if __name__ == "__main__":
    main()
