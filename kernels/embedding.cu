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
// Vector width: each thread moves a pack of P elements along i — P = 16 / sizeof(T) (16-byte loads and
// stores) when the row length (inner, or c) is a multiple of it and every buffer is 16-byte aligned, so
// that every row is; otherwise P = 1. (GPT-2's rows of 768 always take the packs; odd widths, which only
// tests and narrowed views produce, take single elements.)
// Launch: 1-D grid-stride loops, 256 threads per block, one thread per output pack.
// Roofline: token_position_embedding 1 FLOP, 3 * sizeof(T) bytes per output element; index_select 0 FLOPs, 2 * sizeof(T) bytes per output element (+ 4 per id per warp);
// index_add 1 FLOP per selected element: sizeof(T) per output element written, plus sizeof(T) read
// per selected element (+ the 4-byte order and starts entries).
// Headroom: the kernels divide 64-bit indices per pack, and take single elements for any row that is not
// a multiple of 16 bytes.
#include "common.cuh"

// Whether rows of `len` elements in the listed buffers allow 16-byte packs (see the header).
template <typename T>
__device__ __forceinline__ bool embedding_vec(unsigned long long len, const void *a, const void *b,
                                              const void *c = nullptr) {
    constexpr int N = 16 / sizeof(T);
    return len % N == 0 && kiln_aligned<16>(a) && kiln_aligned<16>(b) && kiln_aligned<16>(c);
}

template <int P, typename T>
__device__ __forceinline__ void index_select_body(const T *__restrict__ src, const unsigned *__restrict__ ids,
                                                  T *__restrict__ out, unsigned long long outer,
                                                  unsigned long long size, unsigned long long inner,
                                                  unsigned long long n_ids) {
    typedef KilnPack<T, P> Pack;
    const unsigned long long packs = inner / P, n = outer * n_ids * packs;
    for (unsigned long long e = kiln_thread_index(); e < n; e += kiln_thread_count()) {
        const unsigned long long i = e % packs, row = e / packs;
        const unsigned long long j = row % n_ids, o = row / n_ids;
        reinterpret_cast<Pack *>(out)[e] = reinterpret_cast<const Pack *>(src)[(o * size + ids[j]) * packs + i];
    }
}

template <typename T>
__device__ __forceinline__ void index_select_impl(const T *__restrict__ src, const unsigned *__restrict__ ids,
                                                  T *__restrict__ out, unsigned long long outer,
                                                  unsigned long long size, unsigned long long inner,
                                                  unsigned long long n_ids) {
    if (embedding_vec<T>(inner, src, out))
        index_select_body<(int)(16 / sizeof(T))>(src, ids, out, outer, size, inner, n_ids);
    else
        index_select_body<1>(src, ids, out, outer, size, inner, n_ids);
}

template <int P, typename T>
__device__ __forceinline__ void index_add_body(const T *__restrict__ src, const unsigned *__restrict__ order,
                                               const unsigned *__restrict__ starts, T *__restrict__ out,
                                               unsigned long long outer, unsigned long long size,
                                               unsigned long long inner, unsigned long long n_ids) {
    typedef KilnFloat<T> F;
    typedef typename F::Acc A;
    typedef KilnPack<T, P> Pack;
    const unsigned long long packs = inner / P, n = outer * size * packs;
    for (unsigned long long e = kiln_thread_index(); e < n; e += kiln_thread_count()) {
        const unsigned long long i = e % packs, row = e / packs;
        const unsigned long long r = row % size, o = row / size;
        A acc[P];
#pragma unroll
        for (int k = 0; k < P; ++k) acc[k] = (A)0;
        for (unsigned b = starts[r]; b < starts[r + 1]; ++b) {
            const Pack v = reinterpret_cast<const Pack *>(src)[(o * n_ids + order[b]) * packs + i];
#pragma unroll
            for (int k = 0; k < P; ++k) acc[k] += F::up(v.v[k]);
        }
        Pack sum;
#pragma unroll
        for (int k = 0; k < P; ++k) sum.v[k] = F::down(acc[k]);
        reinterpret_cast<Pack *>(out)[e] = sum;
    }
}

