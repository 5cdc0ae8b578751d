// rms_norm.cu — RMSNorm (Llama's normalisation) over the last dim of a contiguous [rows, c] tensor,
// forward and backward, with the statistic in the accumulation type (f32; f64 for f64), as the CPU
// backend (src/backend/cpu/rms_norm.rs):
//   forward:  rstd = 1 / sqrt(sum(x^2) / c + eps),  y = x * rstd * w,  rstd saved per row;
//   backward: xhat = x * rstd,  dx = rstd * (dy*w - xhat * mean(dy*w*xhat)),  dw = sum over rows of dy*xhat.
// Unlike layer_norm there is no mean to take out, so one pass computes the statistic (no
// cancellation: a sum of squares).
//
// Algorithm. rms_norm_forward and rms_norm_backward_dx are row kernels (kernels/rows.cuh, the launch
// of layer_norm): blockDim.x threads per row, blockDim.y rows per block, ceil(rows / blockDim.y)
// blocks; rows walked in 16-byte slots, which a thread keeps in registers between the two passes
// (rows up to 8192 wide with the Rust side's launch), so x (and dy) are read from memory once.
// dw is reduced over rows in two deterministic stages, without atomics:
//   rms_norm_dweight_partial: grid [ceil(c / (32 p)), chunks], block [32, 8], p = 16 / sizeof(T) columns
//     per thread when c is a multiple of p and x, dy are 16-byte aligned, else 1 (the host's `pack`).
//     Block (s, k) owns 32 p columns and the rows of chunk k; its 8 row lanes sum every 8th row of the
//     chunk, then lane 0 adds the 8 lane sums in order and writes partial[k][col];
//   rms_norm_dweight_finish: one thread per column adds its chunks' partials in chunk order.
// The order of every sum depends only on the shape and the chunk count, so a run repeats bit for bit.
// Roofline, per element: forward ~4 FLOPs, 1 read + 1 write of sizeof(T); dx ~6 FLOPs, 2 reads + 1
// write; dweight ~3 FLOPs, 2 reads (+ chunks * c partials). All memory bound.
#include "rows.cuh"

template <typename T>
__device__ __forceinline__ void rms_norm_forward_impl(const T *__restrict__ x, const T *__restrict__ w,
                                                      T *__restrict__ y,
                                                      typename KilnFloat<T>::Acc *__restrict__ rstd_out,
                                                      unsigned long long rows, unsigned c,
                                                      typename KilnFloat<T>::Acc eps) {
    typedef KilnFloat<T> F;
    typedef typename F::Acc A;
    typedef typename KilnRow<T>::Slot Slot;
    constexpr int N = KilnRow<T>::N, R = KilnRowKeep<T>::R;
    __shared__ A scratch[32];

    const unsigned long long row = (unsigned long long)blockIdx.x * blockDim.y + threadIdx.y;
    const bool live = row < rows;
    const T *xr = x + (live ? row : 0) * c;
    T *yr = y + (live ? row : 0) * c;
    const KilnRow<T> r = kiln_row(xr, c);
    const bool vy = kiln_row_shares(r, yr), vw = kiln_row_shares(r, w);
    const bool fits = kiln_row_fits<R>(r);
    auto load = [&](unsigned s) { return kiln_row_load(xr, r, s, true); };

    Slot keep[R];
    A acc = (A)0;
    if (live)
        kiln_row_first(keep, fits, r.slots, load, [&](const Slot &v, unsigned) {
#pragma unroll
            for (int k = 0; k < N; ++k) acc += F::up(v.v[k]) * F::up(v.v[k]); // zero outside the row
        });
    const A rstd = (A)1 / kiln_sqrt(kiln_row_sum(acc, scratch) / (A)c + eps);
    if (!live) return;
    if (threadIdx.x == 0) rstd_out[row] = rstd;
    kiln_row_again(keep, fits, r.slots, load, [&](const Slot &v, unsigned s) {
        const Slot wv = kiln_row_load(w, r, s, vw);
        Slot out;
#pragma unroll
        for (int k = 0; k < N; ++k) out.v[k] = F::down(F::up(v.v[k]) * rstd * F::up(wv.v[k]));
        kiln_row_store(yr, r, s, vy, out);
    });
}

template <typename T> struct RmsNormBackwardSlot {
    typename KilnRow<T>::Slot x, dy;
};

