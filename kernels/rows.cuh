// rows.cuh — helpers of the row-wise kernels (softmax.cu, layernorm.cu, cross_entropy.cu), which all
// use one launch shape: a 2-D block of blockDim.x threads per row (a power of two, 32 to 1024) and
// blockDim.y rows side by side; row r of the tensor is handled by block r / blockDim.y, row
// threadIdx.y. The Rust side chooses the shape with `softmax::block_shape`.
//
//   kiln_sqrt: f32 or f64 square root by overload (kiln_exp / kiln_log are in common.cuh);
//   kiln_online_add / kiln_online_merge: the running (max, Σ exp(x − max)) pair of the online
//     softmax (log-sum-exp in one read of the row);
//   kiln_row_sum, kiln_row_max_sum: the combine over the threads of one row (warp butterfly, then one
//     value per warp through shared memory), in a fixed order, so results do not vary between runs.
// The combines contain __syncthreads when a row spans several warps: every thread of the block must
// call them (a thread past the last row passes its identity value and returns afterwards).
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

// Σ v over the blockDim.x threads of this thread's row; every thread of the row gets it. `scratch` is
// 32 accumulators of shared memory, free again when this returns.
template <typename A> __device__ __forceinline__ A kiln_row_sum(A v, A *scratch) {
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(KILN_FULL_MASK, v, offset);
    if (blockDim.x > 32) { // uniform over the block: every thread reaches the barriers or none does
        const unsigned warps_per_row = blockDim.x / 32;
        const unsigned first = threadIdx.y * warps_per_row;
        if (threadIdx.x % 32 == 0) scratch[first + threadIdx.x / 32] = v;
        __syncthreads();
        v = scratch[first];
        for (unsigned w = 1; w < warps_per_row; ++w) v += scratch[first + w];
        __syncthreads();
    }
    return v;
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
