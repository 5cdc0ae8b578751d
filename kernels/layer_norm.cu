// layer_norm.cu — LayerNorm over the last dim of a contiguous [rows, c] tensor, forward and backward,
// with statistics in the accumulation type (f32; f64 for f64), as the CPU backend:
//   forward:  m = sum(x) / c,  d = x - m,  shift = sum(d) / c,  var = sum(d^2) / c - shift^2,
//             rstd = 1 / sqrt(var + eps),  y = (d - shift) * rstd * w + b   (b optional: a null
//             pointer), mean = m + shift and rstd saved per row;
//   backward: xhat = (x - mean) * rstd,  dx = rstd * (dy*w - mean(dy*w) - xhat * mean(dy*w*xhat)),
//             dw = sum over rows of dy*xhat,  db = sum over rows of dy.
// This is the corrected two-pass algorithm (Chan, Golub and LeVeque): sum(d) would be 0 in exact
// arithmetic, but the f32 mean m of a row whose mean is large against its spread carries a rounding
// error that is large against that spread; shift = sum(d) / c measures it (d = x - m is exact where x
// and m are within a factor of 2), so var is the variance about m + shift and y is centred on it.
// Without it, a row of mean 10^4 and spread 1 would be off by ~10^-3 everywhere in f32.
//
// Algorithm. layer_norm_forward and layer_norm_backward_dx are row kernels (kernels/rows.cuh): blockDim.x
// threads per row, blockDim.y rows per block, ceil(rows / blockDim.y) blocks; rows walked in 16-byte
// slots (w and b too, where they share the row's offset from the 16-byte grid). A thread keeps its
// slots of x (and, for dx, of dy) in registers across the passes (rows up to 8192 wide with the Rust
// side's launch), so each is read from memory once: the forward's three passes (sum; centred sums;
// write) read x once, dx's two (two row sums; write) read x and dy once. Wider rows read them again
// per pass. w and b are re-read per pass and per row (c elements, from L1/L2).
// dw and db are reduced over rows in two deterministic stages, without atomics:
//   layer_norm_dparams_partial: grid [ceil(c / (32 p)), chunks], block [32, 8], p = 16 / sizeof(T)
//     columns per thread when c is a multiple of p and x, dy are 16-byte aligned (every row then is),
//     else p = 1 (the host decides: `pack`). Block (s, k) owns 32 p columns and the rows of chunk k;
//     its 8 row lanes sum every 8th row of the chunk (a warp reads 32 p neighbouring columns: 16-byte
//     loads, coalesced), then lane 0 adds the 8 lane sums in order and writes partial[k][0][col] (dw)
//     and partial[k][1][col] (db), in the accumulation type;
//   layer_norm_dparams_finish: one thread per column adds its chunks' partials in chunk order
//     (2 · chunks · c accumulators: small next to x and dy).
// The order of every sum depends only on the shape and the chunk count (chosen from the SM count), so
// a run repeats bit for bit on one device.
// Roofline, per element: forward ~10 FLOPs, 1 read + 1 write of sizeof(T); dx ~12 FLOPs, 2 reads +
// 1 write; dparams ~5 FLOPs, 2 reads (+ 2 * chunks * c partials). All memory bound. Rows over 8192:
// forward 3 reads, dx 4.
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
    typedef typename KilnRow<T>::Slot Slot;
    constexpr int N = KilnRow<T>::N, R = KilnRowKeep<T>::R;
    __shared__ A scratch[64];

    const unsigned long long row = (unsigned long long)blockIdx.x * blockDim.y + threadIdx.y;
    const bool live = row < rows;
    const T *xr = x + (live ? row : 0) * c;
    T *yr = y + (live ? row : 0) * c;
    const KilnRow<T> r = kiln_row(xr, c);
    const bool vy = kiln_row_shares(r, yr), vw = kiln_row_shares(r, w), vb = kiln_row_shares(r, b);
    const bool fits = kiln_row_fits<R>(r);
    auto load = [&](unsigned s) { return kiln_row_load(xr, r, s, true); };

    Slot keep[R];
    A acc = (A)0;
    if (live)
        kiln_row_first(keep, fits, r.slots, load, [&](const Slot &v, unsigned) {
#pragma unroll
            for (int k = 0; k < N; ++k) acc += F::up(v.v[k]); // zero outside the row
        });
    const A mean = kiln_row_sum(acc, scratch) / (A)c;
    A sums[2] = {(A)0, (A)0}; // sum(d), sum(d^2)
    if (live)
        kiln_row_again(keep, fits, r.slots, load, [&](const Slot &v, unsigned s) {
#pragma unroll
            for (int k = 0; k < N; ++k) {
                const A d = kiln_row_has(r, s, k) ? F::up(v.v[k]) - mean : (A)0;
                sums[0] += d;
                sums[1] += d * d;
            }
        });
    kiln_row_sums(sums, scratch);
    const A shift = sums[0] / (A)c, var = sums[1] / (A)c - shift * shift;
    // never below 0 (rounding can take a constant row's var an ulp under; with eps = 0: NaN)
    const A rstd = (A)1 / kiln_sqrt((var > (A)0 ? var : (A)0) + eps);
    if (!live) return;
    if (threadIdx.x == 0) {
        mean_out[row] = mean + shift;
        rstd_out[row] = rstd;
    }
    kiln_row_again(keep, fits, r.slots, load, [&](const Slot &v, unsigned s) {
        const Slot wv = kiln_row_load(w, r, s, vw);
        Slot bv, out;
        if (b) bv = kiln_row_load(b, r, s, vb);
#pragma unroll
        for (int k = 0; k < N; ++k) {
            const A add = b ? F::up(bv.v[k]) : (A)0;
            out.v[k] = F::down((F::up(v.v[k]) - mean - shift) * rstd * F::up(wv.v[k]) + add);
        }
        kiln_row_store(yr, r, s, vy, out);
    });
}

