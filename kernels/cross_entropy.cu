// cross_entropy.cu — cross-entropy from logits, fused: per-row log-sum-exp, the mean loss, and the
// gradient written directly, so no probability tensor is ever kept. Logits are a contiguous [rows, c]
// tensor, targets u32 [rows] (checked by the host); a row whose target equals `ignore` (a value above
// any u32 when none is ignored) counts for nothing. With lse = log sum_j exp(x_j):
//   cross_entropy_forward:  lse[row] and loss_rows[row] = lse - x[target] (0 for ignored rows);
//   cross_entropy_mean:     loss = sum(loss_rows) / count, one block, a fixed summation order (one kernel
//                           per accumulation type);
//   cross_entropy_backward: dx = (exp(x - lse) - onehot(target)) * g / count (0 for ignored rows),
//                           g the loss's incoming gradient (a device scalar: nothing goes to the host).
// Accumulation in f32 (f64 for f64). lse, loss_rows, the loss and g are in that type: bf16/f16 logits
// give an f32 loss (rounding it to 8 or 11 bits would blur what training logs and compares).
// Algorithm: forward and backward are row kernels (kernels/rows.cuh: blockDim.x threads per row,
// blockDim.y rows per block, rows walked in 16-byte slots): the forward reads the row once, keeping
// the online (max, sum) pair, plus x[target]; the backward reads it once more and writes dx. The mean
// is one block of 256 threads.
// Roofline, per logit: forward ~5 FLOPs (one exp), sizeof(T) read; backward ~5 FLOPs, one read and
// one write of sizeof(T). Memory bound: a GPT-2 loss (8K rows of 50257) moves ~0.8 GB (f32) per step.
#include "rows.cuh"

template <typename T>
__device__ __forceinline__ void cross_entropy_forward_impl(const T *__restrict__ x, const unsigned *__restrict__ targets,
                                                           typename KilnFloat<T>::Acc *__restrict__ lse,
                                                           typename KilnFloat<T>::Acc *__restrict__ loss_rows,
                                                           unsigned long long rows, unsigned c,
                                                           unsigned long long ignore) {
    typedef KilnFloat<T> F;
    typedef typename F::Acc A;
    typedef typename KilnRow<T>::Slot Slot;
    constexpr int N = KilnRow<T>::N;
    __shared__ A sm_m[32], sm_s[32];

    const unsigned long long row = (unsigned long long)blockIdx.x * blockDim.y + threadIdx.y;
    const bool live = row < rows;
    const T *xr = x + (live ? row : 0) * c;
    const KilnRow<T> r = kiln_row(xr, c);
    A m = -kiln_inf<A>(), s = (A)0;
    if (live)
        kiln_row_walk(
            r.slots, [&](unsigned slot) { return kiln_row_load(xr, r, slot, true); },
            [&](const Slot &v, unsigned slot) {
#pragma unroll
                for (int k = 0; k < N; ++k)
                    if (kiln_row_has(r, slot, k)) kiln_online_add(m, s, F::up(v.v[k]));
            });
    kiln_row_max_sum(m, s, sm_m, sm_s);
    if (!live || threadIdx.x != 0) return;
    const A l = m + kiln_log(s);
    const unsigned t = targets[row];
    lse[row] = l;
    loss_rows[row] = t == ignore ? (A)0 : l - F::up(xr[t]);
}

// One block of blockDim.x threads (blockDim.y = 1). A is the accumulation type: the mean of bf16 or f16
// logits' rows is cross_entropy_mean_f32.
template <typename A>
__device__ __forceinline__ void cross_entropy_mean_impl(const A *__restrict__ loss_rows, A *__restrict__ loss,
                                                        unsigned long long rows, A count) {
    __shared__ A scratch[32];
    A acc = (A)0;
    for (unsigned long long r = threadIdx.x; r < rows; r += blockDim.x) acc += loss_rows[r];
    acc = kiln_row_sum(acc, scratch);
    if (threadIdx.x == 0) loss[0] = acc / count;
}

