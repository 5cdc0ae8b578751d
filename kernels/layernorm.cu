// layernorm.cu — LayerNorm over the last dim of a contiguous [rows, c] tensor, forward and backward,
// with statistics in the accumulation type (f32; f64 for f64), as the CPU backend:
//   forward:  mean = sum(x) / c,  rstd = 1 / sqrt(sum((x - mean)^2) / c + eps),
//             y = (x - mean) * rstd * w + b   (b optional: a null pointer), mean and rstd saved per row;
//   backward: xhat = (x - mean) * rstd,  dx = rstd * (dy*w - mean(dy*w) - xhat * mean(dy*w*xhat)),
//             dw = sum over rows of dy*xhat,  db = sum over rows of dy.
//
// Algorithm. layer_norm_forward and layer_norm_backward_dx are row kernels (kernels/rows.cuh): blockDim.x
// threads per row, blockDim.y rows per block, ceil(rows / blockDim.y) blocks. The forward reads the
// row three times: the sum, then the centred sum of squares (two passes, as the CPU, so a large mean
// does not cancel the variance away), then the write; dx reads x and dy twice (two row sums, then the
// write). dw and db are reduced over rows in two deterministic stages, without atomics:
//   layer_norm_dparams_partial: grid [ceil(c / 32), chunks], block [32, 8]: block (s, k) owns columns
//     32s .. 32s+31 and the rows of chunk k; its 8 row lanes sum every 8th row of the chunk (32
//     neighbouring columns per warp: coalesced), then lane 0 adds the 8 lane sums in order and writes
//     partial[k][0][col] (dw) and partial[k][1][col] (db), in the accumulation type;
//   layer_norm_dparams_finish: one thread per column adds its chunks' partials in chunk order.
// The order of every sum depends only on the shape and the chunk count (chosen from the SM count), so
// a run repeats bit for bit on one device.
// Roofline, per element: forward ~8 FLOPs, 3 reads + 1 write of sizeof(T); dx ~12 FLOPs, 4 reads +
// 1 write; dparams ~5 FLOPs, 2 reads (+ 2 * chunks * c partials). All memory bound.
#include "rows.cuh"

template <typename T>
__device__ __forceinline__ void layer_norm_forward_impl(const T *__restrict__ x, const T *__restrict__ w,
                                                        const T *__restrict__ b, T *__restrict__ y,
                                                        typename KilnFloat<T>::Acc *__restrict__ mean_out,
                                                        typename KilnFloat<T>::Acc *__restrict__ rstd_out,
                                                        unsigned long long rows, unsigned c,
                                                        typename KilnFloat<T>::Acc eps) {
    typedef KilnFloat<T> F;
    typedef typename F::Acc A;
    __shared__ A scratch[32];

    const unsigned long long row = (unsigned long long)blockIdx.x * blockDim.y + threadIdx.y;
    const bool live = row < rows;
    const T *xr = x + (live ? row : 0) * c;
    A acc = (A)0;
    if (live)
        for (unsigned j = threadIdx.x; j < c; j += blockDim.x) acc += F::up(xr[j]);
    const A mean = kiln_row_sum(acc, scratch) / (A)c;
    acc = (A)0;
    if (live) {
        for (unsigned j = threadIdx.x; j < c; j += blockDim.x) {
            const A d = F::up(xr[j]) - mean;
            acc += d * d;
        }
    }
    const A rstd = (A)1 / kiln_sqrt(kiln_row_sum(acc, scratch) / (A)c + eps);
    if (!live) return;
    if (threadIdx.x == 0) {
        mean_out[row] = mean;
        rstd_out[row] = rstd;
    }
    T *yr = y + row * c;
    for (unsigned j = threadIdx.x; j < c; j += blockDim.x) {
        const A shift = b ? F::up(b[j]) : (A)0;
        yr[j] = F::down((F::up(xr[j]) - mean) * rstd * F::up(w[j]) + shift);
    }
}

