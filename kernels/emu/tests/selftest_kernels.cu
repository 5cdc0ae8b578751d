// Kernels for the emulator's self-test (emu_selftest.cpp). Plain CUDA: they would compile with NVRTC
// unchanged. The build registers each `extern "C" __global__` kernel and each KILN_ENTRY line with
// EMU_KERNEL (gen_kernel_table.sh).
#include "../../common.cuh"

#define TILE 16

// C[M,N] = A[M,K] * B[K,N], row-major, one 16x16 output tile per block (the prototype's kernel).
extern "C" __global__ void sgemm_tiled(const float *__restrict__ A, const float *__restrict__ B, float *__restrict__ C,
                                       int M, int N, int K) {
    __shared__ float As[TILE][TILE + 1];
    __shared__ float Bs[TILE][TILE + 1];
    const int r = blockIdx.y * TILE + threadIdx.y, c = blockIdx.x * TILE + threadIdx.x;
    float acc = 0.f;
    for (int k0 = 0; k0 < K; k0 += TILE) {
        As[threadIdx.y][threadIdx.x] = (r < M && k0 + static_cast<int>(threadIdx.x) < K) ? A[r * K + k0 + threadIdx.x] : 0.f;
        Bs[threadIdx.y][threadIdx.x] = (c < N && k0 + static_cast<int>(threadIdx.y) < K) ? B[(k0 + threadIdx.y) * N + c] : 0.f;
        __syncthreads();
#pragma unroll
        for (int k = 0; k < TILE; k++) acc += As[threadIdx.y][k] * Bs[k][threadIdx.x];
        __syncthreads();
    }
    if (r < M && c < N) C[r * N + c] = acc;
}

// y[w] = sum of x[32w .. 32w+31], one warp per 32 elements.
extern "C" __global__ void warp_sum(const float *x, float *y) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    const float s = kiln_warp_sum(x[i]);
    if (threadIdx.x % 32 == 0) y[i / 32] = s;
}

// y[b] = sum of block b's slice of x (zero past n); every thread checks it got the same sum.
extern "C" __global__ void block_sum(const float *x, float *y, int n, int *disagree) {
    __shared__ float scratch[32];
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    const float s = kiln_block_sum(i < n ? x[i] : 0.f, scratch);
    if (threadIdx.x == 0) y[blockIdx.x] = s;
    __shared__ float first;
    if (threadIdx.x == 0) first = s;
    __syncthreads();
    if (s != first) atomicAdd(disagree, 1);
}

// Shuffles with sub-warp widths.
extern "C" __global__ void shfl_widths(const int *in, int *up, int *down, int *idx, int *xr) {
    const int t = blockIdx.x * blockDim.x + threadIdx.x;
    const int v = in[t];
    up[t] = __shfl_up_sync(KILN_FULL_MASK, v, 3, 16);
    down[t] = __shfl_down_sync(KILN_FULL_MASK, v, 5, 16);
    idx[t] = __shfl_sync(KILN_FULL_MASK, v, 9, 8);
    xr[t] = __shfl_xor_sync(KILN_FULL_MASK, v, 20, 16);
}

// Votes, full-warp and in two disjoint half-warp groups at once.
extern "C" __global__ void votes(const int *pred, unsigned *ballot, int *any, int *all, unsigned *half_ballot) {
    const int t = blockIdx.x * blockDim.x + threadIdx.x;
    const int p = pred[t];
    ballot[t] = __ballot_sync(KILN_FULL_MASK, p);
    any[t] = __any_sync(KILN_FULL_MASK, p);
    all[t] = __all_sync(KILN_FULL_MASK, p);
    const unsigned half = (threadIdx.x % 32) < 16 ? 0x0000ffffu : 0xffff0000u;
    half_ballot[t] = __ballot_sync(half, p);
}

extern "C" __global__ void barrier_reductions(const int *pred, int *count, int *all, int *any) {
    const int p = pred[threadIdx.x];
    const int c = __syncthreads_count(p);
    const int a = __syncthreads_and(p);
    const int o = __syncthreads_or(p);
    if (threadIdx.x == 0) {
        *count = c;
        *all = a;
        *any = o;
    }
}

