// common.cuh — portable helpers shared by kiln's kernels, for NVRTC and the CPU emulator alike.
//
// Every kernels/*.cu includes this first. Under NVRTC/nvcc it is plain CUDA; under the host compiler
// (Device::Emu) it pulls in emu/emu.h, which supplies the CUDA keywords, built-ins and intrinsics.
// Kernel files include nothing else (NVRTC has no standard library), so the integer types here are
// spelled out: `unsigned long long` is an element index or a byte count, `long long` a stride.
//
// What is here:
//   - KILN_DYNAMIC_SMEM: dynamic shared memory that works under both compilers;
//   - KilnFloat<T>: the arithmetic type of each element type (f32 for f32/bf16/f16, f64 for f64)
//     and the conversions kiln's CPU backend uses (round to nearest even, through f64 where exact);
//   - KilnLayout: a strided view (shape, strides, offset) as a kernel argument, and the offset of
//     the i-th element in row-major order;
//   - KilnPack<T, N>: N elements as one aligned 16-byte (or smaller) access;
//   - kiln_map1/2/3: the elementwise loop every memory-bound kernel uses: a grid-stride loop that
//     takes 16-byte vector loads and stores when every operand is contiguous and aligned, and falls
//     back to one element at a time through the strides otherwise;
//   - warp and block reductions;
//   - the tensor-core and asynchronous-copy instructions (sm_80+): kiln_mma_m16n8k16, kiln_ldmatrix_x4/x2
//     (and .trans), kiln_cp_async_16, kiln_cp_async_commit, kiln_cp_async_wait<N>. Each is the one place
//     its inline PTX is written; under the emulator each calls its model in emu/emu_ptx.h, which follows
//     the PTX ISA's fragment layouts lane by lane (kernels/ptx_selftest.cu checks both).
#pragma once

#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
#define KILN_EMU 0
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#else
#include "emu/emu.h" // defines KILN_EMU 1
#endif