template <typename T>
__device__ __forceinline__ void layer_norm_backward_dx_impl(const T *__restrict__ x, const T *__restrict__ w,
                                                            const T *__restrict__ dy,
                                                            const typename KilnFloat<T>::Acc *__restrict__ mean,
                                                            const typename KilnFloat<T>::Acc *__restrict__ rstd,
                                                            T *__restrict__ dx, unsigned long long rows, unsigned c) {
    typedef KilnFloat<T> F;
    typedef typename F::Acc A;
    __shared__ A scratch[32];

    const unsigned long long row = (unsigned long long)blockIdx.x * blockDim.y + threadIdx.y;
    const bool live = row < rows;
    const unsigned long long base = (live ? row : 0) * c;
    const A m = live ? mean[row] : (A)0, r = live ? rstd[row] : (A)0;
    A sum_dyw = (A)0, sum_dyw_xhat = (A)0;
    if (live) {
        for (unsigned j = threadIdx.x; j < c; j += blockDim.x) {
            const A dyw = F::up(dy[base + j]) * F::up(w[j]);
            sum_dyw += dyw;
            sum_dyw_xhat += dyw * (F::up(x[base + j]) - m) * r;
        }
    }
    const A mean_dyw = kiln_row_sum(sum_dyw, scratch) / (A)c;
    const A mean_dyw_xhat = kiln_row_sum(sum_dyw_xhat, scratch) / (A)c;
    if (!live) return;
    for (unsigned j = threadIdx.x; j < c; j += blockDim.x) {
        const A xhat = (F::up(x[base + j]) - m) * r;
        dx[base + j] = F::down(r * (F::up(dy[base + j]) * F::up(w[j]) - mean_dyw - xhat * mean_dyw_xhat));
    }
}

// Block [32, 8]: see the header. `partial` is [chunks, 2, c].
template <typename T>
__device__ __forceinline__ void layer_norm_dparams_partial_impl(const T *__restrict__ x, const T *__restrict__ dy,
                                                                const typename KilnFloat<T>::Acc *__restrict__ mean,
                                                                const typename KilnFloat<T>::Acc *__restrict__ rstd,
                                                                typename KilnFloat<T>::Acc *__restrict__ partial,
                                                                unsigned long long rows, unsigned c,
                                                                unsigned long long rows_per_chunk) {
    typedef KilnFloat<T> F;
    typedef typename F::Acc A;
    __shared__ A sw[8][32], sb[8][32];

    const unsigned col = blockIdx.x * 32 + threadIdx.x;
    const unsigned long long first = (unsigned long long)blockIdx.y * rows_per_chunk;
    const unsigned long long end = first + rows_per_chunk < rows ? first + rows_per_chunk : rows;
    A acc_w = (A)0, acc_b = (A)0;
    if (col < c) {
        for (unsigned long long r = first + threadIdx.y; r < end; r += 8) {
            const A g = F::up(dy[r * c + col]);
            acc_w += g * (F::up(x[r * c + col]) - mean[r]) * rstd[r];
            acc_b += g;
        }
    }
    sw[threadIdx.y][threadIdx.x] = acc_w;
    sb[threadIdx.y][threadIdx.x] = acc_b;
    __syncthreads();
    if (threadIdx.y != 0 || col >= c) return;
    for (int k = 1; k < 8; ++k) {
        acc_w += sw[k][threadIdx.x];
        acc_b += sb[k][threadIdx.x];
    }
    partial[(2ull * blockIdx.y) * c + col] = acc_w;
    partial[(2ull * blockIdx.y + 1) * c + col] = acc_b;
}

template <typename T>
__device__ __forceinline__ void layer_norm_dparams_finish_impl(const typename KilnFloat<T>::Acc *__restrict__ partial,
                                                               T *__restrict__ dw, T *__restrict__ db, unsigned chunks,
                                                               unsigned c) {
    typedef KilnFloat<T> F;
    typedef typename F::Acc A;
    for (unsigned long long col = kiln_thread_index(); col < c; col += kiln_thread_count()) {
        A acc_w = (A)0, acc_b = (A)0;
        for (unsigned k = 0; k < chunks; ++k) {
            acc_w += partial[(2ull * k) * c + col];
            acc_b += partial[(2ull * k + 1) * c + col];
        }
        dw[col] = F::down(acc_w);
        db[col] = F::down(acc_b);
    }
}

extern "C" __global__ void layer_norm_forward_f32(const float *x, const float *w, const float *b, float *y, float *mean, float *rstd,
                                          unsigned long long rows, unsigned c, float eps) {
    layer_norm_forward_impl(x, w, b, y, mean, rstd, rows, c, eps);
}

extern "C" __global__ void layer_norm_backward_dx_f32(const float *x, const float *w, const float *dy, const float *mean,
                                              const float *rstd, float *dx, unsigned long long rows, unsigned c) {
    layer_norm_backward_dx_impl(x, w, dy, mean, rstd, dx, rows, c);
}