template <typename T> struct LayerNormBackwardSlot {
    typename KilnRow<T>::Slot x, dy;
};

template <typename T>
__device__ __forceinline__ void layer_norm_backward_dx_impl(const T *__restrict__ x, const T *__restrict__ w,
                                                            const T *__restrict__ dy,
                                                            const typename KilnFloat<T>::Acc *__restrict__ mean,
                                                            const typename KilnFloat<T>::Acc *__restrict__ rstd,
                                                            T *__restrict__ dx, unsigned long long rows, unsigned c) {
    typedef KilnFloat<T> F;
    typedef typename F::Acc A;
    typedef LayerNormBackwardSlot<T> Slot;
    constexpr int N = KilnRow<T>::N, R = KilnRowKeep<T>::R;
    __shared__ A scratch[64];

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

    const A m = live ? mean[row] : (A)0, rs = live ? rstd[row] : (A)0;
    Slot keep[R];
    A sums[2] = {(A)0, (A)0}; // sum(dy*w), sum(dy*w*xhat); dy is zero outside the row
    if (live)
        kiln_row_first(keep, fits, r.slots, load, [&](const Slot &v, unsigned s) {
            const typename KilnRow<T>::Slot wv = kiln_row_load(w, r, s, vw);
#pragma unroll
            for (int k = 0; k < N; ++k) {
                const A dyw = F::up(v.dy.v[k]) * F::up(wv.v[k]);
                sums[0] += dyw;
                sums[1] += dyw * (F::up(v.x.v[k]) - m) * rs;
            }
        });
    kiln_row_sums(sums, scratch);
    const A mean_dyw = sums[0] / (A)c, mean_dyw_xhat = sums[1] / (A)c;
    if (!live) return;
    kiln_row_again(keep, fits, r.slots, load, [&](const Slot &v, unsigned s) {
        const typename KilnRow<T>::Slot wv = kiln_row_load(w, r, s, vw);
        typename KilnRow<T>::Slot out;
#pragma unroll
        for (int k = 0; k < N; ++k) {
            const A xhat = (F::up(v.x.v[k]) - m) * rs;
            out.v[k] = F::down(rs * (F::up(v.dy.v[k]) * F::up(wv.v[k]) - mean_dyw - xhat * mean_dyw_xhat));
        }
        kiln_row_store(dr, r, s, vd, out);
    });
}

