// reduce.cu — sum, max and min over any set of dims. The host splits the input view into an outer
// view (the kept dims, one entry per output) and an inner view (the reduced dims, offsets relative to
// the outer entry), each collapsed to as few dims as possible, so "over the last dim" and "over any
// dims" are the same kernel with different views.
//
// Algorithm: a block is a 2-D tile: blockDim.x outputs side by side, blockDim.y threads sharing each
// output's inner elements (grid-stride over them). Two shapes, chosen by the host:
//   rows    (blockDim.x = 1, blockDim.y = 32..1024): one output per block, for long inner runs with
//           stride 1 (the last dim): reads are coalesced along the row; the threads combine with a
//           warp shuffle tree, then one value per warp through shared memory and a final warp tree.
//   columns (blockDim.x = 32, blockDim.y = 1..32): 32 neighbouring outputs per block, for reductions
//           over outer dims (the row sums of a column-major walk, e.g. a bias gradient): each warp
//           reads 32 neighbouring outputs' elements (coalesced when the kept dims are contiguous);
//           the blockDim.y partial results combine through a shared-memory tree.
// Reduced elements that are contiguous are read with 16-byte loads (each thread folds its packs
// first). Sums accumulate in f32 (f64 for f64) in that tree order. When there are too few outputs to fill
// the GPU, gridDim.y > 1 splits each output's inner elements further: every block writes its partial
// result (in the accumulation type) to a workspace [outputs, gridDim.y], and reduce_partials_<dtype>
// combines them. max/min propagate NaN (PyTorch semantics).
// Kernels: reduce_<dtype>, reduce_partials_<dtype> for f32, f64, bf16, f16.
// Launch: see above; at most 1024 threads, static shared memory 32 * sizeof(acc) (rows) or
// 1024 * sizeof(acc) (columns).
// Roofline: 1 FLOP and sizeof(T) bytes per input element (+ the outputs): memory bound.
#include "common.cuh"

// Op codes, the order of ReduceOp's variants (src/backend/cuda/reduce.rs keeps the mapping).
#define KILN_SUM 0
#define KILN_MAX 1
#define KILN_MIN 2

template <typename A> __device__ __forceinline__ A reduce_identity(int op) {
    // -inf / +inf for max / min: the identity of the NaN-propagating combine below.
    return op == KILN_SUM ? (A)0 : (op == KILN_MAX ? -kiln_inf<A>() : kiln_inf<A>());
}

template <typename A> __device__ __forceinline__ A reduce_combine(int op, A a, A b) {
    if (op == KILN_SUM) return a + b;
    if (a != a) return a; // NaN wins
    if (b != b) return b;
    return op == KILN_MAX ? (a > b ? a : b) : (a < b ? a : b);
}

template <typename A> __device__ __forceinline__ A reduce_warp(int op, A v) {
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) v = reduce_combine(op, v, __shfl_xor_sync(KILN_FULL_MASK, v, offset));
    return v;
}