extern "C" __global__ void layer_norm_dparams_partial_f32(const float *x, const float *dy, const float *mean, const float *rstd,
                                                  float *partial, unsigned long long rows, unsigned c,
                                                  unsigned long long rows_per_chunk) {
    layer_norm_dparams_partial_impl(x, dy, mean, rstd, partial, rows, c, rows_per_chunk);
}

extern "C" __global__ void layer_norm_dparams_finish_f32(const float *partial, float *dw, float *db, unsigned chunks, unsigned c) {
    layer_norm_dparams_finish_impl(partial, dw, db, chunks, c);
}

extern "C" __global__ void layer_norm_forward_f64(const double *x, const double *w, const double *b, double *y, double *mean, double *rstd,
                                          unsigned long long rows, unsigned c, double eps) {
    layer_norm_forward_impl(x, w, b, y, mean, rstd, rows, c, eps);
}

extern "C" __global__ void layer_norm_backward_dx_f64(const double *x, const double *w, const double *dy, const double *mean,
                                              const double *rstd, double *dx, unsigned long long rows, unsigned c) {
    layer_norm_backward_dx_impl(x, w, dy, mean, rstd, dx, rows, c);
}

extern "C" __global__ void layer_norm_dparams_partial_f64(const double *x, const double *dy, const double *mean, const double *rstd,
                                                  double *partial, unsigned long long rows, unsigned c,
                                                  unsigned long long rows_per_chunk) {
    layer_norm_dparams_partial_impl(x, dy, mean, rstd, partial, rows, c, rows_per_chunk);
}

extern "C" __global__ void layer_norm_dparams_finish_f64(const double *partial, double *dw, double *db, unsigned chunks, unsigned c) {
    layer_norm_dparams_finish_impl(partial, dw, db, chunks, c);
}

extern "C" __global__ void layer_norm_forward_bf16(const __nv_bfloat16 *x, const __nv_bfloat16 *w, const __nv_bfloat16 *b, __nv_bfloat16 *y, float *mean, float *rstd,
                                          unsigned long long rows, unsigned c, float eps) {
    layer_norm_forward_impl(x, w, b, y, mean, rstd, rows, c, eps);
}

extern "C" __global__ void layer_norm_backward_dx_bf16(const __nv_bfloat16 *x, const __nv_bfloat16 *w, const __nv_bfloat16 *dy, const float *mean,
                                              const float *rstd, __nv_bfloat16 *dx, unsigned long long rows, unsigned c) {
    layer_norm_backward_dx_impl(x, w, dy, mean, rstd, dx, rows, c);
}

extern "C" __global__ void layer_norm_dparams_partial_bf16(const __nv_bfloat16 *x, const __nv_bfloat16 *dy, const float *mean, const float *rstd,
                                                  float *partial, unsigned long long rows, unsigned c,
                                                  unsigned long long rows_per_chunk) {
    layer_norm_dparams_partial_impl(x, dy, mean, rstd, partial, rows, c, rows_per_chunk);
}

extern "C" __global__ void layer_norm_dparams_finish_bf16(const float *partial, __nv_bfloat16 *dw, __nv_bfloat16 *db, unsigned chunks, unsigned c) {
    layer_norm_dparams_finish_impl(partial, dw, db, chunks, c);
}

extern "C" __global__ void layer_norm_forward_f16(const __half *x, const __half *w, const __half *b, __half *y, float *mean, float *rstd,
                                          unsigned long long rows, unsigned c, float eps) {
    layer_norm_forward_impl(x, w, b, y, mean, rstd, rows, c, eps);
}

extern "C" __global__ void layer_norm_backward_dx_f16(const __half *x, const __half *w, const __half *dy, const float *mean,
                                              const float *rstd, __half *dx, unsigned long long rows, unsigned c) {
    layer_norm_backward_dx_impl(x, w, dy, mean, rstd, dx, rows, c);
}

extern "C" __global__ void layer_norm_dparams_partial_f16(const __half *x, const __half *dy, const float *mean, const float *rstd,
                                                  float *partial, unsigned long long rows, unsigned c,
                                                  unsigned long long rows_per_chunk) {
    layer_norm_dparams_partial_impl(x, dy, mean, rstd, partial, rows, c, rows_per_chunk);
}

extern "C" __global__ void layer_norm_dparams_finish_f16(const float *partial, __half *dw, __half *db, unsigned chunks, unsigned c) {
    layer_norm_dparams_finish_impl(partial, dw, db, chunks, c);
}