template <typename T>
__device__ __forceinline__ void rms_norm_backward_dx_impl(const T *__restrict__ x, const T *__restrict__ w,
                                                          const T *__restrict__ dy,
                                                          const typename KilnFloat<T>::Acc *__restrict__ rstd,
                                                          T *__restrict__ dx, unsigned long long rows, unsigned c) {
    typedef KilnFloat<T> F;
    typedef typename F::Acc A;
    typedef RmsNormBackwardSlot<T> Slot;
    constexpr int N = KilnRow<T>::N, R = KilnRowKeep<T>::R;
    __shared__ A scratch[32];

    const unsigned long long row = (unsigned long long)blockIdx.x * blockDim.y + threadIdx.y;
    const bool live = row < rows;
    const unsigned long long base = (live ? row : 0) * c;
    const T *xr = x + base, *gr = dy + base;
    T *dr = dx + base;
    const KilnRow<T> r = kiln_row(xr, c);
    const bool vg = kiln_row_shares(r, gr), vd = kiln_row_shares(r, dr), vw = kiln_row_shares(r, w);
    const bool fits = kiln_row_fits<R>(r);
    auto load = [&](unsigned s) {
        Slot v;
        v.x = kiln_row_load(xr, r, s, true);
        v.dy = kiln_row_load(gr, r, s, vg);
        return v;
    };

    const A rs = live ? rstd[row] : (A)0;
    Slot keep[R];
    A acc = (A)0; // sum(dy*w*xhat); dy is zero outside the row
    if (live)
        kiln_row_first(keep, fits, r.slots, load, [&](const Slot &v, unsigned s) {
            const typename KilnRow<T>::Slot wv = kiln_row_load(w, r, s, vw);
#pragma unroll
            for (int k = 0; k < N; ++k) acc += F::up(v.dy.v[k]) * F::up(wv.v[k]) * F::up(v.x.v[k]) * rs;
        });
    const A mean_dyw_xhat = kiln_row_sum(acc, scratch) / (A)c;
    if (!live) return;
    kiln_row_again(keep, fits, r.slots, load, [&](const Slot &v, unsigned s) {
        const typename KilnRow<T>::Slot wv = kiln_row_load(w, r, s, vw);
        typename KilnRow<T>::Slot out;
#pragma unroll
        for (int k = 0; k < N; ++k) {
            const A xhat = F::up(v.x.v[k]) * rs;
            out.v[k] = F::down(rs * (F::up(v.dy.v[k]) * F::up(wv.v[k]) - xhat * mean_dyw_xhat));
        }
        kiln_row_store(dr, r, s, vd, out);
    });
}

// Block [32, 8], P columns per thread (P = 16 / sizeof(T) or 1): see the header. `partial` is [chunks, c].
template <int P, typename T>
__device__ __forceinline__ void rms_norm_dweight_partial_body(const T *__restrict__ x, const T *__restrict__ dy,
                                                              const typename KilnFloat<T>::Acc *__restrict__ rstd,
                                                              typename KilnFloat<T>::Acc *__restrict__ partial,
                                                              typename KilnFloat<T>::Acc *sw, unsigned long long rows,
                                                              unsigned c, unsigned long long rows_per_chunk) {
    typedef KilnFloat<T> F;
    typedef typename F::Acc A;
    typedef KilnPack<T, P> Pack;
    // with P > 1, c is a multiple of P: a thread's columns are all inside or all outside
    const unsigned col = (blockIdx.x * 32 + threadIdx.x) * P;
    const unsigned long long first = (unsigned long long)blockIdx.y * rows_per_chunk;
    const unsigned long long end = first + rows_per_chunk < rows ? first + rows_per_chunk : rows;
    A acc[P];
#pragma unroll
    for (int k = 0; k < P; ++k) acc[k] = (A)0;
    if (col < c) {
        for (unsigned long long r = first + threadIdx.y; r < end; r += 8) {
            const Pack g = *reinterpret_cast<const Pack *>(dy + r * c + col);
            const Pack v = *reinterpret_cast<const Pack *>(x + r * c + col);
            const A rs = rstd[r];
#pragma unroll
            for (int k = 0; k < P; ++k) acc[k] += F::up(g.v[k]) * F::up(v.v[k]) * rs;
        }
    }
    const unsigned lane = threadIdx.x * P; // this thread's first column in the block's 32 P
#pragma unroll
    for (int k = 0; k < P; ++k) sw[threadIdx.y * 32 * P + lane + k] = acc[k];
    __syncthreads();
    if (threadIdx.y != 0 || col >= c) return;
#pragma unroll
    for (int k = 0; k < P; ++k) {
        for (int l = 1; l < 8; ++l) acc[k] += sw[l * 32 * P + lane + k];
        partial[(unsigned long long)blockIdx.y * c + col + k] = acc[k];
    }
}