template <typename T>
__device__ __forceinline__ void cross_entropy_backward_impl(const T *__restrict__ x, const unsigned *__restrict__ targets,
                                                            const typename KilnFloat<T>::Acc *__restrict__ lse,
                                                            const typename KilnFloat<T>::Acc *__restrict__ g,
                                                            T *__restrict__ dx,
                                                            unsigned long long rows, unsigned c,
                                                            unsigned long long ignore,
                                                            typename KilnFloat<T>::Acc count) {
    typedef KilnFloat<T> F;
    typedef typename F::Acc A;
    typedef typename KilnRow<T>::Slot Slot;
    constexpr int N = KilnRow<T>::N;
    const unsigned long long row = (unsigned long long)blockIdx.x * blockDim.y + threadIdx.y;
    if (row >= rows) return;
    const unsigned t = targets[row];
    const T *xr = x + row * c;
    T *dr = dx + row * c;
    const KilnRow<T> r = kiln_row(xr, c);
    const bool vd = kiln_row_shares(r, dr);
    if (t == ignore) { // its gradient is 0 everywhere, and its logits are not read
        Slot zero;
#pragma unroll
        for (int k = 0; k < N; ++k) zero.v[k] = F::down((A)0);
        for (unsigned slot = threadIdx.x; slot < r.slots; slot += blockDim.x) kiln_row_store(dr, r, slot, vd, zero);
        return;
    }
    const A l = lse[row], scale = g[0] / count;
    kiln_row_walk(
        r.slots, [&](unsigned slot) { return kiln_row_load(xr, r, slot, true); },
        [&](const Slot &v, unsigned slot) {
            Slot out;
#pragma unroll
            for (int k = 0; k < N; ++k) {
                const A onehot = kiln_row_index(r, slot, k) == (long long)t ? (A)1 : (A)0;
                out.v[k] = F::down((kiln_exp(F::up(v.v[k]) - l) - onehot) * scale);
            }
            kiln_row_store(dr, r, slot, vd, out);
        });
}

// Entry points, one per dtype; A is the accumulation type of lse and the loss (KILN_ENTRY, common.cuh).
#define CROSS_ENTROPY_FORWARD_KERNEL(T, A)                                                                             \
    (const T *x, const unsigned *targets, A *lse, A *loss_rows, unsigned long long rows, unsigned c,                   \
     unsigned long long ignore) {                                                                                      \
        cross_entropy_forward_impl(x, targets, lse, loss_rows, rows, c, ignore);                                       \
    }
#define CROSS_ENTROPY_MEAN_KERNEL(A)                                                                                   \
    (const A *loss_rows, A *loss, unsigned long long rows, A count) {                                                  \
        cross_entropy_mean_impl(loss_rows, loss, rows, count);                                                         \
    }
#define CROSS_ENTROPY_BACKWARD_KERNEL(T, A)                                                                            \
    (const T *x, const unsigned *targets, const A *lse, const A *g, T *dx, unsigned long long rows, unsigned c,        \
     unsigned long long ignore, A count) {                                                                             \
        cross_entropy_backward_impl(x, targets, lse, g, dx, rows, c, ignore, count);                                   \
    }

KILN_ENTRY(cross_entropy_forward_f32, CROSS_ENTROPY_FORWARD_KERNEL, float, float)
KILN_ENTRY(cross_entropy_forward_f64, CROSS_ENTROPY_FORWARD_KERNEL, double, double)
KILN_ENTRY(cross_entropy_forward_bf16, CROSS_ENTROPY_FORWARD_KERNEL, __nv_bfloat16, float)
KILN_ENTRY(cross_entropy_forward_f16, CROSS_ENTROPY_FORWARD_KERNEL, __half, float)

KILN_ENTRY(cross_entropy_mean_f32, CROSS_ENTROPY_MEAN_KERNEL, float)
KILN_ENTRY(cross_entropy_mean_f64, CROSS_ENTROPY_MEAN_KERNEL, double)

KILN_ENTRY(cross_entropy_backward_f32, CROSS_ENTROPY_BACKWARD_KERNEL, float, float)
KILN_ENTRY(cross_entropy_backward_f64, CROSS_ENTROPY_BACKWARD_KERNEL, double, double)
KILN_ENTRY(cross_entropy_backward_bf16, CROSS_ENTROPY_BACKWARD_KERNEL, __nv_bfloat16, float)
KILN_ENTRY(cross_entropy_backward_f16, CROSS_ENTROPY_BACKWARD_KERNEL, __half, float)