template <typename T>
__device__ __forceinline__ void index_add_impl(const T *__restrict__ src, const unsigned *__restrict__ order,
                                               const unsigned *__restrict__ starts, T *__restrict__ out,
                                               unsigned long long outer, unsigned long long size,
                                               unsigned long long inner, unsigned long long n_ids) {
    if (embedding_vec<T>(inner, src, out))
        index_add_body<(int)(16 / sizeof(T))>(src, order, starts, out, outer, size, inner, n_ids);
    else
        index_add_body<1>(src, order, starts, out, outer, size, inner, n_ids);
}

template <int P, typename T>
__device__ __forceinline__ void token_position_embedding_body(const unsigned *__restrict__ ids, const T *__restrict__ wte,
                                                              const T *__restrict__ wpe, T *__restrict__ out,
                                                              unsigned long long n, unsigned long long t,
                                                              unsigned long long c) {
    typedef KilnFloat<T> F;
    typedef KilnPack<T, P> Pack;
    const unsigned long long packs = c / P;
    for (unsigned long long e = kiln_thread_index(); e < n * packs; e += kiln_thread_count()) {
        const unsigned long long i = e % packs, p = e / packs;
        const Pack a = reinterpret_cast<const Pack *>(wte)[ids[p] * packs + i];
        const Pack b = reinterpret_cast<const Pack *>(wpe)[(p % t) * packs + i];
        Pack sum;
#pragma unroll
        for (int k = 0; k < P; ++k) sum.v[k] = F::down(F::up(a.v[k]) + F::up(b.v[k]));
        reinterpret_cast<Pack *>(out)[e] = sum;
    }
}

template <typename T>
__device__ __forceinline__ void token_position_embedding_impl(const unsigned *__restrict__ ids, const T *__restrict__ wte,
                                                              const T *__restrict__ wpe, T *__restrict__ out,
                                                              unsigned long long n, unsigned long long t,
                                                              unsigned long long c) {
    if (embedding_vec<T>(c, wte, wpe, out))
        token_position_embedding_body<(int)(16 / sizeof(T))>(ids, wte, wpe, out, n, t, c);
    else
        token_position_embedding_body<1>(ids, wte, wpe, out, n, t, c);
}

// Entry points, one per element width or dtype (KILN_ENTRY, common.cuh).
#define INDEX_SELECT_KERNEL(T)                                                                                         \
    (const T *src, const unsigned *ids, T *out, unsigned long long outer, unsigned long long size,                     \
     unsigned long long inner, unsigned long long n_ids) {                                                             \
        index_select_impl(src, ids, out, outer, size, inner, n_ids);                                                   \
    }
#define INDEX_ADD_KERNEL(T)                                                                                            \
    (const T *src, const unsigned *order, const unsigned *starts, T *out, unsigned long long outer,                    \
     unsigned long long size, unsigned long long inner, unsigned long long n_ids) {                                    \
        index_add_impl(src, order, starts, out, outer, size, inner, n_ids);                                            \
    }
#define TOKEN_POSITION_EMBEDDING_KERNEL(T)                                                                             \
    (const unsigned *ids, const T *wte, const T *wpe, T *out, unsigned long long n, unsigned long long t,              \
     unsigned long long c) {                                                                                           \
        token_position_embedding_impl(ids, wte, wpe, out, n, t, c);                                                    \
    }

KILN_ENTRY(index_select_b16, INDEX_SELECT_KERNEL, unsigned short)
KILN_ENTRY(index_select_b32, INDEX_SELECT_KERNEL, unsigned)
KILN_ENTRY(index_select_b64, INDEX_SELECT_KERNEL, unsigned long long)

KILN_ENTRY(index_add_f32, INDEX_ADD_KERNEL, float)
KILN_ENTRY(index_add_f64, INDEX_ADD_KERNEL, double)
KILN_ENTRY(index_add_bf16, INDEX_ADD_KERNEL, __nv_bfloat16)
KILN_ENTRY(index_add_f16, INDEX_ADD_KERNEL, __half)

KILN_ENTRY(token_position_embedding_f32, TOKEN_POSITION_EMBEDDING_KERNEL, float)
KILN_ENTRY(token_position_embedding_f64, TOKEN_POSITION_EMBEDDING_KERNEL, double)
KILN_ENTRY(token_position_embedding_bf16, TOKEN_POSITION_EMBEDDING_KERNEL, __nv_bfloat16)
KILN_ENTRY(token_position_embedding_f16, TOKEN_POSITION_EMBEDDING_KERNEL, __half)