// Block [32, 8], P columns per thread (P = 16 / sizeof(T) or 1): see the header. `partial` is
// [chunks, 2, c].
template <int P, typename T>
__device__ __forceinline__ void layer_norm_dparams_partial_body(const T *__restrict__ x, const T *__restrict__ dy,
                                                                const typename KilnFloat<T>::Acc *__restrict__ mean,
                                                                const typename KilnFloat<T>::Acc *__restrict__ rstd,
                                                                typename KilnFloat<T>::Acc *__restrict__ partial,
                                                                typename KilnFloat<T>::Acc *sw,
                                                                typename KilnFloat<T>::Acc *sb,
                                                                unsigned long long rows, unsigned c,
                                                                unsigned long long rows_per_chunk) {
    typedef KilnFloat<T> F;
    typedef typename F::Acc A;
    typedef KilnPack<T, P> Pack;
    // with P > 1, c is a multiple of P: a thread's columns are all inside or all outside
    const unsigned col = (blockIdx.x * 32 + threadIdx.x) * P;
    const unsigned long long first = (unsigned long long)blockIdx.y * rows_per_chunk;
    const unsigned long long end = first + rows_per_chunk < rows ? first + rows_per_chunk : rows;
    A acc_w[P], acc_b[P];
#pragma unroll
    for (int k = 0; k < P; ++k) acc_w[k] = acc_b[k] = (A)0;
    if (col < c) {
        for (unsigned long long r = first + threadIdx.y; r < end; r += 8) {
            const Pack g = *reinterpret_cast<const Pack *>(dy + r * c + col);
            const Pack v = *reinterpret_cast<const Pack *>(x + r * c + col);
            const A m = mean[r], rs = rstd[r];
#pragma unroll
            for (int k = 0; k < P; ++k) {
                acc_w[k] += F::up(g.v[k]) * (F::up(v.v[k]) - m) * rs;
                acc_b[k] += F::up(g.v[k]);
            }
        }
    }
    const unsigned lane = threadIdx.x * P; // this thread's first column in the block's 32 P
#pragma unroll
    for (int k = 0; k < P; ++k) {
        sw[threadIdx.y * 32 * P + lane + k] = acc_w[k];
        sb[threadIdx.y * 32 * P + lane + k] = acc_b[k];
    }
    __syncthreads();
    if (threadIdx.y != 0 || col >= c) return;
#pragma unroll
    for (int k = 0; k < P; ++k) {
        for (int l = 1; l < 8; ++l) {
            acc_w[k] += sw[l * 32 * P + lane + k];
            acc_b[k] += sb[l * 32 * P + lane + k];
        }
        partial[(2ull * blockIdx.y) * c + col + k] = acc_w[k];
        partial[(2ull * blockIdx.y + 1) * c + col + k] = acc_b[k];
    }
}

