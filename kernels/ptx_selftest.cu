// ptx_selftest.cu — test kernels for the inline-PTX helpers of common.cuh (tests/ptx_helpers.rs).
//
// Each kernel exercises one helper on one warp (or one block) with data the test checks against a plain
// matrix product or a plain copy, on Emu (the helpers' models in emu/emu_ptx.h) and on a GPU when there
// is one (the real instructions), so the two are held to the same documented behaviour:
//   ptx_mma_<t>:         mma.m16n8k16 with fragments built from global memory by the documented layout;
//   ptx_mma_s8:          mma.m16n8k32 on signed bytes (s32 sums) the same way;
//   ptx_ldmatrix:        the four ldmatrix forms on a 16x16 tile of 16-bit values, each lane's registers
//                        written out for the test to compare with the documented distribution;
//   ptx_ldmatrix_mma_<t>: A through ldmatrix .x4, B through .x2.trans, then mma (the GEMM's own path);
//   ptx_cp_async:        two groups of 16-byte cp.async with zero-filled tails, waited one at a time.
// Launch: one block of 32 threads (64 for ptx_cp_async). Roofline: irrelevant (a few KiB per call).
#include "common.cuh"

// d[16][8] = a[16][16] · b[16][8] + c[16][8], all row-major; fragments loaded by the documented layout.
template <typename T>
__device__ __forceinline__ void mma_direct(const T *a, const T *b, const float *c, float *d) {
    const int lane = threadIdx.x, g = lane / 4, t = lane % 4;
    unsigned fa[4], fb[2];
    for (int i = 0; i < 4; ++i) {
        const int r = g + (i % 2) * 8, k = 2 * t + (i / 2) * 8;
        fa[i] = kiln_pack_b16(a[r * 16 + k], a[r * 16 + k + 1]);
    }
    for (int i = 0; i < 2; ++i) {
        const int k = 2 * t + i * 8;
        fb[i] = kiln_pack_b16(b[k * 8 + g], b[(k + 1) * 8 + g]);
    }
    float acc[4];
    for (int i = 0; i < 4; ++i) acc[i] = c[(g + (i / 2) * 8) * 8 + 2 * t + i % 2];
    kiln_mma_m16n8k16<T>(acc, fa, fb);
    for (int i = 0; i < 4; ++i) d[(g + (i / 2) * 8) * 8 + 2 * t + i % 2] = acc[i];
}

// Entry points, one per 16-bit type (KILN_ENTRY, common.cuh).
#define PTX_MMA_KERNEL(T)                                                                                              \
    (const T *a, const T *b, const float *c, float *d) { mma_direct(a, b, c, d); }

KILN_ENTRY(ptx_mma_bf16, PTX_MMA_KERNEL, __nv_bfloat16)
KILN_ENTRY(ptx_mma_f16, PTX_MMA_KERNEL, __half)

// d[16][8] = a[16][32] · b[32][8] + c[16][8] in s32: a row-major signed bytes, b given as its transpose
// bt[8][32] (row n of bt is column n of b: the .col operand's bytes as a [n][k] row-major tile holds
// them), c and d row-major ints. Each fragment register is gathered byte by byte by the documented
// layout (kiln_mma_m16n8k32_s8, common.cuh), not read as words, so the test checks the layout itself.
extern "C" __global__ void ptx_mma_s8(const signed char *a, const signed char *bt, const int *c, int *d) {
    const int lane = threadIdx.x, g = lane / 4, t = lane % 4;
    unsigned fa[4], fb[2];
    for (int i = 0; i < 4; ++i) {
        const int r = g + (i % 2) * 8, k = 4 * t + (i / 2) * 16;
        fa[i] = 0;
        for (int j = 0; j < 4; ++j) fa[i] |= (unsigned)(unsigned char)a[r * 32 + k + j] << (8 * j);
    }
    for (int i = 0; i < 2; ++i) {
        const int k = 4 * t + i * 16;
        fb[i] = 0;
        for (int j = 0; j < 4; ++j) fb[i] |= (unsigned)(unsigned char)bt[g * 32 + k + j] << (8 * j);
    }
    int acc[4];
    for (int i = 0; i < 4; ++i) acc[i] = c[(g + (i / 2) * 8) * 8 + 2 * t + i % 2];
    kiln_mma_m16n8k32_s8(acc, fa, fb);
    for (int i = 0; i < 4; ++i) d[(g + (i / 2) * 8) * 8 + 2 * t + i % 2] = acc[i];
}

