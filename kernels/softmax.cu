// softmax.cu — softmax and log-softmax over the last dim of a contiguous [rows, width] tensor, and
// their backward (softmax_backward_<dtype>, below the forward).
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
#include "rows.cuh"

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
                for (int k = 0; k < N; ++k) kiln_online_add(m, s, F::up(v.v[k]));
            }
        } else {
            for (unsigned j = threadIdx.x; j < width; j += blockDim.x) kiln_online_add(m, s, F::up(xr[j]));
        }
    }
    kiln_row_max_sum(m, s, sm_m, sm_s);
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

// The backward of both, from the forward's output y and the incoming gradient dy:
//   softmax:     dx = y * (dy - sum(y * dy))      log_softmax: dx = dy - exp(y) * sum(dy)
// Same launch shape as the forward; the row sum combines like the forward's (max, sum), then a second
// read of y and dy writes dx. Roofline: ~3 FLOPs per element (plus one exp for log_softmax);
// 4 reads + 1 write = 5 * sizeof(T) bytes per element.
template <typename T>
__device__ __forceinline__ void softmax_backward_impl(const T *__restrict__ y, const T *__restrict__ dy,
                                                      T *__restrict__ dx, unsigned long long rows, unsigned width,
                                                      int want_log) {
    typedef KilnFloat<T> F;
    typedef typename F::Acc A;
    __shared__ A scratch[32];

    const unsigned long long row = (unsigned long long)blockIdx.x * blockDim.y + threadIdx.y;
    const bool live = row < rows;
    const unsigned long long base = (live ? row : 0) * width;
    A acc = (A)0;
    if (live) {
        for (unsigned j = threadIdx.x; j < width; j += blockDim.x)
            acc += want_log ? F::up(dy[base + j]) : F::up(y[base + j]) * F::up(dy[base + j]);
    }
    const A sum = kiln_row_sum(acc, scratch);
    if (!live) return;
    for (unsigned j = threadIdx.x; j < width; j += blockDim.x) {
        const A u = F::up(y[base + j]), g = F::up(dy[base + j]);
        dx[base + j] = F::down(want_log ? g - kiln_exp(u) * sum : u * (g - sum));
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

extern "C" __global__ void softmax_backward_f32(const float *y, const float *dy, float *dx, unsigned long long rows,
                                               unsigned width, int want_log) {
    softmax_backward_impl(y, dy, dx, rows, width, want_log);
}

extern "C" __global__ void softmax_backward_f64(const double *y, const double *dy, double *dx, unsigned long long rows,
                                               unsigned width, int want_log) {
    softmax_backward_impl(y, dy, dx, rows, width, want_log);
}

extern "C" __global__ void softmax_backward_bf16(const __nv_bfloat16 *y, const __nv_bfloat16 *dy, __nv_bfloat16 *dx, unsigned long long rows,
                                               unsigned width, int want_log) {
    softmax_backward_impl(y, dy, dx, rows, width, want_log);
}

extern "C" __global__ void softmax_backward_f16(const __half *y, const __half *dy, __half *dx, unsigned long long rows,
                                               unsigned width, int want_log) {
    softmax_backward_impl(y, dy, dx, rows, width, want_log);
}
