// embedding.cu — gathering rows by u32 ids and its adjoint, for index_select and embedding (the
// embedding table is index_select along dim 0). Views arrive contiguous as [outer, size, inner]: ids
// pick along the middle dim; ids are checked against `size` by the host.
//   index_select_b16/b32/b64: out[o, j, i] = src[o, ids[j], i]             (any dtype: bits move)
//   index_add_<dtype>:        out[o, r, i] = sum over j with ids[j] == r of src[o, j, i]
//   token_position_embedding_<dtype>: GPT's input, fused: out[p, i] = wte[ids[p], i] + wpe[p % t, i]
//                             for the p < n positions of [b, t] ids (one pass instead of a gather, a
//                             narrow and a broadcast add); its backward is index_add and a sum.
// index_add is deterministic without atomics: the host buckets the ids once (a counting sort, stable):
// order[starts[r] .. starts[r+1]] lists the positions j holding id r, ascending; each output element
// sums its own bucket in that order (in f32; f64 for f64), so the result never depends on scheduling
// and rows nobody selected get 0. Repeated ids (the same token many times in a batch) cost their
// bucket's length for each of the row's `inner` outputs, read coalesced along i.
// Launch: 1-D grid-stride loops, 256 threads per block, one thread per output element.
// Roofline: token_position_embedding 1 FLOP, 3 * sizeof(T) bytes per output element; index_select 0 FLOPs, 2 * sizeof(T) bytes per output element (+ 4 per id per warp);
// index_add 1 FLOP per selected element: sizeof(T) per output element written, plus sizeof(T) read
// per selected element (+ the 4-byte order and starts entries).
#include "common.cuh"

template <typename T>
__device__ __forceinline__ void index_select_impl(const T *__restrict__ src, const unsigned *__restrict__ ids,
                                                  T *__restrict__ out, unsigned long long outer,
                                                  unsigned long long size, unsigned long long inner,
                                                  unsigned long long n_ids) {
    const unsigned long long n = outer * n_ids * inner;
    for (unsigned long long e = kiln_thread_index(); e < n; e += kiln_thread_count()) {
        const unsigned long long i = e % inner, row = e / inner;
        const unsigned long long j = row % n_ids, o = row / n_ids;
        out[e] = src[(o * size + ids[j]) * inner + i];
    }
}

template <typename T>
__device__ __forceinline__ void index_add_impl(const T *__restrict__ src, const unsigned *__restrict__ order,
                                               const unsigned *__restrict__ starts, T *__restrict__ out,
                                               unsigned long long outer, unsigned long long size,
                                               unsigned long long inner, unsigned long long n_ids) {
    typedef KilnFloat<T> F;
    typedef typename F::Acc A;
    const unsigned long long n = outer * size * inner;
    for (unsigned long long e = kiln_thread_index(); e < n; e += kiln_thread_count()) {
        const unsigned long long i = e % inner, row = e / inner;
        const unsigned long long r = row % size, o = row / size;
        A acc = (A)0;
        for (unsigned k = starts[r]; k < starts[r + 1]; ++k) acc += F::up(src[(o * n_ids + order[k]) * inner + i]);
        out[e] = F::down(acc);
    }
}

template <typename T>
__device__ __forceinline__ void token_position_embedding_impl(const unsigned *__restrict__ ids, const T *__restrict__ wte,
                                                              const T *__restrict__ wpe, T *__restrict__ out,
                                                              unsigned long long n, unsigned long long t,
                                                              unsigned long long c) {
    typedef KilnFloat<T> F;
    for (unsigned long long e = kiln_thread_index(); e < n * c; e += kiln_thread_count()) {
        const unsigned long long i = e % c, p = e / c;
        out[e] = F::down(F::up(wte[ids[p] * c + i]) + F::up(wpe[(p % t) * c + i]));
    }
}

extern "C" __global__ void index_select_b16(const unsigned short *src, const unsigned *ids, unsigned short *out,
                                            unsigned long long outer, unsigned long long size,
                                            unsigned long long inner, unsigned long long n_ids) {
    index_select_impl(src, ids, out, outer, size, inner, n_ids);
}

extern "C" __global__ void index_select_b32(const unsigned *src, const unsigned *ids, unsigned *out,
                                            unsigned long long outer, unsigned long long size,
                                            unsigned long long inner, unsigned long long n_ids) {
    index_select_impl(src, ids, out, outer, size, inner, n_ids);
}

extern "C" __global__ void index_select_b64(const unsigned long long *src, const unsigned *ids, unsigned long long *out,
                                            unsigned long long outer, unsigned long long size,
                                            unsigned long long inner, unsigned long long n_ids) {
    index_select_impl(src, ids, out, outer, size, inner, n_ids);
}

extern "C" __global__ void index_add_f32(const float *src, const unsigned *order, const unsigned *starts, float *out,
                                         unsigned long long outer, unsigned long long size, unsigned long long inner,
                                         unsigned long long n_ids) {
    index_add_impl(src, order, starts, out, outer, size, inner, n_ids);
}

extern "C" __global__ void index_add_f64(const double *src, const unsigned *order, const unsigned *starts, double *out,
                                         unsigned long long outer, unsigned long long size, unsigned long long inner,
                                         unsigned long long n_ids) {
    index_add_impl(src, order, starts, out, outer, size, inner, n_ids);
}

extern "C" __global__ void index_add_bf16(const __nv_bfloat16 *src, const unsigned *order, const unsigned *starts,
                                          __nv_bfloat16 *out, unsigned long long outer, unsigned long long size,
                                          unsigned long long inner, unsigned long long n_ids) {
    index_add_impl(src, order, starts, out, outer, size, inner, n_ids);
}

extern "C" __global__ void index_add_f16(const __half *src, const unsigned *order, const unsigned *starts, __half *out,
                                         unsigned long long outer, unsigned long long size, unsigned long long inner,
                                         unsigned long long n_ids) {
    index_add_impl(src, order, starts, out, outer, size, inner, n_ids);
}

extern "C" __global__ void token_position_embedding_f32(const unsigned *ids, const float *wte, const float *wpe, float *out,
                                                    unsigned long long n, unsigned long long t, unsigned long long c) {
    token_position_embedding_impl(ids, wte, wpe, out, n, t, c);
}

extern "C" __global__ void token_position_embedding_f64(const unsigned *ids, const double *wte, const double *wpe, double *out,
                                                    unsigned long long n, unsigned long long t, unsigned long long c) {
    token_position_embedding_impl(ids, wte, wpe, out, n, t, c);
}

extern "C" __global__ void token_position_embedding_bf16(const unsigned *ids, const __nv_bfloat16 *wte, const __nv_bfloat16 *wpe, __nv_bfloat16 *out,
                                                    unsigned long long n, unsigned long long t, unsigned long long c) {
    token_position_embedding_impl(ids, wte, wpe, out, n, t, c);
}

extern "C" __global__ void token_position_embedding_f16(const unsigned *ids, const __half *wte, const __half *wpe, __half *out,
                                                    unsigned long long n, unsigned long long t, unsigned long long c) {
    token_position_embedding_impl(ids, wte, wpe, out, n, t, c);
}
