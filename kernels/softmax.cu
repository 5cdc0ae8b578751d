// softmax.cu — softmax and log-softmax over the last dim of a contiguous [rows, width] tensor, and
// their backward (softmax_backward_<dtype>, below the forward).
//   softmax:     y = exp(x - m) / s            log_softmax: y = x - m - log(s)
// with m the row max and s = sum exp(x - m). A row that is entirely -inf has no probability mass:
// softmax gives 0 and log_softmax -inf (as the CPU backend; PyTorch gives NaN).
//
// Algorithm: one pass over the row keeps a running (max, sum) pair per thread (the "online softmax"
// rescaling: when the max grows, the sum so far is multiplied by exp(old - new)); the pairs combine
// with a warp butterfly, then across the row's warps through shared memory; a second pass writes y.
// The row is walked in 16-byte slots (kernels/rows.cuh: 16-byte loads and stores for every slot but a
// misaligned row's first and last), and a thread keeps its slots in registers between the passes when
// the row fits (8 elements per thread: rows up to 8192 with the launch below), so x is read from memory
// once; wider rows read it twice. Accumulation in f32 (f64 for f64).
// Launch: a 2-D block of blockDim.x threads per row (32..1024, a power of two, about width / 8) and
// blockDim.y rows per block (blockDim.x * blockDim.y = 256 for narrow rows); ceil(rows / blockDim.y)
// blocks.
// Roofline: ~5 FLOPs (two exps) per element; 1 read + 1 write = 2 * sizeof(T) bytes per element (3 for
// rows over 8192).
#include "rows.cuh"

template <typename T>
__device__ __forceinline__ void softmax_impl(const T *__restrict__ x, T *__restrict__ y, unsigned long long rows,
                                             unsigned width, int want_log) {
    typedef KilnFloat<T> F;
    typedef typename F::Acc A;
    typedef typename KilnRow<T>::Slot Slot;
    constexpr int N = KilnRow<T>::N, R = KilnRowKeep<T>::R;
    __shared__ A sm_m[32], sm_s[32];

    const unsigned long long row = (unsigned long long)blockIdx.x * blockDim.y + threadIdx.y;
    const bool live = row < rows;
    const T *xr = x + (live ? row : 0) * width;
    T *yr = y + (live ? row : 0) * width;
    const KilnRow<T> r = kiln_row(xr, width);
    const bool vy = kiln_row_shares(r, yr), fits = kiln_row_fits<R>(r);
    auto load = [&](unsigned s) { return kiln_row_load(xr, r, s, true); };

    Slot keep[R];
    A m = -kiln_inf<A>(), s = (A)0;
    if (live)
        kiln_row_first(keep, fits, r.slots, load, [&](const Slot &v, unsigned slot) {
#pragma unroll
            for (int k = 0; k < N; ++k)
                if (kiln_row_has(r, slot, k)) kiln_online_add(m, s, F::up(v.v[k]));
        });
    kiln_row_max_sum(m, s, sm_m, sm_s);
    if (!live) return;

    const bool masked = m == -kiln_inf<A>();
    const A inv = (A)1 / s, lse = m + kiln_log(s);
    kiln_row_again(keep, fits, r.slots, load, [&](const Slot &v, unsigned slot) {
        Slot out;
#pragma unroll
        for (int k = 0; k < N; ++k) {
            const A u = F::up(v.v[k]);
            out.v[k] = F::down(masked ? (want_log ? -kiln_inf<A>() : (A)0) : (want_log ? u - lse : kiln_exp(u - m) * inv));
        }
        kiln_row_store(yr, r, slot, vy, out);
    });
}

