// copy.cu — strided copies: dst[view_d(i)] = src[view_s(i)] for the n elements of two views of one
// shape. With a contiguous destination this is `contiguous()` (materialising a transposed, narrowed
// or broadcast view); with a strided destination it is `assign` (writing into a view, as cat does).
//
// Algorithm: a grid-stride loop over the logical index i; each view turns i into a storage offset by
// dividing through its (collapsed) shape, innermost dim first. When both views are contiguous and
// aligned the loop moves 16-byte packs instead (the host uses a plain device memcpy for that case,
// so this path serves views with an offset that breaks only the memcpy's bookkeeping).
// One kernel per element size: copy_b16 (bf16, f16), copy_b32 (f32, u32), copy_b64 (f64).
// Launch: 1-D, 256 threads per block, ceil(n / 256) blocks (capped; the loop covers the rest).
// Roofline: 0 FLOPs, 2 * n * sizeof(T) bytes per call (one read, one write per element; broadcast
// sources read less from DRAM).
#include "common.cuh"

template <typename T>
__device__ __forceinline__ void copy_impl(const T *__restrict__ src, const KilnLayout &ls, T *__restrict__ dst,
                                          const KilnLayout &ld, unsigned long long n) {
    if (kiln_is_contiguous(ld)) {
        kiln_map1(src, ls, dst + ld.offset, n, [](T x) { return x; });
        return;
    }
    const unsigned long long start = kiln_thread_index(), step = kiln_thread_count();
    for (unsigned long long i = start; i < n; i += step) dst[kiln_offset(ld, i)] = src[kiln_offset(ls, i)];
}

// Entry points, one per element width (KILN_ENTRY, common.cuh).
#define COPY_KERNEL(T)                                                                                                 \
    (const T *src, KilnLayout ls, T *dst, KilnLayout ld, unsigned long long n) { copy_impl(src, ls, dst, ld, n); }

KILN_ENTRY(copy_b16, COPY_KERNEL, unsigned short)
KILN_ENTRY(copy_b32, COPY_KERNEL, unsigned)
KILN_ENTRY(copy_b64, COPY_KERNEL, unsigned long long)
