// where_cond.cu — y[i] = cond[i] != 0 ? on_true[i] : on_false[i] over three views of the output shape
// (the host broadcasts all three first), into a fresh contiguous buffer. Used by where_cond and
// masked_fill.
//
// Algorithm: kiln_map3, the shared elementwise loop: 16-byte accesses when all three views are
// contiguous and aligned, strided single elements otherwise. A selection only moves bits, so one
// kernel per element size serves every dtype: where_cond_b16 (bf16, f16), where_cond_b32 (f32, u32),
// where_cond_b64 (f64).
// Launch: 1-D, 256 threads per block, ceil(n / (256 * pack)) blocks (capped; the loop covers the rest).
// Roofline: 0 FLOPs, 4 + 3 * sizeof(T) bytes per element: memory bound.
#include "common.cuh"

template <typename T>
__device__ __forceinline__ void where_impl(const unsigned *__restrict__ c, const KilnLayout &lc,
                                           const T *__restrict__ t, const KilnLayout &lt, const T *__restrict__ f,
                                           const KilnLayout &lf, T *__restrict__ y, unsigned long long n) {
    kiln_map3(c, lc, t, lt, f, lf, y, n, [](unsigned k, T u, T v) { return k != 0u ? u : v; });
}

// Entry points, one per element width (KILN_ENTRY, common.cuh).
#define WHERE_COND_KERNEL(T)                                                                                           \
    (const unsigned *c, KilnLayout lc, const T *t, KilnLayout lt, const T *f, KilnLayout lf, T *y,                     \
     unsigned long long n) {                                                                                           \
        where_impl(c, lc, t, lt, f, lf, y, n);                                                                         \
    }

KILN_ENTRY(where_cond_b16, WHERE_COND_KERNEL, unsigned short)
KILN_ENTRY(where_cond_b32, WHERE_COND_KERNEL, unsigned)
KILN_ENTRY(where_cond_b64, WHERE_COND_KERNEL, unsigned long long)