// src: a 16x16 row-major tile of 16-bit values. out[form][lane][reg] for the forms x4, x4.trans, x2,
// x2.trans (the x2 forms fill regs 0-1). Matrix i of the x4 forms is rows 8(i%2).., cols 8(i/2)..
// of the tile; the x2 forms read matrices 0 and 1 (lanes 16-31 pass the same addresses again).
extern "C" __global__ void ptx_ldmatrix(const unsigned short *src, unsigned *out) {
    __shared__ __align__(16) unsigned short tile[16 * 16];
    const int lane = threadIdx.x;
    for (int i = lane; i < 256; i += 32) tile[i] = src[i];
    __syncthreads();
    const int m = lane / 8, row = (m % 2) * 8 + lane % 8, col = (m / 2) * 8;
    const unsigned short *addr = &tile[row * 16 + col];
    unsigned r4[4], r2[2];
    kiln_ldmatrix_x4(r4, addr);
    for (int i = 0; i < 4; ++i) out[(0 * 32 + lane) * 4 + i] = r4[i];
    kiln_ldmatrix_x4_trans(r4, addr);
    for (int i = 0; i < 4; ++i) out[(1 * 32 + lane) * 4 + i] = r4[i];
    const unsigned short *addr2 = &tile[(lane % 16) * 16];
    kiln_ldmatrix_x2(r2, addr2);
    for (int i = 0; i < 4; ++i) out[(2 * 32 + lane) * 4 + i] = i < 2 ? r2[i] : 0u;
    kiln_ldmatrix_x2_trans(r2, addr2);
    for (int i = 0; i < 4; ++i) out[(3 * 32 + lane) * 4 + i] = i < 2 ? r2[i] : 0u;
}

// d[16][8] = a[16][16] · b[16][8], row-major, through shared memory: A by ldmatrix .x4 (matrix i =
// rows 8(i%2).., cols 8(i/2)..: the order of the A fragment's registers), B by ldmatrix .x2.trans of
// the [k][n] tile (matrix i = rows 8i..: k 8i..8i+7).
template <typename T> __device__ __forceinline__ void ldmatrix_mma(const T *a, const T *b, float *d) {
    // Raw 16-bit storage: g++ gives a static array of a class type (T) a hidden initialisation flag,
    // whose accesses Emu's checker would see as shared-memory accesses (docs/emulator.md).
    __shared__ __align__(16) unsigned short sa_bits[16 * 16];
    __shared__ __align__(16) unsigned short sb_bits[16 * 8];
    T *sa = reinterpret_cast<T *>(sa_bits), *sb = reinterpret_cast<T *>(sb_bits);
    const int lane = threadIdx.x, g = lane / 4, t = lane % 4;
    for (int i = lane; i < 256; i += 32) sa[i] = a[i];
    for (int i = lane; i < 128; i += 32) sb[i] = b[i];
    __syncthreads();
    unsigned fa[4], fb[2];
    const int m = lane / 8;
    kiln_ldmatrix_x4(fa, &sa[((m % 2) * 8 + lane % 8) * 16 + (m / 2) * 8]);
    kiln_ldmatrix_x2_trans(fb, &sb[(lane % 16) * 8]);
    float acc[4] = {0.f, 0.f, 0.f, 0.f};
    kiln_mma_m16n8k16<T>(acc, fa, fb);
    for (int i = 0; i < 4; ++i) d[(g + (i / 2) * 8) * 8 + 2 * t + i % 2] = acc[i];
}

#define PTX_LDMATRIX_MMA_KERNEL(T)                                                                                     \
    (const T *a, const T *b, float *d) { ldmatrix_mma(a, b, d); }

KILN_ENTRY(ptx_ldmatrix_mma_bf16, PTX_LDMATRIX_MMA_KERNEL, __nv_bfloat16)
KILN_ENTRY(ptx_ldmatrix_mma_f16, PTX_LDMATRIX_MMA_KERNEL, __half)

// dst[0..512) = src[0..n) followed by zeros (n <= 512; src 16-byte aligned with room for whole 16-byte
// chunks up to n). 64 threads; group 0 copies floats 0..255, group 1 floats 256..511, 16 bytes each.
extern "C" __global__ void ptx_cp_async(const float *src, float *dst, unsigned n) {
    __shared__ __align__(16) float buf[512];
    const unsigned t = threadIdx.x;
    for (int group = 0; group < 2; ++group) {
        const unsigned first = group * 256 + t * 4;
        const unsigned have = first < n ? (n - first < 4 ? n - first : 4) : 0;
        kiln_cp_async_16(&buf[first], have > 0 ? src + first : src, have * 4);
        kiln_cp_async_commit();
    }
    kiln_cp_async_wait<1>();
    __syncthreads();
    for (unsigned i = t; i < 256; i += 64) dst[i] = buf[i];
    kiln_cp_async_wait<0>();
    __syncthreads();
    for (unsigned i = 256 + t; i < 512; i += 64) dst[i] = buf[i];
}