template <typename T>
__device__ __forceinline__ void layer_norm_dparams_partial_impl(const T *__restrict__ x, const T *__restrict__ dy,
                                                                const typename KilnFloat<T>::Acc *__restrict__ mean,
                                                                const typename KilnFloat<T>::Acc *__restrict__ rstd,
                                                                typename KilnFloat<T>::Acc *__restrict__ partial,
                                                                unsigned long long rows, unsigned c,
                                                                unsigned long long rows_per_chunk, unsigned pack) {
    typedef typename KilnFloat<T>::Acc A;
    constexpr int N = 16 / sizeof(T);
    __shared__ A sw[8 * 32 * N], sb[8 * 32 * N];
    if (pack == N)
        layer_norm_dparams_partial_body<N>(x, dy, mean, rstd, partial, sw, sb, rows, c, rows_per_chunk);
    else
        layer_norm_dparams_partial_body<1>(x, dy, mean, rstd, partial, sw, sb, rows, c, rows_per_chunk);
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

// Entry points, one per dtype; A is the type of the statistics and partial sums (KILN_ENTRY, common.cuh).
#define LAYER_NORM_FORWARD_KERNEL(T, A)                                                                                \
    (const T *x, const T *w, const T *b, T *y, A *mean, A *rstd, unsigned long long rows, unsigned c, A eps) {         \
        layer_norm_forward_impl(x, w, b, y, mean, rstd, rows, c, eps);                                                 \
    }
#define LAYER_NORM_BACKWARD_DX_KERNEL(T, A)                                                                            \
    (const T *x, const T *w, const T *dy, const A *mean, const A *rstd, T *dx, unsigned long long rows, unsigned c) {  \
        layer_norm_backward_dx_impl(x, w, dy, mean, rstd, dx, rows, c);                                                \
    }
#define LAYER_NORM_DPARAMS_PARTIAL_KERNEL(T, A)                                                                        \
    (const T *x, const T *dy, const A *mean, const A *rstd, A *partial, unsigned long long rows, unsigned c,           \
     unsigned long long rows_per_chunk, unsigned pack) {                                                               \
        layer_norm_dparams_partial_impl(x, dy, mean, rstd, partial, rows, c, rows_per_chunk, pack);                    \
    }
#define LAYER_NORM_DPARAMS_FINISH_KERNEL(T, A)                                                                         \
    (const A *partial, T *dw, T *db, unsigned chunks, unsigned c) {                                                    \
        layer_norm_dparams_finish_impl(partial, dw, db, chunks, c);                                                    \
    }

KILN_ENTRY(layer_norm_forward_f32, LAYER_NORM_FORWARD_KERNEL, float, float)
KILN_ENTRY(layer_norm_backward_dx_f32, LAYER_NORM_BACKWARD_DX_KERNEL, float, float)
KILN_ENTRY(layer_norm_dparams_partial_f32, LAYER_NORM_DPARAMS_PARTIAL_KERNEL, float, float)
KILN_ENTRY(layer_norm_dparams_finish_f32, LAYER_NORM_DPARAMS_FINISH_KERNEL, float, float)

KILN_ENTRY(layer_norm_forward_f64, LAYER_NORM_FORWARD_KERNEL, double, double)
KILN_ENTRY(layer_norm_backward_dx_f64, LAYER_NORM_BACKWARD_DX_KERNEL, double, double)
KILN_ENTRY(layer_norm_dparams_partial_f64, LAYER_NORM_DPARAMS_PARTIAL_KERNEL, double, double)
KILN_ENTRY(layer_norm_dparams_finish_f64, LAYER_NORM_DPARAMS_FINISH_KERNEL, double, double)

KILN_ENTRY(layer_norm_forward_bf16, LAYER_NORM_FORWARD_KERNEL, __nv_bfloat16, float)
KILN_ENTRY(layer_norm_backward_dx_bf16, LAYER_NORM_BACKWARD_DX_KERNEL, __nv_bfloat16, float)
KILN_ENTRY(layer_norm_dparams_partial_bf16, LAYER_NORM_DPARAMS_PARTIAL_KERNEL, __nv_bfloat16, float)
KILN_ENTRY(layer_norm_dparams_finish_bf16, LAYER_NORM_DPARAMS_FINISH_KERNEL, __nv_bfloat16, float)

KILN_ENTRY(layer_norm_forward_f16, LAYER_NORM_FORWARD_KERNEL, __half, float)
KILN_ENTRY(layer_norm_backward_dx_f16, LAYER_NORM_BACKWARD_DX_KERNEL, __half, float)
KILN_ENTRY(layer_norm_dparams_partial_f16, LAYER_NORM_DPARAMS_PARTIAL_KERNEL, __half, float)
KILN_ENTRY(layer_norm_dparams_finish_f16, LAYER_NORM_DPARAMS_FINISH_KERNEL, __half, float)
