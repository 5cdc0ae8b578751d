// attention.cu — fused scaled-dot-product attention, forward and backward, FlashAttention-2 style:
// an f32/f64 SIMT path for every kernel, a tensor-core (mma.sync) forward for bf16/f16 whose backward
// runs the SIMT kernels; head dims up to 128 by predication.
//   forward:  O = softmax(s·Q·Kᵀ)·V per head, s = 1/√d, and lse_i = log Σ_j exp(s·q_i·k_j)
//   backward: P = exp(s·Q·Kᵀ − lse), D_i = Σ dO_i∘O_i, dS = P∘(dO·Vᵀ − D),
//             dQ = s·dS·K, dK = s·dSᵀ·Q, dV = Pᵀ·dO
// q, o, dO are [heads, tq, d], k, v, dK, dV are [heads, tk, d], contiguous; lse and D are [heads, tq] in
// the arithmetic type A (f32 for f32/bf16/f16, f64 for f64). Causal: query i sits at absolute position
// tk − tq + i (the launch wrapper ensures tq <= tk) and sees keys 0..=tk − tq + i.
//
// Algorithm. Every block works on one head (blockIdx.x) and one tile (blockIdx.y) with 4 warps; a lane
// owns head dims lane, lane + 32, lane + 64, lane + 96 (predicated past d), so accumulators stay in
// registers for d <= 128. R rows per warp (8 in f32, 4 in f64).
//   attention_fwd: a Q tile of 4R rows (R per warp) sits in shared memory; K/V tiles of 32 keys stream
//     through shared memory, one key per lane for the scores, then each lane accumulates its dims of
//     P·V from the warp's probabilities (written to shared memory, read back as broadcasts). The online
//     softmax keeps a running max m and sum l per row and rescales l and O by exp(m_old − m_new) when m
//     grows. Key tiles past the block's last visible key are never loaded (causal tile skipping), and a
//     warp skips the tiles its own rows cannot see. Writes O = acc / l and lse = m + log l.
//   attention_fwd_mma (bf16/f16): the same with 16 rows per warp and mma.sync, see its comment below.
//   attention_bwd_dot: D_i = Σ_c dO_ic·O_ic, one thread per row.
//   attention_bwd_dkdv: a block owns 4R keys (R per warp) and keeps their dK, dV in registers while Q/dO
//     tiles of 32 query rows (one per lane) stream through shared memory, starting at the first query
//     that sees the block's first key.
//   attention_bwd_dq: a block owns 4R query rows and keeps their dQ in registers while K/V tiles of 32 keys
//     stream through shared memory, stopping after the last key its rows see.
// Determinism: no atomics. Each output element is accumulated by one thread in a fixed order, at the
// price of recomputing P and dP in both the dK/dV and the dQ kernels (FlashAttention-2 instead adds dQ
// with float atomics from the dK/dV kernel, whose order varies from run to run).
// Launch (src/backend/cuda/attention.rs): 128 threads per block; fwd and dq grids (heads, ceil(tq/4R)),
// dkdv grid (heads, ceil(tk/4R)); dynamic shared memory: fwd (4R·d + 32·(d+1) + 32·d + 4R·32)·sizeof(A),
// dkdv (2·4R·d + 2·32·(d+1) + 64 + 2·4R·32)·sizeof(A), dq (2·4R·d + 2·32·(d+1) + 4R·32)·sizeof(A)
// (over 48 KiB for d = 128 in f32: the wrapper raises the limit); fwd_mma: grid (heads, ceil(tq/64)),
// (64 + 2·32)·(ceil(d/16)·16 + 8)·sizeof(T).
// Roofline (non-causal; causal does about half): forward 4·tq·tk·d FLOPs and tq·tk exps per head, bytes
// (2·tq·d + 2·tk·d·ceil(tq/4R))·sizeof(T); backward 2 + 2 + 4 = 8·tq·tk·d FLOPs for dK/dV and
// 6·tq·tk·d for dQ (the score and dP products are recomputed), bytes about
// (4·tq·d·ceil(tk/4R) + 4·tk·d·ceil(tq/4R))·sizeof(T). The SIMT path is compute-bound on FMAs issued
// from shared memory (about one shared load per FMA); the mma forward issues 16x8x16 tiles instead and
// is bound by its shared-memory tile loads (plain loads; cp.async double buffering is left for later),
// as is a tensor-core backward.
#include "common.cuh"