// Reverses each block's slice through dynamic shared memory.
extern "C" __global__ void dyn_smem_reverse(const float *x, float *y) {
    KILN_DYNAMIC_SMEM(float, s);
    const int base = blockIdx.x * blockDim.x;
    s[threadIdx.x] = x[base + threadIdx.x];
    __syncthreads();
    y[base + threadIdx.x] = s[blockDim.x - 1 - threadIdx.x];
}

// Reads one float past the dynamic shared memory (launched with blockDim.x floats of it).
extern "C" __global__ void dyn_smem_overrun(float *y) {
    KILN_DYNAMIC_SMEM(float, s);
    s[threadIdx.x] = 1.f;
    __syncthreads();
    y[threadIdx.x] = s[threadIdx.x + 1];
}

// Every thread of a 3-D grid of 3-D blocks counts itself at its global (x, y, z) cell.
extern "C" __global__ void index3d(unsigned *count, uint4 *coords, int nx, int ny) {
    const unsigned x = blockIdx.x * blockDim.x + threadIdx.x;
    const unsigned y = blockIdx.y * blockDim.y + threadIdx.y;
    const unsigned z = blockIdx.z * blockDim.z + threadIdx.z;
    const unsigned g = x + nx * (y + ny * z);
    atomicAdd(&count[g], 1u);
    coords[g] = make_uint4(x, y, z, threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z));
}

// Threads 100.. leave before the barrier the others wait at.
extern "C" __global__ void barrier_after_exit(float *y) {
    if (threadIdx.x >= 100) return;
    __syncthreads();
    y[threadIdx.x] = 1.f;
}

// The two halves of the block wait at different __syncthreads() calls.
extern "C" __global__ void barrier_split(float *y) {
    if (threadIdx.x < 64) {
        __syncthreads();
    } else {
        __syncthreads();
    }
    y[threadIdx.x] = 1.f;
}

// Each thread copies x[i] to y[i], except that the last one reads x[n + 1] (4 bytes past the end).
extern "C" __global__ void oob_read(const float *x, float *y, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = x[i == n - 1 ? n + 1 : i];
}

// The last thread writes y[n].
extern "C" __global__ void oob_write(float *y, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i + (i == n - 1)] = 1.f;
}

extern "C" __global__ void write_all_but(float *y, int n, int skip) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n && i != skip) y[i] = static_cast<float>(i);
}

extern "C" __global__ void atomic_count(unsigned *c) { atomicAdd(c, 1u); }

// Float max through atomicCAS on the bit pattern, and an exact float atomicAdd of integers.
extern "C" __global__ void atomic_float_ops(const float *x, int n, float *max_out, float *sum_out) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const float v = x[i];
    int *addr = reinterpret_cast<int *>(max_out);
    int old = *addr;
    while (__int_as_float(old) < v) {
        const int seen = atomicCAS(addr, old, __float_as_int(v));
        if (seen == old) break;
        old = seen;
    }
    atomicAdd(sum_out, v);
}

extern "C" __global__ void atomic_misc(int *imax, int *imin, unsigned *umax, double *dsum, unsigned long long *cas_slot,
                                       unsigned *exch, unsigned *cas_wins) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    atomicMax(imax, i - 5000);
    atomicMin(imin, 3 - i);
    atomicMax(umax, static_cast<unsigned>(i) * 3u);
    atomicAdd(dsum, 0.5);
    if (atomicCAS(cas_slot, 0ull, static_cast<unsigned long long>(i) + 1ull) == 0ull) atomicAdd(cas_wins, 1u);
    atomicExch(exch, 7u);
}

// Lanes 0..15 exit; lanes 16..31 then shuffle with a full mask.
extern "C" __global__ void shfl_after_exit(float *y) {
    if (threadIdx.x < 16) return;
    y[threadIdx.x] = __shfl_xor_sync(KILN_FULL_MASK, 1.f, 1);
}

// Lanes 0..15 shuffle with a full mask and wait for lanes 16..31, which exit.
extern "C" __global__ void shfl_then_exit(float *y) {
    if (threadIdx.x >= 16) return;
    y[threadIdx.x] = __shfl_xor_sync(KILN_FULL_MASK, 1.f, 1);
}

// Launched with 48 threads: the second warp has lanes 0..15 only, but uses a full mask.
extern "C" __global__ void shfl_partial_warp(float *y) {
    y[threadIdx.x] = kiln_warp_sum(1.f);
}

