// cast.cu — element type conversion of a (possibly strided) view into a fresh contiguous buffer:
// y[i] = convert(x[view(i)]) between f32, f64, bf16, f16 and u32.
//
// Conversions are those of the CPU backend (`U::from_f64(x.to_f64())`): widening is exact, narrowing
// rounds once to nearest even (f32 -> bf16/f16 directly, f64 -> bf16/f16 with __double2bfloat16 /
// __double2half, not through f32, which would round twice), floats to u32 truncate toward zero and
// saturate with NaN -> 0. See KilnConvert in common.cuh.
// Algorithm: kiln_map1, the shared elementwise loop: 16-byte accesses of the wider type (4 f32 in,
// 4 bf16 out, ...) when the source is contiguous and aligned, else one element at a time through
// the strides. One kernel per (source, destination) pair: cast_<src>_<dst>.
// Launch: 1-D, 256 threads per block, ceil(n / (256 * pack)) blocks (capped; the loop covers the rest).
// Roofline: ~1 FLOP (one conversion) and sizeof(S) + sizeof(D) bytes per element.
#include "common.cuh"

template <typename S, typename D>
__device__ __forceinline__ void cast_impl(const S *__restrict__ x, const KilnLayout &lx, D *__restrict__ y,
                                          unsigned long long n) {
    kiln_map1(x, lx, y, n, [](S v) { return KilnConvert<S, D>::run(v); });
}

// Entry points, one per (source, destination) pair (KILN_ENTRY, common.cuh).
#define CAST_KERNEL(S, D)                                                                                              \
    (const S *x, KilnLayout lx, D *y, unsigned long long n) { cast_impl(x, lx, y, n); }

KILN_ENTRY(cast_f32_f64, CAST_KERNEL, float, double)
KILN_ENTRY(cast_f32_bf16, CAST_KERNEL, float, __nv_bfloat16)
KILN_ENTRY(cast_f32_f16, CAST_KERNEL, float, __half)
KILN_ENTRY(cast_f32_u32, CAST_KERNEL, float, unsigned)

KILN_ENTRY(cast_f64_f32, CAST_KERNEL, double, float)
KILN_ENTRY(cast_f64_bf16, CAST_KERNEL, double, __nv_bfloat16)
KILN_ENTRY(cast_f64_f16, CAST_KERNEL, double, __half)
KILN_ENTRY(cast_f64_u32, CAST_KERNEL, double, unsigned)

KILN_ENTRY(cast_bf16_f32, CAST_KERNEL, __nv_bfloat16, float)
KILN_ENTRY(cast_bf16_f64, CAST_KERNEL, __nv_bfloat16, double)
KILN_ENTRY(cast_bf16_f16, CAST_KERNEL, __nv_bfloat16, __half)
KILN_ENTRY(cast_bf16_u32, CAST_KERNEL, __nv_bfloat16, unsigned)

KILN_ENTRY(cast_f16_f32, CAST_KERNEL, __half, float)
KILN_ENTRY(cast_f16_f64, CAST_KERNEL, __half, double)
KILN_ENTRY(cast_f16_bf16, CAST_KERNEL, __half, __nv_bfloat16)
KILN_ENTRY(cast_f16_u32, CAST_KERNEL, __half, unsigned)

KILN_ENTRY(cast_u32_f32, CAST_KERNEL, unsigned, float)
KILN_ENTRY(cast_u32_f64, CAST_KERNEL, unsigned, double)
KILN_ENTRY(cast_u32_bf16, CAST_KERNEL, unsigned, __nv_bfloat16)
KILN_ENTRY(cast_u32_f16, CAST_KERNEL, unsigned, __half)