#define KILN_ATT_WARPS 4
#define KILN_ATT_KEYS 32 // keys (or query rows) per streamed tile: one per lane
#define KILN_ATT_DC 4    // head dims per lane: d <= 32 * KILN_ATT_DC = 128

// Rows (or keys) owned by each warp: 8 in f32, 4 in f64 (same register budget).
template <typename A> struct AttRows {
    static constexpr int value = 32 / sizeof(A);
};

template <typename A> __device__ __forceinline__ A att_warp_max(A v) {
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) {
        const A o = __shfl_xor_sync(KILN_FULL_MASK, v, offset);
        v = o > v ? o : v;
    }
    return v;
}

// Copies rows [row0, row0 + rows) of the [n, d] matrix x into shared memory with a row stride of ld,
// widened to A and multiplied by mul; rows past n become zeros. Every thread of the block takes part.
template <typename T, typename A>
__device__ __forceinline__ void att_load_tile(A *dst, unsigned ld, const T *__restrict__ x, unsigned row0, unsigned rows,
                                              unsigned n, unsigned d, A mul) {
    for (unsigned e = threadIdx.x; e < rows * d; e += blockDim.x) {
        const unsigned r = e / d, c = e - r * d;
        dst[r * ld + c] = row0 + r < n ? KilnFloat<T>::up(x[(unsigned long long)(row0 + r) * d + c]) * mul : (A)0;
    }
}

// Whether query i may see key j (both in range).
__device__ __forceinline__ bool att_visible(int causal, unsigned tq, unsigned tk, unsigned i, unsigned j) {
    return !causal || j + tq <= tk + i;
}

// The number of keys the queries [0, last] see together.
__device__ __forceinline__ unsigned att_keys_seen(int causal, unsigned tq, unsigned tk, unsigned last) {
    return causal ? min(tk, tk - tq + last + 1) : tk;
}

template <typename T>
__device__ __forceinline__ void attention_fwd_impl(const T *__restrict__ q, const T *__restrict__ k,
                                                   const T *__restrict__ v, T *__restrict__ o,
                                                   typename KilnFloat<T>::Acc *__restrict__ lse, unsigned tq,
                                                   unsigned tk, unsigned d, int causal, double scale_f64) {
    typedef KilnFloat<T> F;
    typedef typename F::Acc A;
    constexpr int R = AttRows<A>::value, BQ = KILN_ATT_WARPS * R, BK = KILN_ATT_KEYS;
    KILN_DYNAMIC_SMEM(A, smem);
    A *qs = smem;              // [BQ][d]: the block's queries, pre-scaled by s
    A *ks = qs + BQ * d;       // [BK][d + 1]: the key tile, padded so that lane j reads row j conflict-free
    A *vs = ks + BK * (d + 1); // [BK][d]
    A *ps = vs + BK * d;       // [BQ][BK]: each row's probabilities for the tile
    const unsigned lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const unsigned long long head = blockIdx.x;
    const unsigned q0 = blockIdx.y * BQ, row0 = q0 + warp * R; // first row of the block, of the warp
    const A scale = (A)scale_f64;
    q += head * tq * d;
    k += head * tk * d;
    v += head * tk * d;

    att_load_tile(qs, d, q, q0, BQ, tq, d, scale);
    const unsigned nkeys = att_keys_seen(causal, tq, tk, min(q0 + BQ, tq) - 1);
    A m[R], l[R], acc[R][KILN_ATT_DC];
#pragma unroll
    for (int r = 0; r < R; ++r) {
        m[r] = -kiln_inf<A>();
        l[r] = (A)0;
#pragma unroll
        for (int c = 0; c < KILN_ATT_DC; ++c) acc[r][c] = (A)0;
    }
    for (unsigned k0 = 0; k0 < nkeys; k0 += BK) {
        __syncthreads(); // the previous tile is consumed (and the Q tile stored, the first time)
        att_load_tile(ks, d + 1, k, k0, BK, tk, d, (A)1);
        att_load_tile(vs, d, v, k0, BK, tk, d, (A)1);
        __syncthreads();
        if (causal && !att_visible(causal, tq, tk, row0 + R - 1, k0)) continue; // the warp's rows see none of it
        const unsigned j = k0 + lane;
        A s[R];
#pragma unroll
        for (int r = 0; r < R; ++r) s[r] = (A)0;
        for (unsigned c = 0; c < d; ++c) {
            const A kc = ks[lane * (d + 1) + c];
#pragma unroll
            for (int r = 0; r < R; ++r) s[r] += qs[(warp * R + r) * d + c] * kc;
        }
#pragma unroll
        for (int r = 0; r < R; ++r) {
            const bool seen = j < tk && att_visible(causal, tq, tk, row0 + r, j);
            // every row sees key 0, so m_new is finite from the first tile on (unless the inputs hold NaN)
            const A tile_max = att_warp_max(seen ? s[r] : -kiln_inf<A>());
            const A m_new = tile_max > m[r] ? tile_max : m[r];
            const A alpha = kiln_exp(m[r] - m_new); // 0 on the first tile (m = -inf)
            m[r] = m_new;
            l[r] *= alpha;
#pragma unroll
            for (int c = 0; c < KILN_ATT_DC; ++c) acc[r][c] *= alpha;
            ps[(warp * R + r) * BK + lane] = seen ? kiln_exp(s[r] - m_new) : (A)0;
        }
        __syncwarp();
        // keys past tk have p = 0 and zero rows in vs
        for (int jj = 0; jj < BK; ++jj) {
            const A *vrow = vs + jj * d;
#pragma unroll
            for (int r = 0; r < R; ++r) {
                const A p = ps[(warp * R + r) * BK + jj];
                l[r] += p;
#pragma unroll
                for (int c = 0; c < KILN_ATT_DC; ++c)
                    if (c * 32 + lane < d) acc[r][c] += p * vrow[c * 32 + lane];
            }
        }
    }
#pragma unroll
    for (int r = 0; r < R; ++r) {
        const unsigned i = row0 + r;
        if (i >= tq) break;
        const A inv = (A)1 / l[r];
#pragma unroll
        for (int c = 0; c < KILN_ATT_DC; ++c)
            if (c * 32 + lane < d) o[(head * tq + i) * d + c * 32 + lane] = F::down(acc[r][c] * inv);
        if (lane == 0) lse[head * tq + i] = m[r] + kiln_log(l[r]);
    }
}