// Half the warp shuffles while the other half votes, both with the full mask.
extern "C" __global__ void mixed_collectives(unsigned *y) {
    if (threadIdx.x < 16) y[threadIdx.x] = __shfl_xor_sync(KILN_FULL_MASK, 1u, 1);
    else y[threadIdx.x] = __ballot_sync(KILN_FULL_MASK, 1);
}

// Lane 31 goes to the barrier while lanes 0..30 wait for it in a shuffle.
extern "C" __global__ void warp_barrier_deadlock(float *y) {
    if (threadIdx.x == 31) __syncthreads();
    y[threadIdx.x] = __shfl_sync(KILN_FULL_MASK, 2.f, 0);
}

// __activemask() in divergent code (the even lanes), and after the threads from n on have exited.
extern "C" __global__ void active_masks(unsigned *even_mask, unsigned *tail_ballot, int n) {
    const unsigned lane = threadIdx.x % 32;
    if (lane % 2 == 0) even_mask[threadIdx.x] = __activemask();
    __syncwarp();
    if (static_cast<int>(threadIdx.x) >= n) return;
    tail_ballot[threadIdx.x] = __ballot_sync(__activemask(), 1);
}

extern "C" __global__ void assert_in_kernel(int *y) {
    assert(threadIdx.x != 5);
    y[threadIdx.x] = 1;
}

extern "C" __global__ void trap_in_kernel(int *y) {
    if (blockIdx.x == 2) __trap();
    y[blockIdx.x] = 1;
}

__device__ __noinline__ int deep_recursion(volatile int *p, int depth) {
    volatile char frame[1024];
    frame[0] = static_cast<char>(depth);
    if (depth == 0) return *p;
    return deep_recursion(p, depth - 1) + frame[0];
}

extern "C" __global__ void stack_overflow(int *y) { y[threadIdx.x] = deep_recursion(y, 1000000); }

// Shared memory stays private to a block while blocks run in parallel on several OS threads.
extern "C" __global__ void smem_private(int *bad) {
    __shared__ unsigned tag;
    for (int round = 0; round < 50; ++round) {
        if (threadIdx.x == 0) tag = blockIdx.x * 1000u + round;
        __syncthreads();
        if (tag != blockIdx.x * 1000u + round) atomicAdd(bad, 1);
        __syncthreads();
    }
}

// Converts floats to half and bfloat16 bits with every rounding helper, and the bits back.
extern "C" __global__ void convert16(const float *x, unsigned short *h_rn, unsigned short *h_rz, unsigned short *h_rd,
                                     unsigned short *h_ru, unsigned short *b_rn, unsigned short *b_rz, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    h_rn[i] = __half_as_ushort(__float2half_rn(x[i]));
    h_rz[i] = __half_as_ushort(__float2half_rz(x[i]));
    h_rd[i] = __half_as_ushort(__float2half_rd(x[i]));
    h_ru[i] = __half_as_ushort(__float2half_ru(x[i]));
    b_rn[i] = __bfloat16_as_ushort(__float2bfloat16(x[i]));
    b_rz[i] = __bfloat16_as_ushort(__float2bfloat16_rz(x[i]));
}

extern "C" __global__ void widen16(const unsigned short *bits, float *h, float *b, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    h[i] = __half2float(__ushort_as_half(bits[i]));
    b[i] = __bfloat162float(__ushort_as_bfloat16(bits[i]));
}

// Half/bfloat16 arithmetic, vector types and a few intrinsics, results written as floats.
extern "C" __global__ void half_math(float *out) {
    const __half a = __float2half(1.5f), b = __float2half(2.25f);
    const __nv_bfloat16 c = __float2bfloat16(3.0f), d = __float2bfloat16(0.5f);
    const __half2 h2 = __floats2half2_rn(1.0f, -2.0f) * __half2half2(__float2half(3.0f));
    const float2 f2 = __half22float2(h2);
    const float4 f4 = make_float4(1.f, 2.f, 3.f, 4.f);
    out[0] = __half2float(a + b);
    out[1] = __half2float(a * b);
    out[2] = __bfloat162float(c / d);
    out[3] = f2.x + f2.y;
    out[4] = f4.x + f4.w;
    out[5] = rsqrtf(4.f) + __fdividef(1.f, 4.f) + __frcp_rn(2.f);
    out[6] = static_cast<float>(__popc(0xF0F0u) + __clz(1) + __ffs(8));
    out[7] = static_cast<float>(min(3, 5u) + max(-1, 2));
}