template <typename T>
__device__ __forceinline__ void reduce_impl(const T *__restrict__ x, const KilnLayout &outer, const KilnLayout &inner,
                                            unsigned long long n_out, unsigned long long n_in, int op,
                                            T *__restrict__ y, typename KilnFloat<T>::Acc *__restrict__ partial) {
    typedef KilnFloat<T> F;
    typedef typename F::Acc A;
    __shared__ A scratch[1024];

    const unsigned long long o = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
    const bool live = o < n_out;
    A acc = reduce_identity<A>(op);
    if (live) {
        const T *base = x + kiln_offset(outer, o);
        const unsigned long long first = (unsigned long long)blockIdx.y * blockDim.y + threadIdx.y;
        const unsigned long long step = (unsigned long long)gridDim.y * blockDim.y;
        constexpr int N = 16 / sizeof(T);
        if (kiln_is_contiguous(inner) && kiln_aligned<16>(base)) {
            // contiguous reduced elements: 16-byte loads, then the tail one at a time
            const unsigned long long packs = n_in / N;
            for (unsigned long long p = first; p < packs; p += step) {
                const KilnPack<T, N> v = reinterpret_cast<const KilnPack<T, N> *>(base)[p];
#pragma unroll
                for (int k = 0; k < N; ++k) acc = reduce_combine(op, acc, F::up(v.v[k]));
            }
            for (unsigned long long j = packs * N + first; j < n_in; j += step)
                acc = reduce_combine(op, acc, F::up(base[j]));
        } else {
            for (unsigned long long j = first; j < n_in; j += step)
                acc = reduce_combine(op, acc, F::up(base[kiln_offset_rel(inner, j)]));
        }
    }

    if (blockDim.x == 1) {
        // rows: threadIdx.y is the linear thread id; blockDim.y is a multiple of 32.
        const unsigned tid = threadIdx.y, lane = tid % 32, warp = tid / 32, warps = blockDim.y / 32;
        acc = reduce_warp(op, acc);
        if (lane == 0) scratch[warp] = acc;
        __syncthreads();
        if (warp == 0) {
            acc = lane < warps ? scratch[lane] : reduce_identity<A>(op);
            acc = reduce_warp(op, acc);
        }
    } else {
        // columns: a tree over threadIdx.y in shared memory; blockDim.y is a power of two.
        const unsigned bx = blockDim.x;
        scratch[threadIdx.y * bx + threadIdx.x] = acc;
        __syncthreads();
        for (unsigned s = blockDim.y / 2; s > 0; s >>= 1) {
            if (threadIdx.y < s)
                scratch[threadIdx.y * bx + threadIdx.x] = reduce_combine(op, scratch[threadIdx.y * bx + threadIdx.x],
                                                                         scratch[(threadIdx.y + s) * bx + threadIdx.x]);
            __syncthreads();
        }
        acc = scratch[threadIdx.x];
    }

    if (threadIdx.y == 0 && live) {
        if (gridDim.y == 1)
            y[o] = F::down(acc);
        else
            partial[o * gridDim.y + blockIdx.y] = acc;
    }
}

// y[o] = combine of partial[o * splits .. (o + 1) * splits]; one thread per output.
template <typename T>
__device__ __forceinline__ void reduce_partials_impl(const typename KilnFloat<T>::Acc *__restrict__ partial,
                                                     unsigned long long n_out, unsigned splits, int op,
                                                     T *__restrict__ y) {
    typedef typename KilnFloat<T>::Acc A;
    for (unsigned long long o = kiln_thread_index(); o < n_out; o += kiln_thread_count()) {
        A acc = reduce_identity<A>(op);
        for (unsigned s = 0; s < splits; ++s) acc = reduce_combine(op, acc, partial[o * splits + s]);
        y[o] = KilnFloat<T>::down(acc);
    }
}

// Entry points, one per dtype; A is the type of the partial results (KILN_ENTRY, common.cuh).
#define REDUCE_KERNEL(T, A)                                                                                            \
    (const T *x, KilnLayout outer, KilnLayout inner, unsigned long long n_out, unsigned long long n_in, int op, T *y,  \
     A *partial) {                                                                                                     \
        reduce_impl(x, outer, inner, n_out, n_in, op, y, partial);                                                     \
    }
#define REDUCE_PARTIALS_KERNEL(T, A)                                                                                   \
    (const A *partial, unsigned long long n_out, unsigned splits, int op, T *y) {                                      \
        reduce_partials_impl(partial, n_out, splits, op, y);                                                           \
    }

KILN_ENTRY(reduce_f32, REDUCE_KERNEL, float, float)
KILN_ENTRY(reduce_f64, REDUCE_KERNEL, double, double)
KILN_ENTRY(reduce_bf16, REDUCE_KERNEL, __nv_bfloat16, float)
KILN_ENTRY(reduce_f16, REDUCE_KERNEL, __half, float)

KILN_ENTRY(reduce_partials_f32, REDUCE_PARTIALS_KERNEL, float, float)
KILN_ENTRY(reduce_partials_f64, REDUCE_PARTIALS_KERNEL, double, double)
KILN_ENTRY(reduce_partials_bf16, REDUCE_PARTIALS_KERNEL, __nv_bfloat16, float)
KILN_ENTRY(reduce_partials_f16, REDUCE_PARTIALS_KERNEL, __half, float)