// Tensor-core forward for bf16/f16 (sm_80+): the same algorithm with 16 query rows per warp (64 per
// block) and mma.sync m16n8k16 for both products, f32 accumulation. Q, K and V tiles sit in shared
// memory as T, rows padded to dp + 8 elements (dp = d rounded up to 16, zero-filled), so that every
// ldmatrix row is 16-byte aligned and the 8 rows of one matrix fall in different banks. Per warp and
// key tile of 32: S (16x32) = 4 n8-tiles of mma over dp/16 k-steps (Q fragments loaded once, K by
// ldmatrix), masked and scaled in f32; the online softmax works on the accumulator fragments (each row is
// spread over the 4 lanes of a quad: 2 shuffles per max); P is rounded to T and repacked from the
// accumulator layout straight into A fragments (FlashAttention-2's register reuse), V comes by
// ldmatrix.trans, and O (16 x dp) stays in 4 x dp/8 f32 registers per lane.
template <typename T>
__device__ __forceinline__ void attention_fwd_mma_impl(const T *__restrict__ q, const T *__restrict__ k,
                                                       const T *__restrict__ v, T *__restrict__ o,
                                                       float *__restrict__ lse, unsigned tq, unsigned tk, unsigned d,
                                                       int causal, double scale_f64) {
    typedef KilnFloat<T> F;
    constexpr int ROWS = 16, BQ = KILN_ATT_WARPS * ROWS, BK = KILN_ATT_KEYS, KC = 128 / 16, DT = 128 / 8;
    const unsigned dp = (d + 15) / 16 * 16, ld = dp + 8;
    KILN_DYNAMIC_SMEM(T, smem);
    T *qs = smem;         // [BQ][ld]
    T *ks = qs + BQ * ld; // [BK][ld]
    T *vs = ks + BK * ld; // [BK][ld]
    const unsigned lane = threadIdx.x % 32, warp = threadIdx.x / 32, g = lane / 4, t = lane % 4;
    const unsigned long long head = blockIdx.x;
    const unsigned q0 = blockIdx.y * BQ, row0 = q0 + warp * ROWS;
    const float scale = (float)scale_f64;
    q += head * tq * d;
    k += head * tk * d;
    v += head * tk * d;
    // rows [row0, row0 + rows) of x [n, d] into dst [rows][ld], zeros past n and past d
    auto load = [&](T *dst, const T *x, unsigned first, unsigned rows, unsigned n) {
        for (unsigned e = threadIdx.x; e < rows * dp; e += blockDim.x) {
            const unsigned r = e / dp, c = e - r * dp;
            dst[r * ld + c] = first + r < n && c < d ? x[(unsigned long long)(first + r) * d + c] : F::down(0.0f);
        }
    };
    load(qs, q, q0, BQ, tq);
    __syncthreads();
    unsigned qa[KC][4];
#pragma unroll
    for (int kc = 0; kc < KC; ++kc)
        if (kc * 16 < (int)dp) kiln_ldmatrix_x4(qa[kc], qs + (warp * ROWS + lane % 16) * ld + kc * 16 + (lane / 16) * 8);
    float m[2] = {-kiln_inf<float>(), -kiln_inf<float>()}, l[2] = {0.0f, 0.0f}, acc[DT][4];
#pragma unroll
    for (int dt = 0; dt < DT; ++dt) acc[dt][0] = acc[dt][1] = acc[dt][2] = acc[dt][3] = 0.0f;
    const unsigned nkeys = att_keys_seen(causal, tq, tk, min(q0 + BQ, tq) - 1);
    for (unsigned k0 = 0; k0 < nkeys; k0 += BK) {
        __syncthreads(); // the previous tile is consumed
        load(ks, k, k0, BK, tk);
        load(vs, v, k0, BK, tk);
        __syncthreads();
        if (causal && !att_visible(causal, tq, tk, row0 + ROWS - 1, k0)) continue; // the warp's rows see none of it
        float s[BK / 8][4];
#pragma unroll
        for (int nt = 0; nt < BK / 8; ++nt) {
            s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
#pragma unroll
            for (int kc = 0; kc < KC; ++kc) {
                if (kc * 16 < (int)dp) {
                    unsigned kb[2];
                    kiln_ldmatrix_x2(kb, ks + (nt * 8 + lane % 8) * ld + kc * 16 + ((lane / 8) % 2) * 8);
                    kiln_mma_m16n8k16<T>(s[nt], qa[kc], kb);
                }
            }
        }
        // rows g (elements 0, 1) and g + 8 (elements 2, 3) of the warp's 16
        float tile_max[2] = {-kiln_inf<float>(), -kiln_inf<float>()};
#pragma unroll
        for (int nt = 0; nt < BK / 8; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const unsigned i = row0 + g + (e / 2) * 8, j = k0 + nt * 8 + 2 * t + e % 2;
                s[nt][e] = j < tk && att_visible(causal, tq, tk, i, j) ? s[nt][e] * scale : -kiln_inf<float>();
                tile_max[e / 2] = fmaxf(tile_max[e / 2], s[nt][e]);
            }
        float alpha[2], m_new[2];
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            tile_max[h] = fmaxf(tile_max[h], __shfl_xor_sync(KILN_FULL_MASK, tile_max[h], 1));
            tile_max[h] = fmaxf(tile_max[h], __shfl_xor_sync(KILN_FULL_MASK, tile_max[h], 2));
            m_new[h] = fmaxf(m[h], tile_max[h]); // finite: every row sees key 0 in the first tile
            alpha[h] = kiln_exp(m[h] - m_new[h]);
            m[h] = m_new[h];
            l[h] *= alpha[h];
        }
#pragma unroll
        for (int dt = 0; dt < DT; ++dt)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[dt][e] *= alpha[e / 2];
        unsigned pa[BK / 16][4];
#pragma unroll
        for (int nt = 0; nt < BK / 8; ++nt) {
            T p[4];
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const float pe = s[nt][e] == -kiln_inf<float>() ? 0.0f : kiln_exp(s[nt][e] - m_new[e / 2]);
                l[e / 2] += pe;
                p[e] = F::down(pe);
            }
            // the accumulator layout of S tiles 2kk and 2kk + 1 is the A layout of P's k-step kk
            pa[nt / 2][(nt % 2) * 2] = kiln_pack_b16(p[0], p[1]);
            pa[nt / 2][(nt % 2) * 2 + 1] = kiln_pack_b16(p[2], p[3]);
        }