// y = a * x + b over n elements, one thread per element. Its entry point is stamped out by KILN_ENTRY
// (common.cuh), as kiln's per-dtype kernels are, so the self-test also sees gen_kernel_table.sh register one.
template <typename T> __device__ void axpb_impl(const T *x, T *y, T a, T b, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = a * x[i] + b;
}
#define AXPB_KERNEL(T) (const T *x, T *y, T a, T b, int n) { axpb_impl(x, y, a, b, n); }
KILN_ENTRY(axpb, AXPB_KERNEL, float)

extern "C" __global__ void int_divide(int *y, int d) { y[threadIdx.x] = 100 / (d + static_cast<int>(threadIdx.x) - 3); }

// Lanes 16..31 exit while lanes 0..15 vote with a full mask: like vote.sync, the vote waits only for
// lanes that have not exited.
extern "C" __global__ void ballot_after_exit(unsigned *y) {
    if (threadIdx.x >= 16) return;
    y[threadIdx.x] = __ballot_sync(KILN_FULL_MASK, 1);
}

// ---------------------------------------------------------------------------------------------------
// Planted bugs for the checker (emu_check.cpp), one per detector, each with a correct twin where that
// helps to show the detector is not simply always firing. `fix` selects the twin.

// A missing barrier: thread 0 writes s[0], every thread reads it with nothing in between.
extern "C" __global__ void race_missing_barrier(float *y, int fix) {
    __shared__ float s[1];
    if (threadIdx.x == 0) s[0] = 42.0f;
    if (fix) __syncthreads();
    y[threadIdx.x] = s[0];
}

// A block sum called twice on the same scratch buffer: without the trailing barrier, the second call
// overwrites scratch while thread 0 may still be reading the first call's values.
__device__ float block_sum_64(float *scratch, float v, int trailing_barrier) {
    scratch[threadIdx.x] = v;
    __syncthreads();
    float total = 0.0f;
    for (int i = 0; i < 64; ++i) total += scratch[i];
    if (trailing_barrier) __syncthreads();
    return total;
}
extern "C" __global__ void race_reused_buffer(const float *x, float *y, int fix) {
    __shared__ float scratch[64];
    const float a = block_sum_64(scratch, x[threadIdx.x], fix);
    const float b = block_sum_64(scratch, 2.0f * x[threadIdx.x], fix);
    y[threadIdx.x] = a + b;
}

// Half of the block fills the shared buffer, all of it reads.
extern "C" __global__ void uninit_shared_read(float *y, int fix) {
    __shared__ float s[64];
    if (fix || threadIdx.x < 32) s[threadIdx.x] = 1.0f;
    __syncthreads();
    y[threadIdx.x] = s[threadIdx.x];
}

// Reads a device buffer that nothing wrote (x is allocated, never uploaded).
extern "C" __global__ void uninit_global_read(const float *x, float *y) { y[threadIdx.x] = x[threadIdx.x]; }

// Reads the destination of its cp.async before the wait that covers it (fix: after the wait).
extern "C" __global__ void read_before_cp_async_wait(const float *x, float *y, int fix) {
    __shared__ __align__(16) float s[4 * 32];
    kiln_cp_async_16(&s[4 * threadIdx.x], x + 4 * threadIdx.x, 16u);
    kiln_cp_async_commit();
    if (fix) kiln_cp_async_wait<0>();
    y[threadIdx.x] = s[4 * threadIdx.x];
    kiln_cp_async_wait<0>();
}

// Overwrites a cp.async's source before the wait that lands it (the copy may read the old value or
// the new one on a GPU; fix: store after the wait).
extern "C" __global__ void write_cp_async_source(float *x, float *y, int fix) {
    __shared__ __align__(16) float s[4 * 32];
    kiln_cp_async_16(&s[4 * threadIdx.x], x + 4 * threadIdx.x, 16u);
    kiln_cp_async_commit();
    if (fix) kiln_cp_async_wait<0>();
    x[4 * threadIdx.x] = 2.0f;
    kiln_cp_async_wait<0>();
    y[threadIdx.x] = s[4 * threadIdx.x];
}

