// softmax.cu — softmax and log-softmax over the last dim of a contiguous [rows, width] tensor.
//   softmax:     y = exp(x - m) / s            log_softmax: y = x - m - log(s)
// with m the row max and s = sum exp(x - m). A row that is entirely -inf has no probability mass:
// softmax gives 0 and log_softmax -inf (as the CPU backend; PyTorch gives NaN).
//
// Algorithm: one pass reads the row once and keeps a running (max, sum) pair per thread (the
// "online softmax" rescaling: when the max grows, the sum so far is multiplied by exp(old - new));
// the pairs combine with a warp butterfly, then across the row's warps through shared memory; a
// second pass reads the row again and writes y. Accumulation in f32 (f64 for f64).
// Launch: a 2-D block of blockDim.x threads per row (32..1024, a power of two, about width / 8) and
// blockDim.y rows per block (blockDim.x * blockDim.y = 256 for narrow rows); ceil(rows / blockDim.y)
// blocks. 16-byte loads and stores when width is a multiple of the pack and the buffers are aligned.
// Roofline: ~5 FLOPs (one exp) per element; 2 reads + 1 write = 3 * sizeof(T) bytes per element.
// Rows short enough to keep in registers could skip the second read (a later improvement).
#include "common.cuh"

// Folds x into the running (m, s): s is the sum of exp(v - m) over the values seen so far.
template <typename A> __device__ __forceinline__ void online_add(A &m, A &s, A x) {
    if (x > m) {
        s = s * kiln_exp(m - x) + (A)1; // exp(-inf) = 0 when this is the first finite value
        m = x;
    } else if (x != -kiln_inf<A>()) {
        s += kiln_exp(x - m); // NaN x (or m = +inf) turns s into NaN, which then reaches every output
    }
}

// Merges another thread's (m2, s2) into (m, s).
template <typename A> __device__ __forceinline__ void online_merge(A &m, A &s, A m2, A s2) {
    const A mm = m > m2 ? m : m2;
    const A a = s == (A)0 ? (A)0 : s * kiln_exp(m - mm);
    const A b = s2 == (A)0 ? (A)0 : s2 * kiln_exp(m2 - mm);
    m = mm;
    s = a + b;
}

template <typename T>
__device__ __forceinline__ void softmax_impl(const T *__restrict__ x, T *__restrict__ y, unsigned long long rows,
                                             unsigned width, int want_log) {
    typedef KilnFloat<T> F;
    typedef typename F::Acc A;
    constexpr int N = 16 / sizeof(T);
    __shared__ A sm_m[32], sm_s[32];

    const unsigned long long row = (unsigned long long)blockIdx.x * blockDim.y + threadIdx.y;
    const bool live = row < rows;
    const T *xr = x + (live ? row : 0) * width;
    T *yr = y + (live ? row : 0) * width;
    const bool vec = width % N == 0 && kiln_aligned<16>(x) && kiln_aligned<16>(y);

    A m = -kiln_inf<A>(), s = (A)0;
    if (live) {
        if (vec) {
            for (unsigned p = threadIdx.x; p < width / N; p += blockDim.x) {
                const KilnPack<T, N> v = reinterpret_cast<const KilnPack<T, N> *>(xr)[p];
#pragma unroll
                for (int k = 0; k < N; ++k) online_add(m, s, F::up(v.v[k]));
            }
        } else {
            for (unsigned j = threadIdx.x; j < width; j += blockDim.x) online_add(m, s, F::up(xr[j]));
        }
    }
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) {
        const A m2 = __shfl_xor_sync(KILN_FULL_MASK, m, offset);
        const A s2 = __shfl_xor_sync(KILN_FULL_MASK, s, offset);
        online_merge(m, s, m2, s2);
    }
    if (blockDim.x > 32) { // uniform over the block: every thread reaches the barrier or none does
        const unsigned warps_per_row = blockDim.x / 32;
        const unsigned warp = (threadIdx.y * blockDim.x + threadIdx.x) / 32;
        if (threadIdx.x % 32 == 0) {
            sm_m[warp] = m;
            sm_s[warp] = s;
        }
        __syncthreads();
        const unsigned first = threadIdx.y * warps_per_row;
        m = sm_m[first];
        s = sm_s[first];
        for (unsigned w = 1; w < warps_per_row; ++w) online_merge(m, s, sm_m[first + w], sm_s[first + w]);
    }
    if (!live) return;

    const bool masked = m == -kiln_inf<A>();
    const A inv = (A)1 / s, lse = m + kiln_log(s);
    if (vec) {
        for (unsigned p = threadIdx.x; p < width / N; p += blockDim.x) {
            const KilnPack<T, N> v = reinterpret_cast<const KilnPack<T, N> *>(xr)[p];
            KilnPack<T, N> out;
#pragma unroll
            for (int k = 0; k < N; ++k) {
                const A u = F::up(v.v[k]);
                out.v[k] = F::down(masked ? (want_log ? -kiln_inf<A>() : (A)0) : (want_log ? u - lse : kiln_exp(u - m) * inv));
            }
            reinterpret_cast<KilnPack<T, N> *>(yr)[p] = out;
        }
    } else {
        for (unsigned j = threadIdx.x; j < width; j += blockDim.x) {
            const A u = F::up(xr[j]);
            yr[j] = F::down(masked ? (want_log ? -kiln_inf<A>() : (A)0) : (want_log ? u - lse : kiln_exp(u - m) * inv));
        }
    }
}

extern "C" __global__ void softmax_f32(const float *x, float *y, unsigned long long rows, unsigned width, int want_log) {
    softmax_impl(x, y, rows, width, want_log);
}

extern "C" __global__ void softmax_f64(const double *x, double *y, unsigned long long rows, unsigned width, int want_log) {
    softmax_impl(x, y, rows, width, want_log);
}

extern "C" __global__ void softmax_bf16(const __nv_bfloat16 *x, __nv_bfloat16 *y, unsigned long long rows,
                                        unsigned width, int want_log) {
    softmax_impl(x, y, rows, width, want_log);
}

extern "C" __global__ void softmax_f16(const __half *x, __half *y, unsigned long long rows, unsigned width, int want_log) {
    softmax_impl(x, y, rows, width, want_log);
}
