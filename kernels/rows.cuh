// rows.cuh — helpers of the row-wise kernels (softmax.cu, layer_norm.cu, cross_entropy.cu), which all
// use one launch shape: a 2-D block of blockDim.x threads per row (a power of two, 32 to 1024) and
// blockDim.y rows side by side; row r of the tensor is handled by block r / blockDim.y, row
// threadIdx.y. The Rust side chooses the shape with `softmax::block_shape` (about 8 elements per
// thread up to rows of 8192).
//
//   kiln_sqrt: f32 or f64 square root by overload (kiln_exp / kiln_log are in common.cuh);
//   kiln_online_add / kiln_online_merge: the running (max, Σ exp(x − max)) pair of the online
//     softmax (log-sum-exp in one read of the row);
//   kiln_row_sums, kiln_row_sum, kiln_row_max_sum: the combine over the threads of one row (warp
//     butterfly, then one value per warp through shared memory), in a fixed order, so results do not
//     vary between runs;
//   KilnRow and kiln_row_load / kiln_row_store: a row walked in 16-byte slots (below);
//   kiln_row_walk / kiln_row_first / kiln_row_again: the passes over a row, keeping its slots in
//     registers between passes when they fit, so such a row is read from memory once.
// The combines contain __syncthreads when a row spans several warps: every thread of the block must
// call them (a thread past the last row passes its identity value and returns afterwards).
//
// Rows in 16-byte slots. Row r of a [rows, width] tensor starts r·width elements past the buffer's
// start, so it is 16-byte aligned only when width is a multiple of N = 16 / sizeof(T). The row is
// therefore read in the slots of the aligned 16-byte grid: slot s holds elements s·N − head ..
// s·N − head + N − 1 (those inside the row), head being how many elements the row's start lies past
// the 16-byte boundary at or below it. Inner slots are one 16-byte load or store; the first and last
// are partial and go element by element, as does every slot of an operand whose own offset from the
// 16-byte grid differs from the row's (it cannot share the row's slots; on a GPU, where every buffer is
// 256-byte aligned, that happens only to a [width] parameter next to a row of an odd width). Thread x
// of the row takes slots x, x + blockDim.x, ...: a warp's 16-byte accesses cover 512 contiguous bytes.
// Example: GPT-2's rows of 768 f32 get 128 threads per row; a row is 192 slots, so half the threads take
// two and half one. On Emu every buffer ends at a page boundary, so a buffer whose size is not a multiple
// of 16 bytes starts mid-slot and rows of odd width start mid-slot in turn: the 16-byte path and the
// partial first and last slots all run in tests/devices.rs.
// Target (issue 6): 80% of the copy bandwidth for large rows, for a GPU to measure (not yet done): by
// bytes, the forwards of softmax and layer_norm move a copy's traffic, 2·sizeof(T) per element, and the
// backwards read each input once; a warp issues one 16-byte access per 4 f32 (8 bf16). The row_kernels
// group of benches/ops.rs and kiln bench measure them on Cuda(0) when a GPU is present.
#pragma once
#include "common.cuh"

__device__ __forceinline__ float kiln_sqrt(float x) { return sqrtf(x); }
__device__ __forceinline__ double kiln_sqrt(double x) { return sqrt(x); }

// Folds x into the running (m, s): s is the sum of exp(v - m) over the values seen so far.
template <typename A> __device__ __forceinline__ void kiln_online_add(A &m, A &s, A x) {
    if (x > m) {
        s = s * kiln_exp(m - x) + (A)1; // exp(-inf) = 0 when this is the first finite value
        m = x;
    } else if (x != -kiln_inf<A>()) {
        s += kiln_exp(x - m); // NaN x (or m = +inf) turns s into NaN, which then reaches every output
    }
}

// Merges another thread's (m2, s2) into (m, s).
template <typename A> __device__ __forceinline__ void kiln_online_merge(A &m, A &s, A m2, A s2) {
    const A mm = m > m2 ? m : m2;
    const A a = s == (A)0 ? (A)0 : s * kiln_exp(m - mm);
    const A b = s2 == (A)0 ? (A)0 : s2 * kiln_exp(m2 - mm);
    m = mm;
    s = a + b;
}

