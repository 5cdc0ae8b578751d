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
// Vector width: a thread takes packs of N = 16 / sizeof(T) elements (16-byte loads and stores of p,
// g, m, v; 8 or 4 bytes of the bf16 copy) from the first element at which the parameter is 16-byte
// aligned, when g, m, v (and the copy) are aligned there too — always on a GPU, where every buffer is
// (then the head is empty), and on Emu, whose buffers of one length share their offset. The head
// before it and the tail of fewer than N are single elements; buffers of other offsets go one
// element at a time. (Emu buffers end at a page boundary, so there a whole tensor has no tail:
// tests/devices.rs runs the tail on windows of larger buffers.)
// Launch: grid [blocks, tensors], 256 threads; block (b, k) walks tensor k with a grid-stride loop
// from b * 256 (blocks of small tensors find no work and exit).
// Roofline: adamw ~12 FLOPs (one sqrt, one divide) and 7 * sizeof(T) bytes per element (p, g, m, v
// read; p, m, v written) + 2 per element for a bf16 copy; sq_partial 2 FLOPs, sizeof(T) read.
#include "rows.cuh"

struct KilnAdamWEntry {
    unsigned long long param, grad, m, v, copy, n;
    unsigned decay, pad_;
};

template <typename T> struct AdamWStep {
    T decay_factor, b1, b2, one_b1, one_b2, step_size, bc2_sqrt, eps;
};

// Elements [begin, end) of one tensor in packs of P (for P > 1: element `begin` of every buffer starts
// a pack-aligned address, and end - begin is a multiple of P).
template <int P, typename T>
__device__ __forceinline__ void adamw_body(const KilnAdamWEntry &e, const AdamWStep<T> &h, unsigned long long begin,
                                           unsigned long long end) {
    typedef KilnPack<T, P> Pack;
    typedef KilnPack<__nv_bfloat16, P> Copy;
    Pack *p = reinterpret_cast<Pack *>(reinterpret_cast<T *>(e.param) + begin);
    const Pack *g = reinterpret_cast<const Pack *>(reinterpret_cast<const T *>(e.grad) + begin);
    Pack *m = reinterpret_cast<Pack *>(reinterpret_cast<T *>(e.m) + begin);
    Pack *v = reinterpret_cast<Pack *>(reinterpret_cast<T *>(e.v) + begin);
    Copy *copy = e.copy ? reinterpret_cast<Copy *>(reinterpret_cast<__nv_bfloat16 *>(e.copy) + begin) : nullptr;
    for (unsigned long long i = kiln_thread_index(); i < (end - begin) / P; i += kiln_thread_count()) {
        const Pack gi = g[i];
        Pack pi = p[i], mi = m[i], vi = v[i];
#pragma unroll
        for (int k = 0; k < P; ++k) {
            T w = pi.v[k];
            if (e.decay) w = w * h.decay_factor;
            mi.v[k] = h.b1 * mi.v[k] + h.one_b1 * gi.v[k];
            vi.v[k] = h.b2 * vi.v[k] + h.one_b2 * gi.v[k] * gi.v[k];
            pi.v[k] = w - h.step_size * mi.v[k] / (kiln_sqrt(vi.v[k]) / h.bc2_sqrt + h.eps);
        }
        m[i] = mi;
        v[i] = vi;
        p[i] = pi;
        if (copy) {
            Copy ci;
#pragma unroll
            for (int k = 0; k < P; ++k) ci.v[k] = KilnConvert<T, __nv_bfloat16>::run(pi.v[k]);
            copy[i] = ci;
        }
    }
}

// The 16-byte packs of a tensor of n elements at `p`: elements [head, body) are whole packs (p + head
// is 16-byte aligned), the head before and the tail from body on are single elements.
struct AdamWSplit {
    unsigned long long head, body;
};

template <typename T> __device__ __forceinline__ AdamWSplit adamw_split(const void *p, unsigned long long n) {
    constexpr int N = 16 / sizeof(T);
    const unsigned long long to_boundary = (16 - (unsigned long long)p % 16) % 16 / sizeof(T);
    const unsigned long long head = to_boundary < n ? to_boundary : n;
    return AdamWSplit{head, head + (n - head) / N * N};
}

