// sample.cu — draws one token id from each row of f32 logits [rows, vocab] on the device, so that a
// generated token costs a 4-byte copy back instead of the whole row: temperature, top-k, top-p
// (nucleus) and greedy, the rules of the CPU reference src/backend/cpu/sample.rs, which gives the
// same id for the same logits and uniform number bit for bit (the tests check it on Emu).
//
// Why the result is exact, not "equal up to rounding": a token's probability is an integer weight
//     W(l) = round(exp((l - max) / T) * 2^S),   S = min(52, 62 - bit_length(vocab)),
// computed in f64 from IEEE operations that are rounded once each and never fused implicitly
// (__dsub_rn, __ddiv_rn, __dmul_rn, __fma_rn, rint: sample_weight below, which the CPU mirrors with
// the same operations in the same order). Every sum is then an integer sum, which is the same in
// any order, so a block-wide reduction gives the CPU's sequential sum exactly. The weights of a row
// sum to less than 2^62 (each is at most about 2^S, the largest exactly 2^S, vocab < 2^(62-S)).
// Weights below exp(-44) (under 2^-63 of the largest) are 0: such a token is never drawn (the f64
// sampler drew it with a probability below 1e-19 per step).
//
// Algorithm, one block per row (all passes read the row from global memory, the later ones from L2):
//   1. max and the first index of it, and whether any logit is NaN (strided loop, block reduction).
//      NaN: the id is SAMPLE_NAN; every logit -inf: SAMPLE_NO_MASS (the host turns both into the CPU
//      reference's errors). T = 0, vocab = 1 or a +inf max: the argmax (greedy).
//   2. top-k (0 < k < vocab): the k-th largest logit in the total order (ties by id), found by a radix
//      select over 32-bit keys that sort the logits from largest to smallest (sample_key): four
//      passes of 8-bit digits, each counting the candidates per digit into 256 shared bins and
//      keeping the digit where the count reaches k. Tokens whose logit is >= it stay (ties kept).
//   3. the total weight of the tokens left.
//   4. top-p (p < 1): the smallest prefix of the tokens sorted by (logit desc, id asc) whose weight
//      reaches target = ceil(p * total): the same radix select over weights instead of counts gives
//      the key K of the last token needed and the weight `before` of the tokens ahead of K's group;
//      all of the group has K's weight w, so it keeps the first m = ceil((target - before) / w) of
//      them by id: the m-th is found by a scan in id order (below).
//   5. the draw: R = floor(u * kept) (u from the host's Rng, one per row), the token whose interval
//      of the cumulative kept weight in id order holds R: each thread sums a contiguous chunk of ids,
//      an exclusive block scan of the chunk sums finds the chunk, its thread walks it.
// Launch: one block of SAMPLE_THREADS (1024) threads per row, grid = rows; 2.6 KB of static shared
// memory.
// Roofline (cost per row of vocab V): up to 13 reads of the row (1 max + 4 top-k + 1 total + 4 top-p + 1 group +
// 2 draw; 3 without top-k and top-p, 1 for greedy): 4V bytes each, from L2 after the first, plus 8
// bytes in and 4 out. FLOPs: about 30 f64 operations per weight, computed in up to 8 passes: 240V.
// One block per row keeps the kernel simple and exact; it is latency-bound on one SM (a multi-block
// version would split the passes over SMs).
#include "common.cuh"

#define SAMPLE_THREADS 1024
// The ids of the rows without a token (above any vocabulary the host allows).
#define SAMPLE_NAN 0xffffffffu
#define SAMPLE_NO_MASS 0xfffffffeu

// A key that sorts logits from the largest to the smallest in IEEE total order (+0 before -0):
// the bits made monotonic (sign flipped for positives, all bits for negatives), then inverted.
__device__ __forceinline__ unsigned sample_key(float v) {
    const unsigned bits = __float_as_uint(v);
    return ~((bits & 0x80000000u) ? ~bits : (bits | 0x80000000u));
}