// The backward of both, from the forward's output y and the incoming gradient dy:
//   softmax:     dx = y * (dy - sum(y * dy))      log_softmax: dx = dy - exp(y) * sum(dy)
// Same launch shape and slots as the forward; the row sum combines like the forward's (max, sum), then
// dx is written from the (y, dy) slots kept in registers (rows up to 8192; wider rows read y and dy
// again). Roofline: ~3 FLOPs per element (plus one exp for log_softmax); 2 reads + 1 write =
// 3 * sizeof(T) bytes per element (5 for rows over 8192).
template <typename T> struct SoftmaxBackwardSlot {
    typename KilnRow<T>::Slot y, dy;
};

template <typename T>
__device__ __forceinline__ void softmax_backward_impl(const T *__restrict__ y, const T *__restrict__ dy,
                                                      T *__restrict__ dx, unsigned long long rows, unsigned width,
                                                      int want_log) {
    typedef KilnFloat<T> F;
    typedef typename F::Acc A;
    typedef SoftmaxBackwardSlot<T> Slot;
    constexpr int N = KilnRow<T>::N, R = KilnRowKeep<T>::R;
    __shared__ A scratch[32];

    const unsigned long long row = (unsigned long long)blockIdx.x * blockDim.y + threadIdx.y;
    const bool live = row < rows;
    const unsigned long long base = (live ? row : 0) * width;
    const T *yr = y + base, *gr = dy + base;
    T *dr = dx + base;
    const KilnRow<T> r = kiln_row(yr, width);
    const bool vg = kiln_row_shares(r, gr), vd = kiln_row_shares(r, dr), fits = kiln_row_fits<R>(r);
    auto load = [&](unsigned s) {
        Slot v;
        v.y = kiln_row_load(yr, r, s, true);
        v.dy = kiln_row_load(gr, r, s, vg);
        return v;
    };

    Slot keep[R];
    A acc = (A)0;
    if (live)
        kiln_row_first(keep, fits, r.slots, load, [&](const Slot &v, unsigned) {
            // the zeros outside the row add nothing
#pragma unroll
            for (int k = 0; k < N; ++k) acc += want_log ? F::up(v.dy.v[k]) : F::up(v.y.v[k]) * F::up(v.dy.v[k]);
        });
    const A sum = kiln_row_sum(acc, scratch);
    if (!live) return;
    kiln_row_again(keep, fits, r.slots, load, [&](const Slot &v, unsigned slot) {
        typename KilnRow<T>::Slot out;
#pragma unroll
        for (int k = 0; k < N; ++k) {
            const A u = F::up(v.y.v[k]), g = F::up(v.dy.v[k]);
            out.v[k] = F::down(want_log ? g - kiln_exp(u) * sum : u * (g - sum));
        }
        kiln_row_store(dr, r, slot, vd, out);
    });
}

// Entry points, one per dtype (KILN_ENTRY, common.cuh).
#define SOFTMAX_KERNEL(T)                                                                                              \
    (const T *x, T *y, unsigned long long rows, unsigned width, int want_log) {                                        \
        softmax_impl(x, y, rows, width, want_log);                                                                     \
    }
#define SOFTMAX_BACKWARD_KERNEL(T)                                                                                     \
    (const T *y, const T *dy, T *dx, unsigned long long rows, unsigned width, int want_log) {                          \
        softmax_backward_impl(y, dy, dx, rows, width, want_log);                                                       \
    }

KILN_ENTRY(softmax_f32, SOFTMAX_KERNEL, float)
KILN_ENTRY(softmax_f64, SOFTMAX_KERNEL, double)
KILN_ENTRY(softmax_bf16, SOFTMAX_KERNEL, __nv_bfloat16)
KILN_ENTRY(softmax_f16, SOFTMAX_KERNEL, __half)

KILN_ENTRY(softmax_backward_f32, SOFTMAX_BACKWARD_KERNEL, float)
KILN_ENTRY(softmax_backward_f64, SOFTMAX_BACKWARD_KERNEL, double)
KILN_ENTRY(softmax_backward_bf16, SOFTMAX_BACKWARD_KERNEL, __nv_bfloat16)
KILN_ENTRY(softmax_backward_f16, SOFTMAX_BACKWARD_KERNEL, __half)