// The pre-Volta warp reduction tail, which assumes the lanes of a warp run in lock step (fix: a
// __syncwarp() between the steps, as Volta and later need).
extern "C" __global__ void warp_lock_step(const float *x, float *y, int fix) {
    __shared__ float s[32];
    const unsigned t = threadIdx.x;
    s[t] = x[t];
    __syncthreads();
    for (unsigned half = 16; half > 0; half /= 2) {
        const float other = t < half ? s[t + half] : 0.0f;
        if (fix) __syncwarp();
        if (t < half) s[t] += other;
        if (fix) __syncwarp();
    }
    if (t == 0) y[0] = s[0];
}

// Depends on the order in which threads run: every thread writes s[0] (a race), and the last writer
// wins, so the result differs between KILN_EMU_ORDER=forward and reverse.
extern "C" __global__ void order_dependent(float *y) {
    __shared__ float s[1];
    s[0] = static_cast<float>(threadIdx.x);
    __syncthreads();
    y[threadIdx.x] = s[0];
}

// A global-memory race inside one block: thread 0 writes y[0], the others read it (fix: a barrier).
extern "C" __global__ void global_race(float *y, int fix) {
    if (threadIdx.x == 0) y[0] = 1.0f;
    if (fix) __syncthreads();
    if (threadIdx.x > 0) y[threadIdx.x] = y[0];
}

// A global write after read inside one block: thread t reads y[t + 1], then writes y[t]; thread t + 1's
// write of y[t + 1] races with thread t's read (fix: a barrier between the reads and the writes).
extern "C" __global__ void global_write_after_read(float *y, int fix) {
    const unsigned t = threadIdx.x;
    const float next = y[(t + 1) % blockDim.x];
    if (fix) __syncthreads();
    y[t] = next + 1.0f;
}

// Races between the blocks of one launch on y[0], by `mode`: 0, block 0 writes it and the others read
// it; 1, every block writes it; 2, every block adds to it atomically (no race); 3, every block writes
// its own y[blockIdx.x + 1] (no race); 4, every block reads y[blockIdx.x + 2 wrapped], which the
// previous launch's mode 3 wrote (no race: launches are ordered).
extern "C" __global__ void block_race(float *y, int mode) {
    if (threadIdx.x != 0) return;
    const unsigned b = blockIdx.x;
    if (mode == 0) {
        if (b == 0) y[0] = 1.0f;
        else y[b + 1] = y[0];
    } else if (mode == 1) {
        y[0] = static_cast<float>(b);
    } else if (mode == 2) {
        atomicAdd(&y[0], 1.0f);
    } else if (mode == 3) {
        y[b + 1] = static_cast<float>(b);
    } else {
        y[gridDim.x + 1 + b] = y[(b + 1) % gridDim.x + 1];
    }
}

// Every thread increments s[0] without an atomic or a barrier between its read and its write: run
// whole, one thread after another (forward, reverse, random), no increment is lost; interleaved at
// memory accesses, increments are lost, as on the GPU.
extern "C" __global__ void lost_update(int *y) {
    __shared__ int s[1];
    if (threadIdx.x == 0) s[0] = 0;
    __syncthreads();
    s[0] = s[0] + 1;
    __syncthreads();
    if (threadIdx.x == 0) y[0] = s[0];
}

// ---------------------------------------------------------------------------------------------------
// The profiler (emu_check.cpp, "The profiler"): access patterns whose counts are known by hand
// (emu_selftest.cpp, test_profiler).

// y[i] = x[i] * 2: unit-stride f32, each warp reads and writes 128 contiguous bytes (4 sectors).
extern "C" __global__ void prof_copy_f32(const float *x, float *y) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    y[i] = x[i] * 2.f;
}

// y[i] = x[i] for float4: each warp reads and writes 512 contiguous bytes (16 sectors).
extern "C" __global__ void prof_copy_f32x4(const float4 *x, float4 *y) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    y[i] = x[i];
}

// y[i] = x[stride * i]: a strided f32 load (stride 2: 8 sectors per request, half of each used).
extern "C" __global__ void prof_strided_load(const float *x, float *y, int stride) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    y[i] = x[stride * i];
}

// y[t] = sum over k < iters of x[k * blockDim.x + t]: the same load instruction executed `iters` times
// by every lane, one request per warp and iteration.
extern "C" __global__ void prof_loop_sum(const float *x, float *y, int iters) {
    const int t = threadIdx.x;
    float acc = 0.f;
    for (int k = 0; k < iters; ++k) acc += x[k * blockDim.x + t];
    y[t] = acc;
}