// The K sums Σ v[k] over the blockDim.x threads of this thread's row, in place; every thread of the
// row gets them. `scratch` is 32·K accumulators of shared memory, free again when this returns. Summing
// several values in one combine shares its two barriers.
template <int K, typename A> __device__ __forceinline__ void kiln_row_sums(A (&v)[K], A *scratch) {
#pragma unroll
    for (int k = 0; k < K; ++k)
#pragma unroll
        for (int offset = 16; offset > 0; offset >>= 1) v[k] += __shfl_xor_sync(KILN_FULL_MASK, v[k], offset);
    if (blockDim.x > 32) { // uniform over the block: every thread reaches the barriers or none does
        const unsigned warps_per_row = blockDim.x / 32;
        const unsigned first = threadIdx.y * warps_per_row;
        if (threadIdx.x % 32 == 0)
#pragma unroll
            for (int k = 0; k < K; ++k) scratch[32 * k + first + threadIdx.x / 32] = v[k];
        __syncthreads();
#pragma unroll
        for (int k = 0; k < K; ++k) {
            v[k] = scratch[32 * k + first];
            for (unsigned w = 1; w < warps_per_row; ++w) v[k] += scratch[32 * k + first + w];
        }
        __syncthreads();
    }
}

// Σ v over the row's threads (kiln_row_sums of one value); `scratch` is 32 accumulators.
template <typename A> __device__ __forceinline__ A kiln_row_sum(A v, A *scratch) {
    A one[1] = {v};
    kiln_row_sums(one, scratch);
    return one[0];
}

// The row's (max, Σ exp(x − max)) from every thread's running pair; every thread of the row gets it.
// `sm_m` and `sm_s` are 32 accumulators of shared memory each, free again when this returns.
template <typename A> __device__ __forceinline__ void kiln_row_max_sum(A &m, A &s, A *sm_m, A *sm_s) {
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) {
        const A m2 = __shfl_xor_sync(KILN_FULL_MASK, m, offset);
        const A s2 = __shfl_xor_sync(KILN_FULL_MASK, s, offset);
        kiln_online_merge(m, s, m2, s2);
    }
    if (blockDim.x > 32) {
        const unsigned warps_per_row = blockDim.x / 32;
        const unsigned first = threadIdx.y * warps_per_row;
        if (threadIdx.x % 32 == 0) {
            sm_m[first + threadIdx.x / 32] = m;
            sm_s[first + threadIdx.x / 32] = s;
        }
        __syncthreads();
        m = sm_m[first];
        s = sm_s[first];
        for (unsigned w = 1; w < warps_per_row; ++w) kiln_online_merge(m, s, sm_m[first + w], sm_s[first + w]);
        __syncthreads();
    }
}

// ---------------------------------------------------------------------------------------------------
// Rows in slots (see the header).

// One row's slot grid, from the pointer to its first element.
template <typename T> struct KilnRow {
    static constexpr int N = 16 / (int)sizeof(T);
    typedef KilnPack<T, N> Slot;
    unsigned phase; // the row start's byte offset from the 16-byte grid
    int head;       // elements of slot 0 before the row's first (phase / sizeof(T))
    unsigned width, slots;
};

template <typename T> __device__ __forceinline__ KilnRow<T> kiln_row(const T *first, unsigned width) {
    KilnRow<T> r;
    r.phase = (unsigned)((unsigned long long)first % 16);
    r.head = (int)(r.phase / sizeof(T));
    r.width = width;
    r.slots = (unsigned)(((unsigned long long)r.head + width + KilnRow<T>::N - 1) / KilnRow<T>::N);
    return r;
}

// Whether `p` (an operand indexed like the row: p[j] goes with element j) shares the row's slots, so
// its inner slots can be 16-byte accesses.
template <typename T> __device__ __forceinline__ bool kiln_row_shares(const KilnRow<T> &r, const void *p) {
    return (unsigned)((unsigned long long)p % 16) == r.phase;
}