// Dynamic shared memory, sized by the launch's shared-memory argument:
//     KILN_DYNAMIC_SMEM(float, smem);   // then smem[i] as usual
// declares `T* name` at the start of the block's dynamic shared memory (16-byte aligned). On the GPU
// that is the usual `extern __shared__` array; g++ cannot express one, so the emulator hands out the
// block's buffer instead. Both forms make `name` a pointer, so code behaves the same under both.
#if KILN_EMU
#define KILN_DYNAMIC_SMEM(T, name) T *name = reinterpret_cast<T *>(::emu::dynamic_smem())
#else
#define KILN_DYNAMIC_SMEM(T, name)                                                                    \
    extern __shared__ __align__(16) unsigned char kiln_dynamic_smem_##name[];                         \
    T *name = reinterpret_cast<T *>(kiln_dynamic_smem_##name)
#endif

#define KILN_FULL_MASK 0xffffffffu

// ---------------------------------------------------------------------------------------------------
// Element types. Kernels are templates over the element type T; each file instantiates them as
// `extern "C"` kernels named <op>_<dtype> (f32, f64, bf16, f16, u32), the names the Rust launch
// wrappers use.

template <typename T> struct KilnFloat;

template <> struct KilnFloat<float> {
    typedef float Acc;
    static __device__ __forceinline__ float up(float x) { return x; }
    static __device__ __forceinline__ float down(float a) { return a; }
};

template <> struct KilnFloat<double> {
    typedef double Acc;
    static __device__ __forceinline__ double up(double x) { return x; }
    static __device__ __forceinline__ double down(double a) { return a; }
};

template <> struct KilnFloat<__nv_bfloat16> {
    typedef float Acc;
    static __device__ __forceinline__ float up(__nv_bfloat16 x) { return __bfloat162float(x); }
    static __device__ __forceinline__ __nv_bfloat16 down(float a) { return __float2bfloat16(a); }
};

template <> struct KilnFloat<__half> {
    typedef float Acc;
    static __device__ __forceinline__ float up(__half x) { return __half2float(x); }
    static __device__ __forceinline__ __half down(float a) { return __float2half(a); }
};

// +infinity (NVRTC has no <math.h> INFINITY).
template <typename A> __device__ __forceinline__ A kiln_inf();
template <> __device__ __forceinline__ float kiln_inf<float>() { return __int_as_float(0x7f800000); }
template <> __device__ __forceinline__ double kiln_inf<double>() { return __longlong_as_double(0x7ff0000000000000ll); }

// exp and log in the arithmetic type (expf/logf for f32, exp/log for f64).
__device__ __forceinline__ float kiln_exp(float x) { return expf(x); }
__device__ __forceinline__ double kiln_exp(double x) { return exp(x); }
__device__ __forceinline__ float kiln_log(float x) { return logf(x); }
__device__ __forceinline__ double kiln_log(double x) { return log(x); }

// Conversions between element types, exactly as the CPU backend does them (`U::from_f64(x.to_f64())`):
// widening is exact; narrowing rounds once, to nearest even; floats to u32 truncate toward zero and
// saturate, NaN giving 0. Going through f32 where that is exact keeps the common casts cheap.
template <typename T> __device__ __forceinline__ double kiln_to_f64(T x) { return (double)KilnFloat<T>::up(x); }
template <> __device__ __forceinline__ double kiln_to_f64<unsigned>(unsigned x) { return (double)x; }

template <typename T> __device__ __forceinline__ T kiln_from_f64(double v);
template <> __device__ __forceinline__ float kiln_from_f64<float>(double v) { return (float)v; }
template <> __device__ __forceinline__ double kiln_from_f64<double>(double v) { return v; }
template <> __device__ __forceinline__ __nv_bfloat16 kiln_from_f64<__nv_bfloat16>(double v) {
    return __double2bfloat16(v);
}
template <> __device__ __forceinline__ __half kiln_from_f64<__half>(double v) { return __double2half(v); }
template <> __device__ __forceinline__ unsigned kiln_from_f64<unsigned>(double v) {
    if (!(v > 0.0)) return 0u; // negative, zero and NaN
    if (v >= 4294967295.0) return 0xffffffffu;
    return (unsigned)v;
}

template <typename S, typename D> struct KilnConvert {
    static __device__ __forceinline__ D run(S x) { return kiln_from_f64<D>(kiln_to_f64<S>(x)); }
};
// f32 <-> bf16 <-> f16 through f32: bf16 and f16 widen to f32 exactly, and f32 -> half rounds once.
#define KILN_CONVERT_VIA_F32(S, D)                                                                    \
    template <> struct KilnConvert<S, D> {                                                            \
        static __device__ __forceinline__ D run(S x) { return KilnFloat<D>::down(KilnFloat<S>::up(x)); } \
    };
KILN_CONVERT_VIA_F32(float, __nv_bfloat16)
KILN_CONVERT_VIA_F32(float, __half)
KILN_CONVERT_VIA_F32(__nv_bfloat16, float)
KILN_CONVERT_VIA_F32(__half, float)
KILN_CONVERT_VIA_F32(__nv_bfloat16, __half)
KILN_CONVERT_VIA_F32(__half, __nv_bfloat16)
#undef KILN_CONVERT_VIA_F32

// GELU, GPT-2's tanh form: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), in the arithmetic type A
// (unary.cu's gelu and matmul.cu's fused epilogue).
__device__ __forceinline__ float kiln_tanh(float x) { return tanhf(x); }
__device__ __forceinline__ double kiln_tanh(double x) { return tanh(x); }
template <typename A> __device__ __forceinline__ A kiln_gelu(A x) {
    const A u = (A)0.7978845608028654 * (x + (A)0.044715 * x * x * x);
    return (A)0.5 * x * ((A)1 + kiln_tanh(u));
}

// SiLU, x * sigmoid(x) = x / (1 + exp(-x)), and its derivative sigmoid(x) * (1 + x * (1 - sigmoid(x))), in
// the arithmetic type (unary.cu's silu, swiglu.cu). exp(-x) = inf gives -0 and 0, never NaN.
template <typename A> __device__ __forceinline__ A kiln_silu(A x) { return x / ((A)1 + kiln_exp(-x)); }
template <typename A> __device__ __forceinline__ A kiln_silu_derivative(A x) {
    const A s = (A)1 / ((A)1 + kiln_exp(-x));
    return s * ((A)1 + x * ((A)1 - s));
}

// ---------------------------------------------------------------------------------------------------
// Strided views. The Rust side (src/backend/cuda/layout.rs) fills this from a kiln Layout after
// dropping size-1 dims and merging dims that are contiguous with each other, so most views arrive
// with rank 0 or 1. Dims are stored innermost first: shape[0] is the last (fastest) dim.

#define KILN_MAX_RANK 8

struct KilnLayout {
    unsigned long long shape[KILN_MAX_RANK];
    long long strides[KILN_MAX_RANK];
    unsigned long long offset;
    unsigned rank;
    unsigned pad_;
};

// Whether element i of the view is at offset + i (a contiguous view).
__device__ __forceinline__ bool kiln_is_contiguous(const KilnLayout &l) {
    return l.rank == 0 || (l.rank == 1 && l.strides[0] == 1);
}

// The storage offset of the i-th element of the view in row-major order, without l.offset. The loop
// is unrolled with constant indices so the layout stays in the parameter bank (a dynamic index into
// a by-value struct would copy it to local memory). Headroom: this is one 64-bit division per dim; a
// 32-bit path would be faster for views under 2^32 elements.
__device__ __forceinline__ long long kiln_offset_rel(const KilnLayout &l, unsigned long long i) {
    if (l.rank <= 1) return l.rank == 0 ? 0 : (long long)i * l.strides[0];
    long long off = 0;
#pragma unroll
    for (int d = 0; d < KILN_MAX_RANK; ++d) {
        if (d < (int)l.rank) {
            const unsigned long long size = l.shape[d];
            const unsigned long long q = i / size;
            off += (long long)(i - q * size) * l.strides[d];
            i = q;
        }
    }
    return off;
}

__device__ __forceinline__ unsigned long long kiln_offset(const KilnLayout &l, unsigned long long i) {
    return l.offset + (unsigned long long)kiln_offset_rel(l, i);
}

// ---------------------------------------------------------------------------------------------------
// Vector accesses: N elements loaded or stored as one access of N * sizeof(T) bytes (16 at most).

template <typename T, int N> struct alignas(sizeof(T) * N) KilnPack {
    T v[N];
};

template <int Bytes> __device__ __forceinline__ bool kiln_aligned(const void *p) {
    return ((unsigned long long)p & (Bytes - 1)) == 0;
}

// The number of elements of the largest type among the operands that fit in 16 bytes.
template <typename A, typename B = A, typename C = A, typename D = A> struct KilnVecWidth {
    static constexpr int largest = sizeof(A) > sizeof(B) ? (sizeof(A) > sizeof(C) ? (sizeof(A) > sizeof(D) ? sizeof(A) : sizeof(D)) : (sizeof(C) > sizeof(D) ? sizeof(C) : sizeof(D))) : (sizeof(B) > sizeof(C) ? (sizeof(B) > sizeof(D) ? sizeof(B) : sizeof(D)) : (sizeof(C) > sizeof(D) ? sizeof(C) : sizeof(D)));
    static constexpr int value = 16 / largest;
};

__device__ __forceinline__ unsigned long long kiln_thread_index() {
    return (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
}

__device__ __forceinline__ unsigned long long kiln_thread_count() {
    return (unsigned long long)gridDim.x * blockDim.x;
}

// y[i] = f(x[i]) for the n elements of the view lx; y is contiguous. Launch: 1-D grid, any size
// (grid-stride loop); with 16-byte packs when x is contiguous and both pointers are aligned.
template <typename S, typename D, typename F>
__device__ __forceinline__ void kiln_map1(const S *__restrict__ x, const KilnLayout &lx, D *__restrict__ y,
                                          unsigned long long n, F f) {
    constexpr int N = KilnVecWidth<S, D>::value;
    const unsigned long long start = kiln_thread_index(), step = kiln_thread_count();
    const S *xs = x + lx.offset;
    if (kiln_is_contiguous(lx) && kiln_aligned<N * sizeof(S)>(xs) && kiln_aligned<N * sizeof(D)>(y)) {
        const unsigned long long packs = n / N;
        for (unsigned long long p = start; p < packs; p += step) {
            const KilnPack<S, N> a = reinterpret_cast<const KilnPack<S, N> *>(xs)[p];
            KilnPack<D, N> out;
#pragma unroll
            for (int k = 0; k < N; ++k) out.v[k] = f(a.v[k]);
            reinterpret_cast<KilnPack<D, N> *>(y)[p] = out;
        }
        for (unsigned long long i = packs * N + start; i < n; i += step) y[i] = f(xs[i]);
        return;
    }
    for (unsigned long long i = start; i < n; i += step) y[i] = f(x[kiln_offset(lx, i)]);
}

// y[i] = f(a[i], b[i]) over two views of one shape (broadcasts are stride-0 dims); y contiguous.
template <typename A, typename B, typename D, typename F>
__device__ __forceinline__ void kiln_map2(const A *__restrict__ a, const KilnLayout &la, const B *__restrict__ b,
                                          const KilnLayout &lb, D *__restrict__ y, unsigned long long n, F f) {
    constexpr int N = KilnVecWidth<A, B, D>::value;
    const unsigned long long start = kiln_thread_index(), step = kiln_thread_count();
    const A *as = a + la.offset;
    const B *bs = b + lb.offset;
    if (kiln_is_contiguous(la) && kiln_is_contiguous(lb) && kiln_aligned<N * sizeof(A)>(as) &&
        kiln_aligned<N * sizeof(B)>(bs) && kiln_aligned<N * sizeof(D)>(y)) {
        const unsigned long long packs = n / N;
        for (unsigned long long p = start; p < packs; p += step) {
            const KilnPack<A, N> va = reinterpret_cast<const KilnPack<A, N> *>(as)[p];
            const KilnPack<B, N> vb = reinterpret_cast<const KilnPack<B, N> *>(bs)[p];
            KilnPack<D, N> out;
#pragma unroll
            for (int k = 0; k < N; ++k) out.v[k] = f(va.v[k], vb.v[k]);
            reinterpret_cast<KilnPack<D, N> *>(y)[p] = out;
        }
        for (unsigned long long i = packs * N + start; i < n; i += step) y[i] = f(as[i], bs[i]);
        return;
    }
    for (unsigned long long i = start; i < n; i += step) y[i] = f(a[kiln_offset(la, i)], b[kiln_offset(lb, i)]);
}

// y[i] = f(a[i], b[i], c[i]) over three views of one shape; y contiguous.
template <typename A, typename B, typename C, typename D, typename F>
__device__ __forceinline__ void kiln_map3(const A *__restrict__ a, const KilnLayout &la, const B *__restrict__ b,
                                          const KilnLayout &lb, const C *__restrict__ c, const KilnLayout &lc,
                                          D *__restrict__ y, unsigned long long n, F f) {
    constexpr int N = KilnVecWidth<A, B, C, D>::value;
    const unsigned long long start = kiln_thread_index(), step = kiln_thread_count();
    const A *as = a + la.offset;
    const B *bs = b + lb.offset;
    const C *cs = c + lc.offset;
    if (kiln_is_contiguous(la) && kiln_is_contiguous(lb) && kiln_is_contiguous(lc) &&
        kiln_aligned<N * sizeof(A)>(as) && kiln_aligned<N * sizeof(B)>(bs) && kiln_aligned<N * sizeof(C)>(cs) &&
        kiln_aligned<N * sizeof(D)>(y)) {
        const unsigned long long packs = n / N;
        for (unsigned long long p = start; p < packs; p += step) {
            const KilnPack<A, N> va = reinterpret_cast<const KilnPack<A, N> *>(as)[p];
            const KilnPack<B, N> vb = reinterpret_cast<const KilnPack<B, N> *>(bs)[p];
            const KilnPack<C, N> vc = reinterpret_cast<const KilnPack<C, N> *>(cs)[p];
            KilnPack<D, N> out;
#pragma unroll
            for (int k = 0; k < N; ++k) out.v[k] = f(va.v[k], vb.v[k], vc.v[k]);
            reinterpret_cast<KilnPack<D, N> *>(y)[p] = out;
        }
        for (unsigned long long i = packs * N + start; i < n; i += step) y[i] = f(as[i], bs[i], cs[i]);
        return;
    }
    for (unsigned long long i = start; i < n; i += step)
        y[i] = f(a[kiln_offset(la, i)], b[kiln_offset(lb, i)], c[kiln_offset(lc, i)]);
}

// ---------------------------------------------------------------------------------------------------
// Reductions within a warp and a block.

// Sum / max over the 32 lanes of a full warp (butterfly: every lane gets the result).
__device__ __forceinline__ float kiln_warp_sum(float v) {
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(KILN_FULL_MASK, v, offset);
    return v;
}

__device__ __forceinline__ float kiln_warp_max(float v) {
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) v = fmaxf(v, __shfl_xor_sync(KILN_FULL_MASK, v, offset));
    return v;
}

// Sum over a whole block whose size is a multiple of 32 (at most 1024); every thread gets the result.
// `scratch` is 32 floats of shared memory. Ends with a barrier, so scratch may be reused right after.
__device__ __forceinline__ float kiln_block_sum(float v, float *scratch) {
    const unsigned tid = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
    const unsigned nwarps = (blockDim.x * blockDim.y * blockDim.z) / 32;
    v = kiln_warp_sum(v);
    if (tid % 32 == 0) scratch[tid / 32] = v;
    __syncthreads();
    v = tid % 32 < nwarps ? scratch[tid % 32] : 0.0f;
    v = kiln_warp_sum(v);
    __syncthreads();
    return v;
}

// ---------------------------------------------------------------------------------------------------
// Tensor cores and asynchronous copies (sm_80 and later). Fragment layouts, with groupID = lane / 4 and
// tig = lane % 4, as the PTX ISA documents them for mma.m16n8k16 with 16-bit inputs (each .b32 register
// holds two elements, the lower column or row in the low half):
//   A 16x16 (row): a[0] = A[g][2t, 2t+1]  a[1] = A[g+8][2t, 2t+1]  a[2] = A[g][2t+8, 2t+9]  a[3] = A[g+8][2t+8, 2t+9]
//   B 16x8 (col):  b[0] = B[2t, 2t+1][g]  b[1] = B[2t+8, 2t+9][g]
//   C/D 16x8 f32:  c[0], c[1] = C[g][2t, 2t+1]   c[2], c[3] = C[g+8][2t, 2t+1]
// ldmatrix .xN: lanes 8i..8i+7 give the 16-byte rows of 8x8 matrix i; register i of lane l gets matrix
// i's [l/4][2(l%4), 2(l%4)+1], or with .trans its [2(l%4)][l/4] and [2(l%4)+1][l/4]. So ldmatrix .x4 of
// a row-major 16x16 tile (matrices: rows 0-7/8-15 x cols 0-7/8-15 in the order of a[]) gives the A
// fragment, and .x2.trans of a row-major [k][n] 16x8 tile gives the B fragment.

// Two 16-bit values as one .b32 register: lo in bits 0-15.
__device__ __forceinline__ unsigned kiln_pack_b16(__nv_bfloat16 lo, __nv_bfloat16 hi) {
    return (unsigned)__bfloat16_as_ushort(lo) | ((unsigned)__bfloat16_as_ushort(hi) << 16);
}
__device__ __forceinline__ unsigned kiln_pack_b16(__half lo, __half hi) {
    return (unsigned)__half_as_ushort(lo) | ((unsigned)__half_as_ushort(hi) << 16);
}

// acc += A·B for one 16x8x16 tile, f32 accumulation; T is __nv_bfloat16 or __half. Warp-wide: every
// lane of the warp must call it together.
template <typename T>
__device__ __forceinline__ void kiln_mma_m16n8k16(float (&acc)[4], const unsigned (&a)[4], const unsigned (&b)[2]);

template <>
__device__ __forceinline__ void kiln_mma_m16n8k16<__nv_bfloat16>(float (&acc)[4], const unsigned (&a)[4],
                                                                 const unsigned (&b)[2]) {
#if KILN_EMU
    ::emu::mma_m16n8k16<__nv_bfloat16>(acc, a, b);
#else
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};\n"
                 : "+f"(acc[0]), "+f"(acc[1]), "+f"(acc[2]), "+f"(acc[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#endif
}

template <>
__device__ __forceinline__ void kiln_mma_m16n8k16<__half>(float (&acc)[4], const unsigned (&a)[4], const unsigned (&b)[2]) {
#if KILN_EMU
    ::emu::mma_m16n8k16<__half>(acc, a, b);
#else
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};\n"
                 : "+f"(acc[0]), "+f"(acc[1]), "+f"(acc[2]), "+f"(acc[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#endif
}

#if !KILN_EMU
// The shared-state-space address of a generic pointer into shared memory, as ldmatrix/cp.async take it.
__device__ __forceinline__ unsigned kiln_smem_addr(const void *p) { return (unsigned)__cvta_generic_to_shared(p); }
#endif

// ldmatrix.sync.aligned.m8n8.x4[.trans].shared.b16: `row` is this lane's row address in shared memory
// (16-byte aligned). Warp-wide.
__device__ __forceinline__ void kiln_ldmatrix_x4(unsigned (&r)[4], const void *row) {
#if KILN_EMU
    ::emu::ldmatrix<4, false>(r, row);
#else
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(kiln_smem_addr(row)));
#endif
}

__device__ __forceinline__ void kiln_ldmatrix_x4_trans(unsigned (&r)[4], const void *row) {
#if KILN_EMU
    ::emu::ldmatrix<4, true>(r, row);
#else
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(kiln_smem_addr(row)));
#endif
}

// .x2: lanes 0-15 give the row addresses (the others' are ignored but must be valid pointers).
__device__ __forceinline__ void kiln_ldmatrix_x2(unsigned (&r)[2], const void *row) {
#if KILN_EMU
    ::emu::ldmatrix<2, false>(r, row);
#else
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];\n"
                 : "=r"(r[0]), "=r"(r[1])
                 : "r"(kiln_smem_addr(row)));