// The logit with key k (sample_key's inverse).
__device__ __forceinline__ float sample_key_value(unsigned k) {
    const unsigned ord = ~k;
    return __uint_as_float((ord & 0x80000000u) ? (ord & 0x7fffffffu) : ~ord);
}

// W(l) = round(exp((l - max) / t) * 2^scale) for l <= max (finite max, t > 0): exp by Cody-Waite
// range reduction (d = n ln2 + r, |r| <= ln2 / 2) and the degree-12 Taylor polynomial of exp(r)
// (error under 2e-16), every operation explicitly rounded so that NVRTC's contraction cannot change
// it. src/backend/cpu/sample.rs `weight` is the same sequence of operations.
__device__ __forceinline__ unsigned long long sample_weight(float l, float max, double t, int scale) {
    const double d = __ddiv_rn(__dsub_rn((double)l, (double)max), t);
    if (!(d >= -44.0)) return 0ull; // -inf, and exp(d) < 2^-63: rounds to 0 at any scale <= 52
    const double n = rint(__dmul_rn(d, __longlong_as_double(0x3ff71547652b82fell))); // log2(e)
    double r = __fma_rn(-n, __longlong_as_double(0x3fe62e42fee00000ll), d);          // ln2, high part
    r = __fma_rn(-n, __longlong_as_double(0x3dea39ef35793c76ll), r);                 // ln2, low part
    double p = 1.0 / 479001600.0; // 1/12!
    p = __fma_rn(p, r, 1.0 / 39916800.0);
    p = __fma_rn(p, r, 1.0 / 3628800.0);
    p = __fma_rn(p, r, 1.0 / 362880.0);
    p = __fma_rn(p, r, 1.0 / 40320.0);
    p = __fma_rn(p, r, 1.0 / 5040.0);
    p = __fma_rn(p, r, 1.0 / 720.0);
    p = __fma_rn(p, r, 1.0 / 120.0);
    p = __fma_rn(p, r, 1.0 / 24.0);
    p = __fma_rn(p, r, 1.0 / 6.0);
    p = __fma_rn(p, r, 0.5);
    p = __fma_rn(p, r, 1.0);
    p = __fma_rn(p, r, 1.0);
    // 2^(n + scale), exact: n + scale is in [-64 + 30, 52]
    const double two_pow = __longlong_as_double((long long)(1023 + (int)n + scale) << 52);
    return (unsigned long long)rint(__dmul_rn(p, two_pow));
}

// Exclusive prefix sum of one value per thread over the block (blockDim.x a multiple of 32); `total`
// gets the block's sum. `warp_sums` is 32 values of shared memory, free again when this returns.
__device__ __forceinline__ unsigned long long sample_block_scan(unsigned long long v, unsigned long long *warp_sums,
                                                                unsigned long long &total) {
    const unsigned lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    unsigned long long incl = v;
#pragma unroll
    for (int off = 1; off < 32; off <<= 1) {
        const unsigned long long o = __shfl_up_sync(KILN_FULL_MASK, incl, off);
        if (lane >= (unsigned)off) incl += o;
    }
    if (lane == 31) warp_sums[warp] = incl;
    __syncthreads();
    if (warp == 0) {
        unsigned long long w = lane < warps ? warp_sums[lane] : 0ull;
#pragma unroll
        for (int off = 1; off < 32; off <<= 1) {
            const unsigned long long o = __shfl_up_sync(KILN_FULL_MASK, w, off);
            if (lane >= (unsigned)off) w += o;
        }
        warp_sums[lane] = w; // inclusive over the warps
    }
    __syncthreads();
    const unsigned long long before = (warp > 0 ? warp_sums[warp - 1] : 0ull) + incl - v;
    total = warp_sums[warps - 1];
    __syncthreads();
    return before;
}

// The sum over the row of weight(i), every thread gets it.
template <typename F>
__device__ __forceinline__ unsigned long long sample_block_total(unsigned vocab, F weight,
                                                                 unsigned long long *warp_sums) {
    unsigned long long s = 0;
    for (unsigned i = threadIdx.x; i < vocab; i += blockDim.x) s += weight(i);
    unsigned long long total;
    sample_block_scan(s, warp_sums, total);
    return total;
}