#pragma unroll
        for (int dt = 0; dt < DT; ++dt) {
            if (dt * 8 < (int)dp) {
#pragma unroll
                for (int kk = 0; kk < BK / 16; ++kk) {
                    unsigned vb[2];
                    kiln_ldmatrix_x2_trans(vb, vs + (kk * 16 + lane % 16) * ld + dt * 8);
                    kiln_mma_m16n8k16<T>(acc[dt], pa[kk], vb);
                }
            }
        }
    }
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        l[h] += __shfl_xor_sync(KILN_FULL_MASK, l[h], 1);
        l[h] += __shfl_xor_sync(KILN_FULL_MASK, l[h], 2);
        const unsigned i = row0 + g + h * 8;
        if (i >= tq) continue;
        const float inv = 1.0f / l[h];
#pragma unroll
        for (int dt = 0; dt < DT; ++dt)
#pragma unroll
            for (int e = 0; e < 2; ++e) {
                const unsigned c = dt * 8 + 2 * t + e;
                if (c < d) o[(head * tq + i) * d + c] = F::down(acc[dt][h * 2 + e] * inv);
            }
        if (t == 0) lse[head * tq + i] = m[h] + kiln_log(l[h]);
    }
}

template <typename T>
__device__ __forceinline__ void attention_bwd_dot_impl(const T *__restrict__ o, const T *__restrict__ dout,
                                                       typename KilnFloat<T>::Acc *__restrict__ dvec,
                                                       unsigned long long rows, unsigned d) {
    typedef KilnFloat<T> F;
    typedef typename F::Acc A;
    for (unsigned long long i = kiln_thread_index(); i < rows; i += kiln_thread_count()) {
        A acc = (A)0;
        for (unsigned c = 0; c < d; ++c) acc += F::up(o[i * d + c]) * F::up(dout[i * d + c]);
        dvec[i] = acc;
    }
}