#endif
}

__device__ __forceinline__ void kiln_ldmatrix_x2_trans(unsigned (&r)[2], const void *row) {
#if KILN_EMU
    ::emu::ldmatrix<2, true>(r, row);
#else
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];\n"
                 : "=r"(r[0]), "=r"(r[1])
                 : "r"(kiln_smem_addr(row)));
#endif
}

// cp.async.cg.shared.global: copies src_bytes (0..16) from global `src` to shared `dst` and zero-fills
// the rest of the 16 bytes; both 16-byte aligned. With src_bytes = 0 nothing is read, but `src` must
// still be a valid global address (pass the operand's base pointer for an out-of-range tile element).
__device__ __forceinline__ void kiln_cp_async_16(void *dst, const void *src, unsigned src_bytes) {
#if KILN_EMU
    ::emu::cp_async_16(dst, src, src_bytes);
#else
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(kiln_smem_addr(dst)), "l"(src),
                 "r"(src_bytes)
                 : "memory");
#endif
}

// Closes the group of this thread's cp.async issued since the last commit.
__device__ __forceinline__ void kiln_cp_async_commit() {
#if !KILN_EMU
    asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}

// Waits until at most N of this thread's committed groups are still in flight. Other threads' copies
// need a __syncthreads() after this before they are visible.
template <int N> __device__ __forceinline__ void kiln_cp_async_wait() {
#if !KILN_EMU
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
#endif
}