template <typename T>
__device__ __forceinline__ void rms_norm_dweight_partial_impl(const T *__restrict__ x, const T *__restrict__ dy,
                                                              const typename KilnFloat<T>::Acc *__restrict__ rstd,
                                                              typename KilnFloat<T>::Acc *__restrict__ partial,
                                                              unsigned long long rows, unsigned c,
                                                              unsigned long long rows_per_chunk, unsigned pack) {
    typedef typename KilnFloat<T>::Acc A;
    constexpr int N = 16 / sizeof(T);
    __shared__ A sw[8 * 32 * N];
    if (pack == N)
        rms_norm_dweight_partial_body<N>(x, dy, rstd, partial, sw, rows, c, rows_per_chunk);
    else
        rms_norm_dweight_partial_body<1>(x, dy, rstd, partial, sw, rows, c, rows_per_chunk);
}

template <typename T>
__device__ __forceinline__ void rms_norm_dweight_finish_impl(const typename KilnFloat<T>::Acc *__restrict__ partial,
                                                             T *__restrict__ dw, unsigned chunks, unsigned c) {
    typedef KilnFloat<T> F;
    typedef typename F::Acc A;
    for (unsigned long long col = kiln_thread_index(); col < c; col += kiln_thread_count()) {
        A acc = (A)0;
        for (unsigned k = 0; k < chunks; ++k) acc += partial[(unsigned long long)k * c + col];
        dw[col] = F::down(acc);
    }
}

// Entry points, one per dtype (KILN_ENTRY, common.cuh); A is the statistics type (f32, f64 for f64).
#define RMS_NORM_FORWARD_KERNEL(T, A)                                                                                  \
    (const T *x, const T *w, T *y, A *rstd, unsigned long long rows, unsigned c, A eps) {                              \
        rms_norm_forward_impl(x, w, y, rstd, rows, c, eps);                                                            \
    }
#define RMS_NORM_BACKWARD_DX_KERNEL(T, A)                                                                              \
    (const T *x, const T *w, const T *dy, const A *rstd, T *dx, unsigned long long rows, unsigned c) {                 \
        rms_norm_backward_dx_impl(x, w, dy, rstd, dx, rows, c);                                                        \
    }
#define RMS_NORM_DWEIGHT_PARTIAL_KERNEL(T, A)                                                                          \
    (const T *x, const T *dy, const A *rstd, A *partial, unsigned long long rows, unsigned c,                          \
     unsigned long long rows_per_chunk, unsigned pack) {                                                               \
        rms_norm_dweight_partial_impl(x, dy, rstd, partial, rows, c, rows_per_chunk, pack);                            \
    }
#define RMS_NORM_DWEIGHT_FINISH_KERNEL(T, A)                                                                           \
    (const A *partial, T *dw, unsigned chunks, unsigned c) { rms_norm_dweight_finish_impl(partial, dw, chunks, c); }

KILN_ENTRY(rms_norm_forward_f32, RMS_NORM_FORWARD_KERNEL, float, float)
KILN_ENTRY(rms_norm_backward_dx_f32, RMS_NORM_BACKWARD_DX_KERNEL, float, float)
KILN_ENTRY(rms_norm_dweight_partial_f32, RMS_NORM_DWEIGHT_PARTIAL_KERNEL, float, float)
KILN_ENTRY(rms_norm_dweight_finish_f32, RMS_NORM_DWEIGHT_FINISH_KERNEL, float, float)

KILN_ENTRY(rms_norm_forward_f64, RMS_NORM_FORWARD_KERNEL, double, double)
KILN_ENTRY(rms_norm_backward_dx_f64, RMS_NORM_BACKWARD_DX_KERNEL, double, double)
KILN_ENTRY(rms_norm_dweight_partial_f64, RMS_NORM_DWEIGHT_PARTIAL_KERNEL, double, double)
KILN_ENTRY(rms_norm_dweight_finish_f64, RMS_NORM_DWEIGHT_FINISH_KERNEL, double, double)

KILN_ENTRY(rms_norm_forward_bf16, RMS_NORM_FORWARD_KERNEL, __nv_bfloat16, float)
KILN_ENTRY(rms_norm_backward_dx_bf16, RMS_NORM_BACKWARD_DX_KERNEL, __nv_bfloat16, float)
KILN_ENTRY(rms_norm_dweight_partial_bf16, RMS_NORM_DWEIGHT_PARTIAL_KERNEL, __nv_bfloat16, float)
KILN_ENTRY(rms_norm_dweight_finish_bf16, RMS_NORM_DWEIGHT_FINISH_KERNEL, __nv_bfloat16, float)

KILN_ENTRY(rms_norm_forward_f16, RMS_NORM_FORWARD_KERNEL, __half, float)
KILN_ENTRY(rms_norm_backward_dx_f16, RMS_NORM_BACKWARD_DX_KERNEL, __half, float)
KILN_ENTRY(rms_norm_dweight_partial_f16, RMS_NORM_DWEIGHT_PARTIAL_KERNEL, __half, float)
KILN_ENTRY(rms_norm_dweight_finish_f16, RMS_NORM_DWEIGHT_FINISH_KERNEL, __half, float)