template <typename T>
__device__ __forceinline__ void attention_bwd_dkdv_impl(const T *__restrict__ q, const T *__restrict__ k,
                                                        const T *__restrict__ v, const T *__restrict__ dout,
                                                        const typename KilnFloat<T>::Acc *__restrict__ lse,
                                                        const typename KilnFloat<T>::Acc *__restrict__ dvec,
                                                        T *__restrict__ dk, T *__restrict__ dv, unsigned tq,
                                                        unsigned tk, unsigned d, int causal, double scale_f64) {
    typedef KilnFloat<T> F;
    typedef typename F::Acc A;
    constexpr int R = AttRows<A>::value, BKV = KILN_ATT_WARPS * R, BQ = KILN_ATT_KEYS;
    KILN_DYNAMIC_SMEM(A, smem);
    A *ks = smem;              // [BKV][d]: the block's keys (read as broadcasts)
    A *vs = ks + BKV * d;      // [BKV][d]
    A *qs = vs + BKV * d;      // [BQ][d + 1]: the query tile, one row per lane
    A *gs = qs + BQ * (d + 1); // [BQ][d + 1]: the dO tile
    A *ls = gs + BQ * (d + 1); // [BQ]: lse of the tile's rows
    A *ds = ls + BQ;           // [BQ]: D of the tile's rows
    A *pw = ds + BQ;           // [BKV][BQ]: P of each key against the tile's rows
    A *sw = pw + BKV * BQ;     // [BKV][BQ]: dS
    const unsigned lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const unsigned long long head = blockIdx.x;
    const unsigned k0 = blockIdx.y * BKV, key0 = k0 + warp * R; // first key of the block, of the warp
    const A scale = (A)scale_f64;
    q += head * tq * d;
    dout += head * tq * d;
    lse += head * tq;
    dvec += head * tq;

    att_load_tile(ks, d, k + head * tk * d, k0, BKV, tk, d, (A)1);
    att_load_tile(vs, d, v + head * tk * d, k0, BKV, tk, d, (A)1);
    A dka[R][KILN_ATT_DC], dva[R][KILN_ATT_DC];
#pragma unroll
    for (int r = 0; r < R; ++r)
#pragma unroll
        for (int c = 0; c < KILN_ATT_DC; ++c) dka[r][c] = dva[r][c] = (A)0;
    // the first query that sees key k0 (causal: its position tk - tq + i reaches k0)
    const unsigned first = causal && k0 + tq > tk ? k0 + tq - tk : 0;
    for (unsigned i0 = first; i0 < tq; i0 += BQ) {
        __syncthreads(); // the previous tile is consumed (and the K/V tiles stored, the first time)
        att_load_tile(qs, d + 1, q, i0, BQ, tq, d, (A)1);
        att_load_tile(gs, d + 1, dout, i0, BQ, tq, d, (A)1);
        if (threadIdx.x < BQ) {
            const bool live = i0 + threadIdx.x < tq;
            ls[threadIdx.x] = live ? lse[i0 + threadIdx.x] : (A)0;
            ds[threadIdx.x] = live ? dvec[i0 + threadIdx.x] : (A)0;
        }
        __syncthreads();
        if (causal && !att_visible(causal, tq, tk, i0 + BQ - 1, key0)) continue; // the tile sees none of the warp's keys
        const unsigned i = i0 + lane;
        A s[R], dp[R];
#pragma unroll
        for (int r = 0; r < R; ++r) s[r] = dp[r] = (A)0;
        for (unsigned c = 0; c < d; ++c) {
            const A qc = qs[lane * (d + 1) + c], gc = gs[lane * (d + 1) + c];
#pragma unroll
            for (int r = 0; r < R; ++r) {
                s[r] += qc * ks[(warp * R + r) * d + c];
                dp[r] += gc * vs[(warp * R + r) * d + c];
            }
        }
#pragma unroll
        for (int r = 0; r < R; ++r) {
            const unsigned j = key0 + r;
            const bool seen = i < tq && j < tk && att_visible(causal, tq, tk, i, j);
            const A p = seen ? kiln_exp(s[r] * scale - ls[lane]) : (A)0;
            pw[(warp * R + r) * BQ + lane] = p;
            sw[(warp * R + r) * BQ + lane] = p * (dp[r] - ds[lane]);
        }
        __syncwarp();
        for (int ii = 0; ii < BQ; ++ii) {
            const A *qrow = qs + ii * (d + 1), *grow = gs + ii * (d + 1);
#pragma unroll
            for (int r = 0; r < R; ++r) {
                const A p = pw[(warp * R + r) * BQ + ii], dsv = sw[(warp * R + r) * BQ + ii];
#pragma unroll
                for (int c = 0; c < KILN_ATT_DC; ++c) {
                    if (c * 32 + lane < d) {
                        dva[r][c] += p * grow[c * 32 + lane];
                        dka[r][c] += dsv * qrow[c * 32 + lane];
                    }
                }
            }
        }
    }
#pragma unroll
    for (int r = 0; r < R; ++r) {
        const unsigned j = key0 + r;
        if (j >= tk) break;
#pragma unroll
        for (int c = 0; c < KILN_ATT_DC; ++c) {
            if (c * 32 + lane < d) {
                dk[(head * tk + j) * d + c * 32 + lane] = F::down(dka[r][c] * scale);
                dv[(head * tk + j) * d + c * 32 + lane] = F::down(dva[r][c]);
            }
        }
    }
}