// Thread t stores to and loads from tile[t * stride] (f32): stride 32 puts every lane of a warp in
// bank 0 (32 wavefronts), stride 33 (a padded 32x32 tile's column) and stride 1 in 32 banks (one).
extern "C" __global__ void prof_smem_stride(float *y, int stride) {
    __shared__ float tile[32 * 33];
    const int t = threadIdx.x;
    tile[t * stride] = static_cast<float>(t);
    __syncthreads();
    y[t] = tile[t * stride];
}

// Thread t stores and loads a float4 at tile[t * stride]: with stride 1 each quarter warp covers the
// 32 banks once (4 wavefronts, no conflict); with stride 2 a quarter warp needs 64 words, 2 per bank
// (8 wavefronts, 4 of them conflicts). (The stored value is copied whole from x: g++ may store a
// float4 built from four scalars as four 4-byte stores, which the profiler would count as such.)
extern "C" __global__ void prof_smem_f32x4(const float4 *x, float4 *y, int stride) {
    __shared__ float4 tile[64];
    const int t = threadIdx.x;
    tile[t * stride] = x[t];
    __syncthreads();
    y[t] = tile[t * stride];
}

// One warp: lane t cp.async's the 16 bytes x[4t .. 4t + 3] (src_bytes of them, the rest zero-filled)
// to tile[4 stride t ..], waits, and copies its first float to y[t]. The landing is one 16-byte shared
// store per lane: stride 1 (in 16-byte units) gives each quarter warp 128 contiguous bytes, the 32
// banks once (4 wavefronts); stride 2 leaves every other 16 bytes out, so a quarter warp needs 2 words
// of each of 16 banks (8); stride 32 (512 bytes) puts every lane in banks 0-3 (8 per quarter: 32).
extern "C" __global__ void prof_cp_async(const float *x, float *y, int stride, unsigned src_bytes) {
    __shared__ __align__(16) float tile[4 * 32 * 32];
    const int t = threadIdx.x;
    kiln_cp_async_16(&tile[4 * stride * t], x + 4 * t, src_bytes);
    kiln_cp_async_commit();
    kiln_cp_async_wait<0>();
    y[t] = tile[4 * stride * t];
}

// y[i] = 2 x[i] through KilnPack<float, 4> as kiln_map1 does it (loaded whole, used element by element,
// built element by element, stored whole): one 16-byte access per lane each way, as the GPU's
// ld/st.global.v4, whatever element moves g++ makes of the copies (common.cuh, emu::pack_copy).
extern "C" __global__ void prof_pack_f32x4(const float *x, float *y) {
    typedef KilnPack<float, 4> Pack;
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    const Pack a = reinterpret_cast<const Pack *>(x)[i];
    Pack out;
    for (int k = 0; k < 4; ++k) out.v[k] = 2.0f * a.v[k];
    reinterpret_cast<Pack *>(y)[i] = out;
}

// One warp: lane l's ldmatrix row starts at half `stride * l` of a bf16 tile (the four 8x8 matrices of
// an .x4 are rows 0-7, 8-15, 16-23 and 24-31), then one mma with those fragments. Row stride 8 halves
// (16 bytes): a matrix's 8 rows are 128 contiguous bytes, all 32 banks once; 64 halves (128 bytes):
// every row in banks 0-3, 8 wavefronts per matrix; 72 halves (a 128-byte row padded by 16): row r in
// banks 4r .. 4r+3, none shared.
extern "C" __global__ void prof_ldmatrix(float *y, int stride) {
    __shared__ __align__(16) unsigned short tile[32 * 72]; // bf16 bits (a __shared__ needs a trivial type)
    const int lane = threadIdx.x;
    for (int i = lane; i < 32 * 72; i += 32) tile[i] = 0x3f80; // 1.0
    __syncthreads();
    unsigned a[4], b[2];
    kiln_ldmatrix_x4(a, tile + stride * lane);
    b[0] = a[0];
    b[1] = a[1];
    float acc[4] = {0.f, 0.f, 0.f, 0.f};
    kiln_mma_m16n8k16<__nv_bfloat16>(acc, a, b);
    y[lane] = acc[0];
}
