// adamw.cu — the AdamW step over many tensors in one launch, and the squares of many gradients for
// the global norm (clipping). A device table describes the tensors (KilnAdamWEntry, written by
// src/backend/cuda/adamw.rs); parameters and moments are f32 (or f64), updated in place:
//   p = p * decay_factor  (decayed tensors only)
//   m = b1 * m + (1 - b1) * g,   v = b2 * v + (1 - b2) * g * g
//   p = p - step_size * m / (sqrt(v) / bc2_sqrt + eps)
// the operations of src/optim/adamw.rs in the same order and precision (the GPU may fuse a multiply
// and an add into an FMA, so it matches the CPU to rounding, not bit for bit). A tensor may have a
// bf16 copy that receives the new weights rounded to nearest even (for bf16 matmuls).
// adamw_sq_partial sums g*g per block (f32 per thread, f64 across the block, a fixed tree) into
// partial[tensor][block]; the host adds the partials in order: the norm repeats bit for bit.
// Launch: grid [blocks, tensors], 256 threads; block (b, k) walks tensor k with a grid-stride loop
// from b * 256 (blocks of small tensors find no work and exit).
// Roofline: adamw ~12 FLOPs (one sqrt, one divide) and 7 * sizeof(T) bytes per element (p, g, m, v
// read; p, m, v written) + 2 per element for a bf16 copy; sq_partial 2 FLOPs, sizeof(T) read.
#include "rows.cuh"

struct KilnAdamWEntry {
    unsigned long long param, grad, m, v, copy, n;
    unsigned decay, pad_;
};

template <typename T>
__device__ __forceinline__ void adamw_impl(const KilnAdamWEntry *__restrict__ table, T decay_factor, T b1, T b2,
                                           T one_b1, T one_b2, T step_size, T bc2_sqrt, T eps) {
    const KilnAdamWEntry e = table[blockIdx.y];
    T *p = reinterpret_cast<T *>(e.param);
    const T *g = reinterpret_cast<const T *>(e.grad);
    T *m = reinterpret_cast<T *>(e.m);
    T *v = reinterpret_cast<T *>(e.v);
    __nv_bfloat16 *copy = reinterpret_cast<__nv_bfloat16 *>(e.copy);
    for (unsigned long long i = kiln_thread_index(); i < e.n; i += kiln_thread_count()) {
        const T gi = g[i];
        T pi = p[i];
        if (e.decay) pi = pi * decay_factor;
        const T mi = b1 * m[i] + one_b1 * gi;
        const T vi = b2 * v[i] + one_b2 * gi * gi;
        m[i] = mi;
        v[i] = vi;
        pi = pi - step_size * mi / (kiln_sqrt(vi) / bc2_sqrt + eps);
        p[i] = pi;
        if (copy) copy[i] = KilnConvert<T, __nv_bfloat16>::run(pi);
    }
}

template <typename T>
__device__ __forceinline__ void adamw_sq_partial_impl(const KilnAdamWEntry *__restrict__ table,
                                                      double *__restrict__ partial) {
    __shared__ double scratch[32];
    const KilnAdamWEntry e = table[blockIdx.y];
    const T *g = reinterpret_cast<const T *>(e.grad);
    T acc = (T)0;
    for (unsigned long long i = kiln_thread_index(); i < e.n; i += kiln_thread_count()) acc += g[i] * g[i];
    const double sum = kiln_row_sum((double)acc, scratch);
    if (threadIdx.x == 0) partial[(unsigned long long)blockIdx.y * gridDim.x + blockIdx.x] = sum;
}

extern "C" __global__ void adamw_f32(const KilnAdamWEntry *table, float decay_factor, float b1, float b2, float one_b1,
                                     float one_b2, float step_size, float bc2_sqrt, float eps) {
    adamw_impl(table, decay_factor, b1, b2, one_b1, one_b2, step_size, bc2_sqrt, eps);
}

extern "C" __global__ void adamw_f64(const KilnAdamWEntry *table, double decay_factor, double b1, double b2,
                                     double one_b1, double one_b2, double step_size, double bc2_sqrt, double eps) {
    adamw_impl(table, decay_factor, b1, b2, one_b1, one_b2, step_size, bc2_sqrt, eps);
}

extern "C" __global__ void adamw_sq_partial_f32(const KilnAdamWEntry *table, double *partial) {
    adamw_sq_partial_impl<float>(table, partial);
}

extern "C" __global__ void adamw_sq_partial_f64(const KilnAdamWEntry *table, double *partial) {
    adamw_sq_partial_impl<double>(table, partial);
}