template <typename T>
__device__ __forceinline__ void attention_bwd_dq_impl(const T *__restrict__ q, const T *__restrict__ k,
                                                      const T *__restrict__ v, const T *__restrict__ dout,
                                                      const typename KilnFloat<T>::Acc *__restrict__ lse,
                                                      const typename KilnFloat<T>::Acc *__restrict__ dvec,
                                                      T *__restrict__ dq, unsigned tq, unsigned tk, unsigned d,
                                                      int causal, double scale_f64) {
    typedef KilnFloat<T> F;
    typedef typename F::Acc A;
    constexpr int R = AttRows<A>::value, BQ = KILN_ATT_WARPS * R, BK = KILN_ATT_KEYS;
    KILN_DYNAMIC_SMEM(A, smem);
    A *qs = smem;              // [BQ][d]: the block's queries (read as broadcasts)
    A *gs = qs + BQ * d;       // [BQ][d]: their dO
    A *ks = gs + BQ * d;       // [BK][d + 1]: the key tile, one row per lane
    A *vs = ks + BK * (d + 1); // [BK][d + 1]
    A *sw = vs + BK * (d + 1); // [BQ][BK]: dS of each row against the tile's keys
    const unsigned lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const unsigned long long head = blockIdx.x;
    const unsigned q0 = blockIdx.y * BQ, row0 = q0 + warp * R;
    const A scale = (A)scale_f64;
    k += head * tk * d;
    v += head * tk * d;

    att_load_tile(qs, d, q + head * tq * d, q0, BQ, tq, d, (A)1);
    att_load_tile(gs, d, dout + head * tq * d, q0, BQ, tq, d, (A)1);
    A l[R], dd[R], acc[R][KILN_ATT_DC];
#pragma unroll
    for (int r = 0; r < R; ++r) {
        const bool live = row0 + r < tq;
        l[r] = live ? lse[head * tq + row0 + r] : (A)0;
        dd[r] = live ? dvec[head * tq + row0 + r] : (A)0;
#pragma unroll
        for (int c = 0; c < KILN_ATT_DC; ++c) acc[r][c] = (A)0;
    }
    const unsigned nkeys = att_keys_seen(causal, tq, tk, min(q0 + BQ, tq) - 1);
    for (unsigned k0 = 0; k0 < nkeys; k0 += BK) {
        __syncthreads(); // the previous tile is consumed (and the Q/dO tiles stored, the first time)
        att_load_tile(ks, d + 1, k, k0, BK, tk, d, (A)1);
        att_load_tile(vs, d + 1, v, k0, BK, tk, d, (A)1);
        __syncthreads();
        if (causal && !att_visible(causal, tq, tk, row0 + R - 1, k0)) continue; // the warp's rows see none of it
        const unsigned j = k0 + lane;
        A s[R], dp[R];
#pragma unroll
        for (int r = 0; r < R; ++r) s[r] = dp[r] = (A)0;
        for (unsigned c = 0; c < d; ++c) {
            const A kc = ks[lane * (d + 1) + c], vc = vs[lane * (d + 1) + c];
#pragma unroll
            for (int r = 0; r < R; ++r) {
                s[r] += qs[(warp * R + r) * d + c] * kc;
                dp[r] += gs[(warp * R + r) * d + c] * vc;
            }
        }
#pragma unroll
        for (int r = 0; r < R; ++r) {
            const unsigned i = row0 + r;
            const bool seen = i < tq && j < tk && att_visible(causal, tq, tk, i, j);
            const A p = seen ? kiln_exp(s[r] * scale - l[r]) : (A)0;
            sw[(warp * R + r) * BK + lane] = p * (dp[r] - dd[r]);
        }
        __syncwarp();
        for (int jj = 0; jj < BK; ++jj) {
            const A *krow = ks + jj * (d + 1);
#pragma unroll
            for (int r = 0; r < R; ++r) {
                const A dsv = sw[(warp * R + r) * BK + jj];
#pragma unroll
                for (int c = 0; c < KILN_ATT_DC; ++c)
                    if (c * 32 + lane < d) acc[r][c] += dsv * krow[c * 32 + lane];
            }
        }
    }
#pragma unroll
    for (int r = 0; r < R; ++r) {
        const unsigned i = row0 + r;
        if (i >= tq) break;
#pragma unroll
        for (int c = 0; c < KILN_ATT_DC; ++c)
            if (c * 32 + lane < d) dq[(head * tq + i) * d + c * 32 + lane] = F::down(acc[r][c] * scale);
    }
}

