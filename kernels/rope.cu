// rope.cu — rotary position embedding (RoPE) of a contiguous x [batch, seq, heads, head_dim]: the pair
// (x[a], x[b]) of every head at position p = position_offset + t is rotated by the angle p * theta_i,
//   y[a] = x[a] cos - x[b] sin,   y[b] = x[b] cos + x[a] sin,
// with theta_i = base^(-2i / head_dim) computed in f64 (as the CPU backend: RopeSpec::frequency in
// src/backend/mod.rs) and rounded to the arithmetic type, and the pairs of the layout:
//   half (layout 0, Hugging Face / GPT-NeoX rotate_half): a = i, b = i + head_dim / 2;
//   interleaved (layout 1, GGML / llama.cpp):             a = 2i, b = 2i + 1;
// for i in 0 .. head_dim / 2. The backward is the rotation by -theta (`inverse`: sin negated). The angle,
// its sine and cosine are computed in f32 for f32/bf16/f16 and in f64 for f64, as the CPU backend
// (src/backend/cpu/rope.rs): angle = (float)p * inv_freq[i], rounded once, as Hugging Face's f32 angles.
//
// Algorithm. Each block first writes the head_dim / 2 frequencies to shared memory (one f64 pow each),
// then one thread per pair: pair k is frequency i = k mod (head_dim / 2) of row k / (head_dim / 2)
// (a row is one head at one position; its position is (row / heads) mod seq). Consecutive threads take
// consecutive frequencies of a row, so a warp's reads and writes of x[a] (and of x[b]) are contiguous.
// Launch: 1-D, 256 threads per block, ceil(pairs / 256) blocks (capped at 32 per SM; grid-stride);
// head_dim / 2 accumulators of dynamic shared memory.
// Roofline, per pair: 6 FLOPs plus one sincos (~20-40 instructions), 2 reads + 2 writes of sizeof(T) and
// one shared-memory read (plus head_dim / 2 f64 pows per block). Memory bound on every GPU kiln targets (f32 on an H100: 16 bytes per pair,
// ~200 G pairs/s at 3.3 TB/s against > 1 T sincos/s).
#include "common.cuh"

__device__ __forceinline__ void rope_sincos(float a, float *s, float *c) { sincosf(a, s, c); }
__device__ __forceinline__ void rope_sincos(double a, double *s, double *c) { sincos(a, s, c); }

template <typename T>
__device__ __forceinline__ void rope_impl(const T *__restrict__ x, T *__restrict__ y, double base,
                                          unsigned long long pairs, unsigned half, unsigned heads, unsigned seq,
                                          unsigned long long position_offset, int interleaved, int inverse) {
    typedef KilnFloat<T> F;
    typedef typename F::Acc A;
    KILN_DYNAMIC_SMEM(A, inv_freq);
    for (unsigned i = threadIdx.x; i < half; i += blockDim.x)
        inv_freq[i] = (A)pow(base, -(double)(2 * i) / (double)(2 * half));
    __syncthreads();
    for (unsigned long long k = kiln_thread_index(); k < pairs; k += kiln_thread_count()) {
        const unsigned long long row = k / half;
        const unsigned i = (unsigned)(k - row * half);
        const unsigned long long t = (row / heads) % seq;
        const A angle = (A)(position_offset + t) * inv_freq[i];
        A s, c;
        rope_sincos(angle, &s, &c);
        if (inverse) s = -s;
        const unsigned long long first = row * 2ull * half;
        const unsigned long long a = first + (interleaved ? 2ull * i : i);
        const unsigned long long b = a + (interleaved ? 1ull : half);
        const A u = F::up(x[a]), v = F::up(x[b]);
        y[a] = F::down(u * c - v * s);
        y[b] = F::down(v * c + u * s);
    }
}

// Entry points, one per dtype (KILN_ENTRY, common.cuh).
#define ROPE_KERNEL(T)                                                                                                 \
    (const T *x, T *y, double base, unsigned long long pairs, unsigned half, unsigned heads, unsigned seq,             \
     unsigned long long position_offset, int interleaved, int inverse) {                                               \
        rope_impl(x, y, base, pairs, half, heads, seq, position_offset, interleaved, inverse);                         \
    }

KILN_ENTRY(rope_f32, ROPE_KERNEL, float)

KILN_ENTRY(rope_f64, ROPE_KERNEL, double)

KILN_ENTRY(rope_bf16, ROPE_KERNEL, __nv_bfloat16)

KILN_ENTRY(rope_f16, ROPE_KERNEL, __half)