// Whether buffer q, of elements of `bytes` each, has element `head` at a multiple of N·bytes, as p's
// element `head` is (then the same packs fit it).
template <typename T>
__device__ __forceinline__ bool adamw_shares(const void *q, unsigned long long head, unsigned bytes) {
    constexpr int N = 16 / sizeof(T);
    return ((unsigned long long)q + head * bytes) % (N * bytes) == 0;
}

template <typename T> __device__ __forceinline__ void adamw_impl(const KilnAdamWEntry *__restrict__ table, AdamWStep<T> h) {
    const KilnAdamWEntry e = table[blockIdx.y];
    constexpr unsigned S = sizeof(T);
    AdamWSplit at = adamw_split<T>((const void *)e.param, e.n);
    const bool vec = adamw_shares<T>((const void *)e.grad, at.head, S) && adamw_shares<T>((const void *)e.m, at.head, S) &&
                     adamw_shares<T>((const void *)e.v, at.head, S) &&
                     (!e.copy || adamw_shares<T>((const void *)e.copy, at.head, 2));
    if (!vec) at = AdamWSplit{e.n, e.n}; // every element on its own
    adamw_body<1>(e, h, 0, at.head);
    adamw_body<16 / S>(e, h, at.head, at.body);
    adamw_body<1>(e, h, at.body, e.n);
}

template <int P, typename T>
__device__ __forceinline__ T adamw_sq_body(const T *__restrict__ g, unsigned long long begin, unsigned long long end) {
    typedef KilnPack<T, P> Pack;
    const Pack *gp = reinterpret_cast<const Pack *>(g + begin);
    T acc = (T)0;
    for (unsigned long long i = kiln_thread_index(); i < (end - begin) / P; i += kiln_thread_count()) {
        const Pack v = gp[i];
#pragma unroll
        for (int k = 0; k < P; ++k) acc += v.v[k] * v.v[k];
    }
    return acc;
}

template <typename T>
__device__ __forceinline__ void adamw_sq_partial_impl(const KilnAdamWEntry *__restrict__ table,
                                                      double *__restrict__ partial) {
    constexpr int N = 16 / sizeof(T);
    __shared__ double scratch[32];
    const KilnAdamWEntry e = table[blockIdx.y];
    const T *g = reinterpret_cast<const T *>(e.grad);
    const AdamWSplit at = adamw_split<T>(g, e.n);
    const T acc = adamw_sq_body<1>(g, 0, at.head) + adamw_sq_body<N>(g, at.head, at.body) + adamw_sq_body<1>(g, at.body, e.n);
    const double sum = kiln_row_sum((double)acc, scratch);
    if (threadIdx.x == 0) partial[(unsigned long long)blockIdx.y * gridDim.x + blockIdx.x] = sum;
}

// Entry points, one per dtype (KILN_ENTRY, common.cuh).
#define ADAMW_KERNEL(T)                                                                                                \
    (const KilnAdamWEntry *table, T decay_factor, T b1, T b2, T one_b1, T one_b2, T step_size, T bc2_sqrt, T eps) {    \
        adamw_impl(table, AdamWStep<T>{decay_factor, b1, b2, one_b1, one_b2, step_size, bc2_sqrt, eps});               \
    }
#define ADAMW_SQ_PARTIAL_KERNEL(T)                                                                                     \
    (const KilnAdamWEntry *table, double *partial) { adamw_sq_partial_impl<T>(table, partial); }

KILN_ENTRY(adamw_f32, ADAMW_KERNEL, float)
KILN_ENTRY(adamw_f64, ADAMW_KERNEL, double)

KILN_ENTRY(adamw_sq_partial_f32, ADAMW_SQ_PARTIAL_KERNEL, float)
KILN_ENTRY(adamw_sq_partial_f64, ADAMW_SQ_PARTIAL_KERNEL, double)