extern "C" __global__ void attention_fwd_f32(const float *q, const float *k, const float *v, float *o, float *lse, unsigned tq,
                                        unsigned tk, unsigned d, int causal, double scale) {
    attention_fwd_impl(q, k, v, o, lse, tq, tk, d, causal, scale);
}

extern "C" __global__ void attention_bwd_dot_f32(const float *o, const float *dout, float *dvec, unsigned long long rows,
                                            unsigned d) {
    attention_bwd_dot_impl(o, dout, dvec, rows, d);
}

extern "C" __global__ void attention_bwd_dkdv_f32(const float *q, const float *k, const float *v, const float *dout,
                                             const float *lse, const float *dvec, float *dk, float *dv, unsigned tq,
                                             unsigned tk, unsigned d, int causal, double scale) {
    attention_bwd_dkdv_impl(q, k, v, dout, lse, dvec, dk, dv, tq, tk, d, causal, scale);
}

extern "C" __global__ void attention_bwd_dq_f32(const float *q, const float *k, const float *v, const float *dout,
                                           const float *lse, const float *dvec, float *dq, unsigned tq, unsigned tk,
                                           unsigned d, int causal, double scale) {
    attention_bwd_dq_impl(q, k, v, dout, lse, dvec, dq, tq, tk, d, causal, scale);
}