// The row index of element k of slot s, and whether it is inside the row.
template <typename T> __device__ __forceinline__ long long kiln_row_index(const KilnRow<T> &r, unsigned s, int k) {
    return (long long)s * KilnRow<T>::N - r.head + k;
}
template <typename T> __device__ __forceinline__ bool kiln_row_has(const KilnRow<T> &r, unsigned s, int k) {
    const long long j = kiln_row_index(r, s, k);
    return j >= 0 && j < (long long)r.width;
}

// Slot s of `p` (p[j] for the elements j of the slot; zero outside the row); `vec`: kiln_row_shares.
template <typename T>
__device__ __forceinline__ typename KilnRow<T>::Slot kiln_row_load(const T *__restrict__ p, const KilnRow<T> &r,
                                                                   unsigned s, bool vec) {
    constexpr int N = KilnRow<T>::N;
    const long long j0 = kiln_row_index(r, s, 0);
    if (vec && j0 >= 0 && j0 + N <= (long long)r.width) return *reinterpret_cast<const KilnPack<T, N> *>(p + j0);
    typename KilnRow<T>::Slot v;
#pragma unroll
    for (int k = 0; k < N; ++k)
        v.v[k] = kiln_row_has(r, s, k) ? p[j0 + k] : KilnFloat<T>::down((typename KilnFloat<T>::Acc)0);
    return v;
}

// Stores the elements of slot s that are inside the row.
template <typename T>
__device__ __forceinline__ void kiln_row_store(T *__restrict__ p, const KilnRow<T> &r, unsigned s, bool vec,
                                               const typename KilnRow<T>::Slot &v) {
    constexpr int N = KilnRow<T>::N;
    const long long j0 = kiln_row_index(r, s, 0);
    if (vec && j0 >= 0 && j0 + N <= (long long)r.width) {
        *reinterpret_cast<KilnPack<T, N> *>(p + j0) = v;
        return;
    }
#pragma unroll
    for (int k = 0; k < N; ++k)
        if (kiln_row_has(r, s, k)) p[j0 + k] = v.v[k];
}

// Slots a thread keeps in registers between passes: 8 elements' worth (2 slots of f32, 4 of f64, 1 of
// bf16/f16; 8-16 registers per operand kept), so a row of up to 8 · blockDim.x elements (less the
// head) is read from memory once.
template <typename T> struct KilnRowKeep {
    static constexpr int R = 8 / KilnRow<T>::N;
};

template <int R, typename T> __device__ __forceinline__ bool kiln_row_fits(const KilnRow<T> &r) {
    return r.slots <= R * blockDim.x;
}

// One pass over this thread's slots: use(load(s), s) for each.
template <typename Load, typename Use>
__device__ __forceinline__ void kiln_row_walk(unsigned slots, Load load, Use use) {
    for (unsigned s = threadIdx.x; s < slots; s += blockDim.x) use(load(s), s);
}

// A later pass: from `keep` when the row fits, else loading again.
template <int R, typename V, typename Load, typename Use>
__device__ __forceinline__ void kiln_row_again(const V (&keep)[R], bool fits, unsigned slots, Load load, Use use) {
    if (!fits) {
        kiln_row_walk(slots, load, use);
        return;
    }
#pragma unroll
    for (int i = 0; i < R; ++i) {
        const unsigned s = threadIdx.x + i * blockDim.x;
        if (s < slots) use(keep[i], s);
    }
}

// The first pass: as kiln_row_walk, and with `fits` (kiln_row_fits) the loaded values V stay in `keep`
// (indexed by constants only, so they stay in registers) for kiln_row_again: all of the thread's
// loads are issued before the first use.
template <int R, typename V, typename Load, typename Use>
__device__ __forceinline__ void kiln_row_first(V (&keep)[R], bool fits, unsigned slots, Load load, Use use) {
    if (fits) {
#pragma unroll
        for (int i = 0; i < R; ++i) {
            const unsigned s = threadIdx.x + i * blockDim.x;
            if (s < slots) keep[i] = load(s);
        }
    }
    kiln_row_again(keep, fits, slots, load, use);
}