// The first id i whose inclusive prefix sum of weight over ids 0..=i exceeds r (r < the total), or
// `fallback` if none does. Thread t sums the ids [t*c, (t+1)*c), c = ceil(vocab / blockDim.x); the
// block scan of those sums picks the chunk, and its thread walks it again.
template <typename F>
__device__ __forceinline__ unsigned sample_find(unsigned vocab, unsigned long long r, F weight, unsigned fallback,
                                                unsigned long long *warp_sums, unsigned *found) {
    const unsigned long long chunk = ((unsigned long long)vocab + blockDim.x - 1) / blockDim.x;
    const unsigned long long lo = threadIdx.x * chunk;
    const unsigned long long hi = lo + chunk < vocab ? lo + chunk : vocab;
    unsigned long long s = 0;
    for (unsigned long long i = lo; i < hi; ++i) s += weight((unsigned)i);
    if (threadIdx.x == 0) *found = fallback;
    unsigned long long total;
    unsigned long long cum = sample_block_scan(s, warp_sums, total); // (ends with a barrier)
    if (cum <= r && r < cum + s) {
        for (unsigned long long i = lo; i < hi; ++i) {
            cum += weight((unsigned)i);
            if (cum > r) {
                *found = (unsigned)i;
                break;
            }
        }
    }
    __syncthreads();
    const unsigned id = *found;
    __syncthreads();
    return id;
}

// The key of the first token, in key order (largest logit first), at which the cumulative weight of
// the tokens up to and including its key exceeds r (r < the total weight); `before` gets the weight
// of the tokens with smaller keys. Four passes over 8-bit digits of the key, most significant first,
// each histogramming the weight of the tokens that match the digits found so far.
template <typename F>
__device__ __forceinline__ unsigned sample_radix_select(const float *x, unsigned vocab, unsigned long long r,
                                                        F weight, unsigned long long *bins,
                                                        unsigned long long &before, unsigned long long *pick) {
    unsigned prefix = 0, mask = 0;
    before = 0;
    for (int shift = 24; shift >= 0; shift -= 8) {
        for (unsigned b = threadIdx.x; b < 256; b += blockDim.x) bins[b] = 0;
        __syncthreads();
        for (unsigned i = threadIdx.x; i < vocab; i += blockDim.x) {
            const unsigned key = sample_key(x[i]);
            if ((key & mask) == prefix) {
                const unsigned long long w = weight(i);
                if (w) atomicAdd(&bins[(key >> shift) & 255u], w);
            }
        }
        __syncthreads();
        if (threadIdx.x == 0) {
            unsigned long long cum = before;
            unsigned b = 0;
            while (b < 255 && cum + bins[b] <= r) cum += bins[b++];
            pick[0] = b;
            pick[1] = cum;
        }
        __syncthreads();
        prefix |= (unsigned)pick[0] << shift;
        mask |= 255u << shift;
        before = pick[1];
        __syncthreads();
    }
    return prefix;
}