extern "C" __global__ void attention_fwd_f64(const double *q, const double *k, const double *v, double *o, double *lse, unsigned tq,
                                        unsigned tk, unsigned d, int causal, double scale) {
    attention_fwd_impl(q, k, v, o, lse, tq, tk, d, causal, scale);
}

extern "C" __global__ void attention_bwd_dot_f64(const double *o, const double *dout, double *dvec, unsigned long long rows,
                                            unsigned d) {
    attention_bwd_dot_impl(o, dout, dvec, rows, d);
}

extern "C" __global__ void attention_bwd_dkdv_f64(const double *q, const double *k, const double *v, const double *dout,
                                             const double *lse, const double *dvec, double *dk, double *dv, unsigned tq,
                                             unsigned tk, unsigned d, int causal, double scale) {
    attention_bwd_dkdv_impl(q, k, v, dout, lse, dvec, dk, dv, tq, tk, d, causal, scale);
}

extern "C" __global__ void attention_bwd_dq_f64(const double *q, const double *k, const double *v, const double *dout,
                                           const double *lse, const double *dvec, double *dq, unsigned tq, unsigned tk,
                                           unsigned d, int causal, double scale) {
    attention_bwd_dq_impl(q, k, v, dout, lse, dvec, dq, tq, tk, d, causal, scale);
}

extern "C" __global__ void attention_fwd_mma_bf16(const __nv_bfloat16 *q, const __nv_bfloat16 *k, const __nv_bfloat16 *v, __nv_bfloat16 *o, float *lse,
                                            unsigned tq, unsigned tk, unsigned d, int causal, double scale) {
    attention_fwd_mma_impl(q, k, v, o, lse, tq, tk, d, causal, scale);
}

extern "C" __global__ void attention_bwd_dot_bf16(const __nv_bfloat16 *o, const __nv_bfloat16 *dout, float *dvec, unsigned long long rows,
                                            unsigned d) {
    attention_bwd_dot_impl(o, dout, dvec, rows, d);
}

extern "C" __global__ void attention_bwd_dkdv_bf16(const __nv_bfloat16 *q, const __nv_bfloat16 *k, const __nv_bfloat16 *v, const __nv_bfloat16 *dout,
                                             const float *lse, const float *dvec, __nv_bfloat16 *dk, __nv_bfloat16 *dv, unsigned tq,
                                             unsigned tk, unsigned d, int causal, double scale) {
    attention_bwd_dkdv_impl(q, k, v, dout, lse, dvec, dk, dv, tq, tk, d, causal, scale);
}

extern "C" __global__ void attention_bwd_dq_bf16(const __nv_bfloat16 *q, const __nv_bfloat16 *k, const __nv_bfloat16 *v, const __nv_bfloat16 *dout,
                                           const float *lse, const float *dvec, __nv_bfloat16 *dq, unsigned tq, unsigned tk,
                                           unsigned d, int causal, double scale) {
    attention_bwd_dq_impl(q, k, v, dout, lse, dvec, dq, tq, tk, d, causal, scale);
}

extern "C" __global__ void attention_fwd_mma_f16(const __half *q, const __half *k, const __half *v, __half *o, float *lse,
                                            unsigned tq, unsigned tk, unsigned d, int causal, double scale) {
    attention_fwd_mma_impl(q, k, v, o, lse, tq, tk, d, causal, scale);
}

extern "C" __global__ void attention_bwd_dot_f16(const __half *o, const __half *dout, float *dvec, unsigned long long rows,
                                            unsigned d) {
    attention_bwd_dot_impl(o, dout, dvec, rows, d);
}

extern "C" __global__ void attention_bwd_dkdv_f16(const __half *q, const __half *k, const __half *v, const __half *dout,
                                             const float *lse, const float *dvec, __half *dk, __half *dv, unsigned tq,
                                             unsigned tk, unsigned d, int causal, double scale) {
    attention_bwd_dkdv_impl(q, k, v, dout, lse, dvec, dk, dv, tq, tk, d, causal, scale);
}

extern "C" __global__ void attention_bwd_dq_f16(const __half *q, const __half *k, const __half *v, const __half *dout,
                                           const float *lse, const float *dvec, __half *dq, unsigned tq, unsigned tk,
                                           unsigned d, int causal, double scale) {
    attention_bwd_dq_impl(q, k, v, dout, lse, dvec, dq, tq, tk, d, causal, scale);
}
