// fill.cu — every element of a fresh buffer set to one value.
//
// Algorithm: a grid-stride loop of 16-byte stores (8, 4 or 2 elements at a time) over the aligned
// part, then single elements for the tail; single elements only if the buffer is not 16-byte aligned.
// The value arrives as the bit pattern of the element type (the host rounds it exactly as the CPU
// backend does), so one kernel per element size serves every dtype: fill_b16 (bf16, f16),
// fill_b32 (f32, u32), fill_b64 (f64).
// Launch: 1-D, 256 threads per block, enough blocks to cover the 16-byte packs (capped at 64 blocks
// per SM; the loop covers the rest).
// Roofline: 0 FLOPs, n * sizeof(T) bytes written per call (pure store bandwidth).
#include "common.cuh"

template <typename T>
__device__ __forceinline__ void fill_impl(T *__restrict__ y, T value, unsigned long long n) {
    constexpr int N = 16 / sizeof(T);
    const unsigned long long start = kiln_thread_index(), step = kiln_thread_count();
    unsigned long long done = 0;
    if (kiln_aligned<16>(y)) {
        KilnPack<T, N> pack;
#pragma unroll
        for (int k = 0; k < N; ++k) pack.v[k] = value;
        const unsigned long long packs = n / N;
        for (unsigned long long p = start; p < packs; p += step) reinterpret_cast<KilnPack<T, N> *>(y)[p] = pack;
        done = packs * N;
    }
    for (unsigned long long i = done + start; i < n; i += step) y[i] = value;
}

// Entry points, one per element width (KILN_ENTRY, common.cuh).
#define FILL_KERNEL(T)                                                                                                 \
    (T *y, T bits, unsigned long long n) { fill_impl(y, bits, n); }

KILN_ENTRY(fill_b16, FILL_KERNEL, unsigned short)
KILN_ENTRY(fill_b32, FILL_KERNEL, unsigned)
KILN_ENTRY(fill_b64, FILL_KERNEL, unsigned long long)