__device__ __forceinline__ void sample_impl(const float *__restrict__ logits, const double *__restrict__ uniforms,
                                            unsigned *__restrict__ ids, unsigned vocab, double temperature,
                                            unsigned top_k, double top_p) {
    __shared__ unsigned long long bins[256], warp_sums[32], pick[2];
    __shared__ float best_v[32];
    __shared__ unsigned best_i[32], found;
    const float *x = logits + (unsigned long long)blockIdx.x * vocab;
    unsigned *out = ids + blockIdx.x;
    const float inf = kiln_inf<float>();

    // 1. the max, the first of its ids, and NaN
    float m = -inf;
    unsigned at = vocab;
    int nan = 0;
    for (unsigned i = threadIdx.x; i < vocab; i += blockDim.x) {
        const float v = x[i];
        if (v != v) nan = 1;
        else if (v > m) m = v, at = i; // a thread's ids rise, so it keeps its first max
    }
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
        const float om = __shfl_xor_sync(KILN_FULL_MASK, m, off);
        const unsigned oat = __shfl_xor_sync(KILN_FULL_MASK, at, off);
        if (om > m || (om == m && oat < at)) m = om, at = oat;
    }
    const unsigned lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) best_v[warp] = m, best_i[warp] = at;
    if (__syncthreads_or(nan)) {
        if (threadIdx.x == 0) *out = SAMPLE_NAN;
        return;
    }
    if (warp == 0) {
        const bool has = lane < (blockDim.x >> 5);
        m = has ? best_v[lane] : -inf;
        at = has ? best_i[lane] : vocab;
#pragma unroll
        for (int off = 16; off > 0; off >>= 1) {
            const float om = __shfl_xor_sync(KILN_FULL_MASK, m, off);
            const unsigned oat = __shfl_xor_sync(KILN_FULL_MASK, at, off);
            if (om > m || (om == m && oat < at)) m = om, at = oat;
        }
        if (lane == 0) best_v[0] = m, best_i[0] = at;
    }
    __syncthreads();
    m = best_v[0];
    at = best_i[0];
    if (m == -inf || temperature == 0.0 || vocab == 1 || m == inf) {
        if (threadIdx.x == 0) *out = m == -inf ? SAMPLE_NO_MASS : at;
        return;
    }
    const int bits = 32 - __clz((int)vocab), scale = 62 - bits < 52 ? 62 - bits : 52;
    auto weight = [&](float v) { return sample_weight(v, m, temperature, scale); };

    // 2. top-k: the k-th largest logit
    float kth = -inf;
    if (top_k > 0 && top_k < vocab) {
        unsigned long long ahead;
        const unsigned k = sample_radix_select(x, vocab, top_k - 1, [](unsigned) { return 1ull; }, bins, ahead, pick);
        kth = sample_key_value(k);
    }
    auto top_k_weight = [&](unsigned i) {
        const float v = x[i];
        return v >= kth ? weight(v) : 0ull;
    };

    // 3. the total weight left
    const unsigned long long total = sample_block_total(vocab, top_k_weight, warp_sums);

    // 4. top-p: the tokens with keys below `cut`, and those of key `cut` up to id `last`
    unsigned long long kept = total;
    unsigned cut = 0xffffffffu, last = vocab;
    const bool nucleus = top_p < 1.0;
    if (nucleus) {
        unsigned long long target = (unsigned long long)ceil(__dmul_rn(top_p, (double)total));
        target = target < 1 ? 1 : (target > total ? total : target);
        unsigned long long before;
        cut = sample_radix_select(x, vocab, target - 1, top_k_weight, bins, before, pick);
        const unsigned long long w = weight(sample_key_value(cut));
        const unsigned long long take = (target - before + w - 1) / w;
        const unsigned group = cut;
        last = sample_find(vocab, take - 1, [&](unsigned i) { return sample_key(x[i]) == group ? 1ull : 0ull; },
                           vocab - 1, warp_sums, &found);
        kept = before + take * w;
    }
    auto kept_weight = [&](unsigned i) {
        if (!nucleus) return top_k_weight(i);
        const float v = x[i];
        const unsigned key = sample_key(v);
        return key < cut || (key == cut && i <= last) ? weight(v) : 0ull;
    };

    // 5. the draw
    unsigned long long r = (unsigned long long)__dmul_rn(uniforms[blockIdx.x], (double)kept);
    if (r >= kept) r = kept - 1;
    const unsigned id = sample_find(vocab, r, kept_weight, at, warp_sums, &found);
    if (threadIdx.x == 0) *out = id;
}

#define SAMPLE_KERNEL(T)                                                                                               \
    (const T *logits, const double *uniforms, unsigned *ids, unsigned vocab, double temperature, unsigned top_k,       \
     double top_p) {                                                                                                   \
        sample_impl(logits, uniforms, ids, vocab, temperature, top_k, top_p);                                          \
    }

KILN_ENTRY_BOUNDED(sample_f32, 1024, SAMPLE_KERNEL, float)
