// attention.cu — fused scaled-dot-product attention, forward and backward, FlashAttention-2 style:
// a SIMT path for f32/f64 and a tensor-core (mma.sync) path for bf16/f16; head dims up to 128 by
// predication.
//   forward:  O = softmax(s·Q·Kᵀ)·V per head, s = 1/√d, and lse_i = log Σ_j exp(s·q_i·k_j)
//   backward: P = exp(s·Q·Kᵀ − lse), D_i = Σ dO_i∘O_i, dS = P∘(dO·Vᵀ − D),
//             dQ = s·dS·K, dK = s·dSᵀ·Q, dV = Pᵀ·dO
// q, o, dO are [heads, tq, d], k, v, dK, dV are [heads, tk, d], contiguous; lse and D are [heads, tq] in
// the arithmetic type A (f32 for f32/bf16/f16, f64 for f64). Causal: query i sits at absolute position
// tk − tq + i (the launch wrapper ensures tq <= tk) and sees keys 0..=tk − tq + i.
// Grouped-query attention (Llama 2 70B, SmolLM2, ...): k, v, dK, dV have heads / group heads, and query
// head h reads key/value head h / group (a [B, H] head index over [B, H / group] kv heads) in place,
// never a repeated copy; group = 1 is multi-head attention. The dK/dV kernels' blocks own a key/value
// head's keys and stream the Q/dO tiles of its `group` query heads one after another, so dK and dV sum
// over the group in registers, in a fixed order.
//
// Algorithm. Every block works on one head (blockIdx.x) and one tile (blockIdx.y) with 4 warps.
// SIMT (f32/f64): a lane owns head dims lane, lane + 32, lane + 64, lane + 96 (predicated past d), so
// accumulators stay in registers for d <= 128; R rows per warp (8 in f32, 4 in f64).
//   attention_fwd: a Q tile of 4R rows (R per warp) sits in shared memory; K/V tiles of 32 keys stream
//     through shared memory, one key per lane for the scores, then each lane accumulates its dims of
//     P·V from the warp's probabilities (written to shared memory, read back as broadcasts). The online
//     softmax keeps a running max m and sum l per row and rescales l and O by exp(m_old − m_new) when m
//     grows. Key tiles past the block's last visible key are never loaded (causal tile skipping), and a
//     warp skips the tiles its own rows cannot see. Writes O = acc / l and lse = m + log l.
//   attention_bwd_dot: D_i = Σ_c dO_ic·O_ic, one warp per row (every dtype).
//   attention_bwd_dkdv: a block owns 4R keys (R per warp) and keeps their dK, dV in registers while Q/dO
//     tiles of 32 query rows (one per lane) stream through shared memory, starting at the first query
//     that sees the block's first key.
//   attention_bwd_dq: a block owns 4R query rows and keeps their dQ in registers while K/V tiles of 32 keys
//     stream through shared memory, stopping after the last key its rows see.
// Tensor cores (bf16/f16): the same three passes with 16 rows per warp (64 per block), mma.sync m16n8k16
// with f32 accumulators, ldmatrix fragments, and the streamed tiles of 32 rows double-buffered by cp.async
// (see the section's comments): attention_fwd_mma, attention_bwd_dkdv_mma (64 keys per block, Q/dO
// tiles streamed), attention_bwd_dq_mma (64 queries per block, K/V tiles streamed). P and dS are rounded
// to T between the two products of each pass, as in FlashAttention-2.
// Determinism: no atomics. Each output element is accumulated by one thread in a fixed order, at the
// price of recomputing P and dP in both the dK/dV and the dQ kernels: 14·tq·tk·d backward FLOPs instead
// of FlashAttention-2's 10, whose dQ is added with float atomics from the dK/dV kernel (an order that
// varies from run to run). The deterministic alternative, per-key-block dQ partials summed in order by
// a second pass, moves ceil(tk/64)·tq·d f32 partials through memory twice: at GPT-2's shapes (T = 1024,
// d = 64, 96 heads) 0.75 GiB, half of it with causal skipping, which is 0.08 ms at an H200's nominal 4.8
// TB/s; the recomputation is 13 GFLOP (causal), 0.03 ms even at half the H200's 989 TFLOP/s bf16 peak.
// Launch (src/backend/cuda/attention.rs): 128 threads per block; fwd and dq grids (heads, ceil(tq/B)),
// dkdv grid (heads / group, ceil(tk/B)), B = 4R (SIMT) or 64 (tensor cores); bwd_dot a grid-stride 1-D grid.
// Dynamic shared memory, SIMT: fwd (4R·d + 32·(d+1) + 32·d + 4R·32)·sizeof(A), dkdv (2·4R·d + 2·32·(d+1)
// + 64 + 2·4R·32)·sizeof(A), dq (2·4R·d + 2·32·(d+1) + 4R·32)·sizeof(A); tensor cores, with
// ld = ceil(d/16)·16 + 8: fwd (64 + 4·32)·ld·sizeof(T), dkdv and dq (2·64 + 4·32)·ld·sizeof(T) (51 and
// 68 KiB at d = 128; over 48 KiB the wrapper raises the kernel's limit).
// Roofline per head (non-causal; causal does about half the FLOPs): forward 4·tq·tk·d FLOPs and tq·tk
// exps, bytes (2·tq·d + 2·tk·d·ceil(tq/B))·sizeof(T) (K and V re-read by every query block, mostly from
// L2); backward 8·tq·tk·d FLOPs for dK/dV (S and dP recomputed, dV, dK) reading (2·tk·d +
// 2·tq·d·ceil(tk/B))·sizeof(T) + 8·tq·ceil(tk/B) (lse, D) and writing 2·tk·d·sizeof(T), 6·tq·tk·d for
// dQ reading (2·tq·d + 2·tk·d·ceil(tq/B))·sizeof(T) and writing tq·d·sizeof(T), and D's pass
// 2·tq·d·sizeof(T) + 4·tq. The SIMT path is bound by the FMAs it issues from shared memory (about one
// shared load per FMA); the tensor-core kernels likely by their ldmatrix traffic (per warp about 13
// FLOPs per shared-memory byte in dK/dV, 16 in dQ and the forward; not yet measured on a GPU).
// Occupancy: by registers two blocks (8 warps) fit on an SM (the dK/dV kernel's 238 registers on sm_80;
// FlashAttention-2's backward runs 8 warps per SM too); tests/ptxas.rs lists every kernel's registers.
// Checks: tests/devices.rs attention_sequence_lengths_and_head_dims (tq 1, 17, 64, 65, 129 and tq < tk,
// d 32, 64, 80, 128, causal or not; every shape in bf16, i.e. on the tensor cores, and in one of
// f32/f64/f16; values and the three gradients against the CPU) and attention_small_shapes (proptest:
// tq 0..40, tk >= tq, d 1, 7, 32, 33, 100 — the element-by-element staging — every dtype, q transposed
// or narrowed). On Emu the bf16/f16 results stay within 37% of that file's tolerances; with a fragment
// index broken in the dQ kernel, the wrong n8 half taken for dV, or the forward reading the other K/V
// buffer, the comparisons fail.
// Benchmarks: kiln bench attention_fwd, attention_fwd_bwd (f32, fused against the composed tensor ops),
// attention_fwd_bf16, attention_bwd_bf16 (the backward alone) at GPT-2's shapes (8 x 12 heads of 64,
// T = 1024, causal) and 8 x 16 heads of 128 in bf16; cargo bench --bench attention. Issue 6's target for
// the backward is 60% of the forward's rate (FlashAttention-2's level) counted with FlashAttention's 10
// FLOPs: these kernels do 1.4 times that work, so they need about 84% of the forward's throughput.
// Headroom (not yet measured on a GPU; to pick from once it is): larger tiles per warp (FlashAttention-2's
// backward uses 128 x 128 blocks of 8 warps at d = 64); exp2 with log2(e) folded into the scale; D
// computed inside the dQ kernel from its O/dO tiles instead of a one-thread-per-row pass; Hopper's wgmma
// and TMA. (O, dQ, dK and dV are stored as 16-byte runs of 8 head dims per lane when d % 8 == 0:
// att_store_rows.)
#include "common.cuh"

#define KILN_ATT_WARPS 4
#define KILN_ATT_KEYS 32 // keys (or query rows) per streamed tile (SIMT: one per lane)
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
                                                   unsigned tk, unsigned d, unsigned group, int causal, double scale_f64) {
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
    k += (head / group) * tk * d; // grouped-query attention: this query head's key/value head
    v += (head / group) * tk * d;

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

template <typename T>
__device__ __forceinline__ void attention_bwd_dot_impl(const T *__restrict__ o, const T *__restrict__ dout,
                                                       typename KilnFloat<T>::Acc *__restrict__ dvec,
                                                       unsigned long long rows, unsigned d) {
    typedef KilnFloat<T> F;
    typedef typename F::Acc A;
    // One warp per row (the launch has 32 threads per row, blocks of whole warps): lane l sums
    // columns l, l + 32, ..., so each load reads 32 consecutive elements of the row (one thread per
    // row read 32 rows' elements c at a stride of d: a sector per lane), then a butterfly sums the
    // lanes. The row index depends only on the warp, so every lane of a warp runs the same loops.
    const unsigned lane = threadIdx.x % 32;
    const unsigned long long warps = kiln_thread_count() / 32;
    for (unsigned long long i = kiln_thread_index() / 32; i < rows; i += warps) {
        A acc = (A)0;
        for (unsigned c = lane; c < d; c += 32) acc += F::up(o[i * d + c]) * F::up(dout[i * d + c]);
#pragma unroll
        for (int offset = 16; offset > 0; offset >>= 1) acc += __shfl_xor_sync(KILN_FULL_MASK, acc, offset);
        if (lane == 0) dvec[i] = acc;
    }
}

template <typename T>
__device__ __forceinline__ void attention_bwd_dkdv_impl(const T *__restrict__ q, const T *__restrict__ k,
                                                        const T *__restrict__ v, const T *__restrict__ dout,
                                                        const typename KilnFloat<T>::Acc *__restrict__ lse,
                                                        const typename KilnFloat<T>::Acc *__restrict__ dvec,
                                                        T *__restrict__ dk, T *__restrict__ dv, unsigned tq,
                                                        unsigned tk, unsigned d, unsigned group, int causal, double scale_f64) {
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
    const unsigned long long head = blockIdx.x; // a key/value head, read by `group` query heads
    const unsigned k0 = blockIdx.y * BKV, key0 = k0 + warp * R; // first key of the block, of the warp
    const A scale = (A)scale_f64;

    att_load_tile(ks, d, k + head * tk * d, k0, BKV, tk, d, (A)1);
    att_load_tile(vs, d, v + head * tk * d, k0, BKV, tk, d, (A)1);
    A dka[R][KILN_ATT_DC], dva[R][KILN_ATT_DC];
#pragma unroll
    for (int r = 0; r < R; ++r)
#pragma unroll
        for (int c = 0; c < KILN_ATT_DC; ++c) dka[r][c] = dva[r][c] = (A)0;
    // the first query that sees key k0 (causal: its position tk - tq + i reaches k0)
    const unsigned first = causal && k0 + tq > tk ? k0 + tq - tk : 0;
    // grouped-query attention: the query heads of this key/value head, one after another, their
    // contributions summed in the same registers (one query head per key/value head: group = 1)
    for (unsigned gi = 0; gi < group; ++gi)
    for (unsigned i0 = first; i0 < tq; i0 += BQ) {
        const unsigned long long qh = head * group + gi;
        __syncthreads(); // the previous tile is consumed (and the K/V tiles stored, the first time)
        att_load_tile(qs, d + 1, q + qh * tq * d, i0, BQ, tq, d, (A)1);
        att_load_tile(gs, d + 1, dout + qh * tq * d, i0, BQ, tq, d, (A)1);
        if (threadIdx.x < BQ) {
            const bool live = i0 + threadIdx.x < tq;
            ls[threadIdx.x] = live ? lse[qh * tq + i0 + threadIdx.x] : (A)0;
            ds[threadIdx.x] = live ? dvec[qh * tq + i0 + threadIdx.x] : (A)0;
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
                                                      T *__restrict__ dq, unsigned tq, unsigned tk, unsigned d, unsigned group,
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
    k += (head / group) * tk * d; // grouped-query attention: this query head's key/value head
    v += (head / group) * tk * d;

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

// ---------------------------------------------------------------------------------------------------
// Tensor cores (bf16/f16, sm_80+): mma.sync m16n8k16 with f32 accumulation, ldmatrix and cp.async,
// all through common.cuh's helpers. Tiles sit in shared memory as T, row-major, with rows padded to
// ld = dp + 8 elements (dp = d rounded up to 16, columns d..dp zero-filled), so that every ldmatrix row
// and every cp.async destination is 16-byte aligned and the 8 rows of one 8x8 matrix fall in different
// banks. A warp owns 16 rows (queries; keys in the dK/dV kernel) and meets the streamed tiles 32 rows at
// a time: one m16 row block against 4 n8 tiles. Head dims are k-steps of 16 (the score products S and
// dP) or n8 tiles (the output products); the register arrays are sized for d = 128 and predicated on dp.

#define KILN_ATT_MMA_ROWS 16   // rows per warp
#define KILN_ATT_KC (128 / 16) // k-steps of 16 head dims
#define KILN_ATT_DT (128 / 8)  // n8 tiles of head dims

// Stores a warp's 16 rows of f32 accumulators as T: acc[dt] is the C fragment of head dims 8 dt ..
// 8 dt + 7, the lane's row g + 8 h (h = 0, 1) is scaled by mul[h] and goes to row row0 + g + 8 h of x
// [n, d]; rows past n and columns past d are left alone. Where d % 8 == 0 and x is 16-byte aligned, each
// lane stores runs of 8 head dims, one 16-byte store each (kiln_quad_transpose: a warp's store writes 8
// rows x 64 contiguous bytes, whole sectors when d % 16 == 0); otherwise one element at a time in
// fragment order (a warp's store: 8 rows x 4 lanes x 2 bytes). Warp-wide.
template <typename T>
__device__ __forceinline__ void att_store_rows(T *x, const float (&acc)[KILN_ATT_DT][4], const float (&mul)[2],
                                               unsigned row0, unsigned n, unsigned d) {
    static_assert(sizeof(T) == 2, "a run of 8 columns is one 16-byte store");
    typedef KilnFloat<T> F;
    const unsigned lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
    const bool runs = d % 8 == 0 && kiln_aligned<16>(x); // the same for the whole launch
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        const unsigned i = row0 + g + h * 8;
        if (runs) {
#pragma unroll
            for (int dt0 = 0; dt0 < KILN_ATT_DT; dt0 += 4) {
                if (dt0 * 8 >= (int)d) break; // warp-uniform, as the shuffles need
                float v[8];
#pragma unroll
                for (int u = 0; u < 4; ++u) {
                    v[2 * u] = acc[dt0 + u][2 * h] * mul[h];
                    v[2 * u + 1] = acc[dt0 + u][2 * h + 1] * mul[h];
                }
                kiln_quad_transpose(v); // v: head dims 8 (dt0 + t) .. + 7
                const unsigned c = (dt0 + t) * 8;
                if (i < n && c < d) {
                    KilnPack<T, 8> out;
#pragma unroll
                    for (int e = 0; e < 8; ++e) out.v[e] = F::down(v[e]);
                    *reinterpret_cast<KilnPack<T, 8> *>(x + (unsigned long long)i * d + c) = out;
                }
            }
        } else if (i < n) {
#pragma unroll
            for (int dt = 0; dt < KILN_ATT_DT; ++dt)
#pragma unroll
                for (int e = 0; e < 2; ++e) {
                    const unsigned c = dt * 8 + 2 * t + e;
                    if (c < d) x[(unsigned long long)i * d + c] = F::down(acc[dt][2 * h + e] * mul[h]);
                }
        }
    }
}

// Whether the rows of x [n, d] can be staged in 16-byte copies (whole chunks, aligned).
template <typename T> __device__ __forceinline__ bool att_vec(const T *x, unsigned d) {
    return d % (16 / sizeof(T)) == 0 && kiln_aligned<16>(x);
}

// Rows [first, first + rows) of x [n, d] into dst [rows][dp + 8], zeros past n and past d. With `vec`
// (att_vec) by cp.async, which the caller commits and waits for; otherwise element by element. Every
// thread of the block takes part. A 16-byte store is done by quarter warps, so each group of 8 lanes
// must cover the 32 banks once: rows of 8 or more chunks give a quarter warp 8 consecutive chunks of
// one row; shorter rows (d <= 48: 2, 4 or 6 chunks, padded to an odd 3, 5 or 7) give it one chunk
// column of 8 consecutive rows, which start in 8 distinct 16-byte bank groups. (Eight lanes on two
// rows of 4 chunks put chunk 0 of the second row, 80 bytes on, in the banks of the first row's chunk
// 1, ...: 2 wavefronts per quarter warp.) `rows` is a multiple of 8 (the tiles are 32 or 64 rows).
template <typename T>
__device__ __forceinline__ void att_stage(T *dst, const T *__restrict__ x, unsigned first, unsigned rows, unsigned n,
                                          unsigned d, unsigned dp, bool vec) {
    const unsigned ld = dp + 8;
    if (vec) {
        const unsigned chunks = dp / 8; // 16-byte chunks per row
        for (unsigned e = threadIdx.x; e < rows * chunks; e += blockDim.x) {
            const unsigned group = e / (8 * chunks), w = e - group * 8 * chunks; // 8 rows per group
            const unsigned r = chunks >= 8 ? e / chunks : group * 8 + w % 8;
            const unsigned c = (chunks >= 8 ? e - r * chunks : w / 8) * 8;
            const bool in = first + r < n && c < d; // whole chunks: d is a multiple of 8
            kiln_cp_async_16(dst + r * ld + c, in ? x + (unsigned long long)(first + r) * d + c : x, in ? 16u : 0u);
        }
    } else {
        for (unsigned e = threadIdx.x; e < rows * dp; e += blockDim.x) {
            const unsigned r = e / dp, c = e - r * dp;
            dst[r * ld + c] =
                first + r < n && c < d ? x[(unsigned long long)(first + r) * d + c] : KilnFloat<T>::down(0.0f);
        }
    }
}

// Fragments of a row-major shared-memory tile s (row stride ld), with each lane's ldmatrix row address
// as the PTX ISA lays the matrices out (see common.cuh):
//   att_frag_a:    the A fragment of the 16x16 block at row r0, column c0;
//   att_frag_b_nk: the B fragments of the n8 tiles n0 and n0 + 8 (b[0..1] and b[2..3]) of the k-step at
//                  k0, for B[k][n] = s[n][k] (one row of s per n, e.g. keys against head dims);
//   att_frag_b_kn: the same for B[k][n] = s[k][n] (one row of s per k), by ldmatrix .trans.
template <typename T>
__device__ __forceinline__ void att_frag_a(unsigned (&a)[4], const T *s, unsigned ld, unsigned r0, unsigned c0) {
    const unsigned lane = threadIdx.x % 32;
    kiln_ldmatrix_x4(a, s + (r0 + lane % 16) * ld + c0 + (lane / 16) * 8);
}
template <typename T>
__device__ __forceinline__ void att_frag_b_nk(unsigned (&b)[4], const T *s, unsigned ld, unsigned n0, unsigned k0) {
    const unsigned lane = threadIdx.x % 32;
    kiln_ldmatrix_x4(b, s + (n0 + (lane / 16) * 8 + lane % 8) * ld + k0 + ((lane / 8) % 2) * 8);
}
template <typename T>
__device__ __forceinline__ void att_frag_b_kn(unsigned (&b)[4], const T *s, unsigned ld, unsigned k0, unsigned n0) {
    const unsigned lane = threadIdx.x % 32;
    kiln_ldmatrix_x4_trans(b, s + (k0 + lane % 16) * ld + n0 + (lane / 16) * 8);
}

// acc += a·b for n8 tile `h` (0 or 1) of a pair of B fragments.
template <typename T>
__device__ __forceinline__ void att_mma(float (&acc)[4], const unsigned (&a)[4], const unsigned (&b)[4], int h) {
    const unsigned bh[2] = {b[2 * h], b[2 * h + 1]};
    kiln_mma_m16n8k16<T>(acc, a, bh);
}

// The accumulators of two n8 tiles (16 x 16 f32: lo holds columns 0-7, hi 8-15) rounded to T, as the A
// fragment of one k-step of the next product: C's layout of two n8 tiles is A's layout of one k16 step
// (FlashAttention-2's register reuse: P and dS never go through shared memory).
template <typename T>
__device__ __forceinline__ void att_pack_a(unsigned (&a)[4], const float (&lo)[4], const float (&hi)[4]) {
    typedef KilnFloat<T> F;
    a[0] = kiln_pack_b16(F::down(lo[0]), F::down(lo[1])); // row g, columns 2t, 2t + 1
    a[1] = kiln_pack_b16(F::down(lo[2]), F::down(lo[3])); // row g + 8
    a[2] = kiln_pack_b16(F::down(hi[0]), F::down(hi[1])); // row g, columns 2t + 8, 2t + 9
    a[3] = kiln_pack_b16(F::down(hi[2]), F::down(hi[3]));
}

// acc (16 x dp, as DT n8 tiles) += R·B for R the warp's 16 x (16·KSTEPS) accumulator fragments (2·KSTEPS
// n8 tiles, rounded to T and repacked as A fragments by att_pack_a) and B the (16·KSTEPS) x dp tile at
// `tile` in shared memory (row stride ld), read by ldmatrix .trans; column pairs past dp are skipped.
template <typename T, int KSTEPS, int DT>
__device__ __forceinline__ void att_mma_rows_by_tile(float (&acc)[DT][4], const float (&rows)[2 * KSTEPS][4],
                                                     const T *tile, unsigned ld, unsigned dp) {
#pragma unroll
    for (int kk = 0; kk < KSTEPS; ++kk) {
        unsigned a[4];
        att_pack_a<T>(a, rows[2 * kk], rows[2 * kk + 1]);
#pragma unroll
        for (int dn = 0; dn < DT / 2; ++dn) {
            if (dn * 16 < (int)dp) {
                unsigned b[4];
                att_frag_b_kn(b, tile, ld, kk * 16, dn * 16);
                att_mma<T>(acc[2 * dn], a, b, 0);
                att_mma<T>(acc[2 * dn + 1], a, b, 1);
            }
        }
    }
}

// Forward: 16 query rows per warp (64 per block). The Q tile is staged once and kept as A fragments in
// registers; K/V tiles of 32 keys are double-buffered: tile it + 1 is copied (cp.async) while tile it is
// multiplied. Per warp and tile: S (16x32) = 4 n8 tiles over dp/16 k-steps, masked and scaled in f32; the
// online softmax works on the accumulator fragments (each row is spread over the 4 lanes of a quad: 2
// shuffles per max); P is rounded to T and repacked into A fragments, V comes by ldmatrix .trans, and O
// (16 x dp) stays in 4 x dp/8 f32 registers per lane.
template <typename T>
__device__ __forceinline__ void attention_fwd_mma_impl(const T *__restrict__ q, const T *__restrict__ k,
                                                       const T *__restrict__ v, T *__restrict__ o,
                                                       float *__restrict__ lse, unsigned tq, unsigned tk, unsigned d, unsigned group,
                                                       int causal, double scale_f64) {
    constexpr int ROWS = KILN_ATT_MMA_ROWS, BQ = KILN_ATT_WARPS * ROWS, BK = KILN_ATT_KEYS;
    constexpr int KC = KILN_ATT_KC, DT = KILN_ATT_DT;
    const unsigned dp = (d + 15) / 16 * 16, ld = dp + 8;
    KILN_DYNAMIC_SMEM(T, smem);
    T *qs = smem;             // [BQ][ld]
    T *ks = qs + BQ * ld;     // [2][BK][ld]: key tiles, double-buffered
    T *vs = ks + 2 * BK * ld; // [2][BK][ld]
    const unsigned lane = threadIdx.x % 32, warp = threadIdx.x / 32, g = lane / 4, t = lane % 4;
    const unsigned long long head = blockIdx.x;
    const unsigned q0 = blockIdx.y * BQ, row0 = q0 + warp * ROWS;
    const float scale = (float)scale_f64;
    q += head * tq * d;
    k += (head / group) * tk * d; // grouped-query attention: this query head's key/value head
    v += (head / group) * tk * d;
    const bool kvec = att_vec(k, d) && att_vec(v, d);
    const unsigned nkeys = att_keys_seen(causal, tq, tk, min(q0 + BQ, tq) - 1), ntiles = (nkeys + BK - 1) / BK;
    auto stage_kv = [&](unsigned it) {
        att_stage(ks + (it % 2) * BK * ld, k, it * BK, BK, tk, d, dp, kvec);
        att_stage(vs + (it % 2) * BK * ld, v, it * BK, BK, tk, d, dp, kvec);
    };
    att_stage(qs, q, q0, BQ, tq, d, dp, att_vec(q, d));
    kiln_cp_async_commit();
    stage_kv(0); // nkeys >= 1: every row sees key 0
    kiln_cp_async_commit();
    kiln_cp_async_wait<1>(); // this thread's part of the Q tile has landed
    __syncthreads();
    unsigned qa[KC][4];
#pragma unroll
    for (int kc = 0; kc < KC; ++kc)
        if (kc * 16 < (int)dp) att_frag_a(qa[kc], qs, ld, warp * ROWS, kc * 16);
    float m[2] = {-kiln_inf<float>(), -kiln_inf<float>()}, l[2] = {0.0f, 0.0f}, acc[DT][4];
#pragma unroll
    for (int dt = 0; dt < DT; ++dt) acc[dt][0] = acc[dt][1] = acc[dt][2] = acc[dt][3] = 0.0f;
    for (unsigned it = 0; it < ntiles; ++it) {
        const unsigned k0 = it * BK;
        if (it + 1 < ntiles) stage_kv(it + 1);
        kiln_cp_async_commit();  // (an empty group on the last tile keeps the wait below uniform)
        kiln_cp_async_wait<1>(); // tile it has landed ...
        __syncthreads();         // ... for every thread
        // causal: a warp skips the tiles its rows cannot see (warp-uniform, as mma.sync needs)
        if (!causal || att_visible(causal, tq, tk, row0 + ROWS - 1, k0)) {
            const T *kt = ks + (it % 2) * BK * ld, *vt = vs + (it % 2) * BK * ld;
            float s[BK / 8][4];
#pragma unroll
            for (int nt = 0; nt < BK / 8; ++nt) s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
#pragma unroll
            for (int kc = 0; kc < KC; ++kc) {
                if (kc * 16 < (int)dp) {
#pragma unroll
                    for (int np = 0; np < BK / 16; ++np) {
                        unsigned kb[4];
                        att_frag_b_nk(kb, kt, ld, np * 16, kc * 16);
                        att_mma<T>(s[2 * np], qa[kc], kb, 0);
                        att_mma<T>(s[2 * np + 1], qa[kc], kb, 1);
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
            float m_new[2];
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                tile_max[h] = fmaxf(tile_max[h], __shfl_xor_sync(KILN_FULL_MASK, tile_max[h], 1));
                tile_max[h] = fmaxf(tile_max[h], __shfl_xor_sync(KILN_FULL_MASK, tile_max[h], 2));
                m_new[h] = fmaxf(m[h], tile_max[h]); // finite: every row sees key 0 in the first tile
                const float alpha = kiln_exp(m[h] - m_new[h]);
                m[h] = m_new[h];
                l[h] *= alpha;
#pragma unroll
                for (int dt = 0; dt < DT; ++dt) {
                    acc[dt][2 * h] *= alpha;
                    acc[dt][2 * h + 1] *= alpha;
                }
            }
#pragma unroll
            for (int nt = 0; nt < BK / 8; ++nt)
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    s[nt][e] = s[nt][e] == -kiln_inf<float>() ? 0.0f : kiln_exp(s[nt][e] - m_new[e / 2]);
                    l[e / 2] += s[nt][e];
                }
            // O += P·V, the tile's 32 keys as two k-steps
            att_mma_rows_by_tile<T, BK / 16>(acc, s, vt, ld, dp);
        }
        __syncthreads(); // tile it's buffers are consumed before tile it + 2 is staged into them
    }
    float inv[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        l[h] += __shfl_xor_sync(KILN_FULL_MASK, l[h], 1);
        l[h] += __shfl_xor_sync(KILN_FULL_MASK, l[h], 2);
        inv[h] = 1.0f / l[h];
        const unsigned i = row0 + g + h * 8;
        if (i < tq && t == 0) lse[head * tq + i] = m[h] + kiln_log(l[h]);
    }
    att_store_rows(o + head * tq * d, acc, inv, row0, tq, d);
}

// dK/dV on tensor cores: a block owns 64 keys (16 per warp) and streams double-buffered Q/dO tiles of
// 32 query rows, from the first query that sees its first key. Per warp and tile, with the key block
// as the M side: Sᵀ = K·Qᵀ and dPᵀ = V·dOᵀ (16 x 32 each; K, V fragments by ldmatrix, Q, dO as B by
// ldmatrix), Pᵀ = exp(s·Sᵀ − lse) and dSᵀ = Pᵀ∘(dPᵀ − D) on the accumulators (lse and D of the lane's
// query columns read from global memory, 16 floats), then dV += Pᵀ·dO and dK += dSᵀ·Q with Pᵀ, dSᵀ
// repacked as A fragments and dO, Q as B by ldmatrix .trans. dK and dV (16 x dp each) stay in f32
// registers (128 per lane at d = 128); dK is scaled by s once at the end.
template <typename T>
__device__ __forceinline__ void attention_bwd_dkdv_mma_impl(const T *__restrict__ q, const T *__restrict__ k,
                                                            const T *__restrict__ v, const T *__restrict__ dout,
                                                            const float *__restrict__ lse,
                                                            const float *__restrict__ dvec, T *__restrict__ dk,
                                                            T *__restrict__ dv, unsigned tq, unsigned tk, unsigned d, unsigned group,
                                                            int causal, double scale_f64) {
    constexpr int ROWS = KILN_ATT_MMA_ROWS, BKV = KILN_ATT_WARPS * ROWS, BQ = KILN_ATT_KEYS;
    constexpr int KC = KILN_ATT_KC, DT = KILN_ATT_DT;
    const unsigned dp = (d + 15) / 16 * 16, ld = dp + 8;
    KILN_DYNAMIC_SMEM(T, smem);
    T *ks = smem;             // [BKV][ld]: the block's keys
    T *vs = ks + BKV * ld;    // [BKV][ld]: their values
    T *qs = vs + BKV * ld;    // [2][BQ][ld]: query tiles, double-buffered
    T *gs = qs + 2 * BQ * ld; // [2][BQ][ld]: dO tiles
    const unsigned lane = threadIdx.x % 32, warp = threadIdx.x / 32, g = lane / 4, t = lane % 4;
    const unsigned long long head = blockIdx.x; // a key/value head, read by `group` query heads
    const unsigned k0 = blockIdx.y * BKV, key0 = k0 + warp * ROWS; // first key of the block, of the warp
    const float scale = (float)scale_f64;
    k += head * tk * d;
    v += head * tk * d;
    const bool qvec = att_vec(q, d) && att_vec(dout, d);
    // the first query that sees key k0 (causal: its position tk - tq + i reaches k0)
    const unsigned first = causal && k0 + tq > tk ? k0 + tq - tk : 0;
    // grouped-query attention: tile `it` of the sequence is tile it % per_head of query head
    // head * group + it / per_head (one query head per key/value head: group = 1)
    const unsigned per_head = first < tq ? (tq - first + BQ - 1) / BQ : 0, ntiles = per_head * group;
    auto stage_qg = [&](unsigned it) {
        const unsigned long long off = (head * group + it / per_head) * tq * d;
        const unsigned row = first + (it % per_head) * BQ;
        att_stage(qs + (it % 2) * BQ * ld, q + off, row, BQ, tq, d, dp, qvec);
        att_stage(gs + (it % 2) * BQ * ld, dout + off, row, BQ, tq, d, dp, qvec);
    };
    att_stage(ks, k, k0, BKV, tk, d, dp, att_vec(k, d));
    att_stage(vs, v, k0, BKV, tk, d, dp, att_vec(v, d));
    if (ntiles > 0) stage_qg(0);
    kiln_cp_async_commit();
    float dka[DT][4], dva[DT][4];
#pragma unroll
    for (int dt = 0; dt < DT; ++dt)
#pragma unroll
        for (int e = 0; e < 4; ++e) dka[dt][e] = dva[dt][e] = 0.0f;
    for (unsigned it = 0; it < ntiles; ++it) {
        const unsigned i0 = first + (it % per_head) * BQ;
        const float *lh = lse + (head * group + it / per_head) * tq, *dh = dvec + (head * group + it / per_head) * tq;
        if (it + 1 < ntiles) stage_qg(it + 1);
        kiln_cp_async_commit();
        kiln_cp_async_wait<1>(); // tile it (and, the first time, K and V) has landed ...
        __syncthreads();         // ... for every thread
        // causal: a warp skips the tiles none of whose queries sees its first key
        if (!causal || att_visible(causal, tq, tk, i0 + BQ - 1, key0)) {
            const T *qt = qs + (it % 2) * BQ * ld, *gt = gs + (it % 2) * BQ * ld;
            // lse and D of the lane's query columns i0 + 8 nt + 2t + c
            float lq[BQ / 8][2], dd[BQ / 8][2];
#pragma unroll
            for (int nt = 0; nt < BQ / 8; ++nt)
#pragma unroll
                for (int c = 0; c < 2; ++c) {
                    const unsigned i = i0 + nt * 8 + 2 * t + c;
                    lq[nt][c] = i < tq ? lh[i] : 0.0f;
                    dd[nt][c] = i < tq ? dh[i] : 0.0f;
                }
            float s[BQ / 8][4], dps[BQ / 8][4];
#pragma unroll
            for (int nt = 0; nt < BQ / 8; ++nt)
#pragma unroll
                for (int e = 0; e < 4; ++e) s[nt][e] = dps[nt][e] = 0.0f;
#pragma unroll
            for (int kc = 0; kc < KC; ++kc) {
                if (kc * 16 < (int)dp) {
                    unsigned ka[4], va[4];
                    att_frag_a(ka, ks, ld, warp * ROWS, kc * 16);
                    att_frag_a(va, vs, ld, warp * ROWS, kc * 16);
#pragma unroll
                    for (int np = 0; np < BQ / 16; ++np) {
                        unsigned qb[4], gb[4];
                        att_frag_b_nk(qb, qt, ld, np * 16, kc * 16);
                        att_frag_b_nk(gb, gt, ld, np * 16, kc * 16);
#pragma unroll
                        for (int h = 0; h < 2; ++h) {
                            att_mma<T>(s[2 * np + h], ka, qb, h);
                            att_mma<T>(dps[2 * np + h], va, gb, h);
                        }
                    }
                }
            }
            // Pᵀ and dSᵀ in place: key g (elements 0, 1) or g + 8 (2, 3) of the warp's 16
#pragma unroll
            for (int nt = 0; nt < BQ / 8; ++nt)
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const unsigned j = key0 + g + (e / 2) * 8, i = i0 + nt * 8 + 2 * t + e % 2;
                    const bool seen = i < tq && j < tk && att_visible(causal, tq, tk, i, j);
                    const float p = seen ? kiln_exp(s[nt][e] * scale - lq[nt][e % 2]) : 0.0f;
                    s[nt][e] = p;
                    dps[nt][e] = p * (dps[nt][e] - dd[nt][e % 2]);
                }
            // dV += Pᵀ·dO and dK += dSᵀ·Q, the tile's 32 queries as two k-steps
            att_mma_rows_by_tile<T, BQ / 16>(dva, s, gt, ld, dp);
            att_mma_rows_by_tile<T, BQ / 16>(dka, dps, qt, ld, dp);
        }
        __syncthreads(); // tile it's buffers are consumed before tile it + 2 is staged into them
    }
    kiln_cp_async_wait<0>(); // nothing is left in flight (K and V, when no query tile ran)
    const float by_scale[2] = {scale, scale}, by_one[2] = {1.0f, 1.0f};
    att_store_rows(dk + head * tk * d, dka, by_scale, key0, tk, d);
    att_store_rows(dv + head * tk * d, dva, by_one, key0, tk, d);
}

// dQ on tensor cores: a block owns 64 query rows (16 per warp), keeps their Q and dO as A fragments in
// registers and streams double-buffered K/V tiles of 32 keys up to the last key its rows see. Per warp
// and tile: S = Q·Kᵀ and dP = dO·Vᵀ (16 x 32 each, K and V as B by ldmatrix), P = exp(s·S − lse) and
// dS = P∘(dP − D) on the accumulators, then dQ += dS·K with dS repacked as A fragments and K as B by
// ldmatrix .trans; dQ (16 x dp, f32 registers) is scaled by s at the end.
template <typename T>
__device__ __forceinline__ void attention_bwd_dq_mma_impl(const T *__restrict__ q, const T *__restrict__ k,
                                                          const T *__restrict__ v, const T *__restrict__ dout,
                                                          const float *__restrict__ lse, const float *__restrict__ dvec,
                                                          T *__restrict__ dq, unsigned tq, unsigned tk, unsigned d, unsigned group,
                                                          int causal, double scale_f64) {
    constexpr int ROWS = KILN_ATT_MMA_ROWS, BQ = KILN_ATT_WARPS * ROWS, BK = KILN_ATT_KEYS;
    constexpr int KC = KILN_ATT_KC, DT = KILN_ATT_DT;
    const unsigned dp = (d + 15) / 16 * 16, ld = dp + 8;
    KILN_DYNAMIC_SMEM(T, smem);
    T *qs = smem;             // [BQ][ld]: the block's queries
    T *gs = qs + BQ * ld;     // [BQ][ld]: their dO
    T *ks = gs + BQ * ld;     // [2][BK][ld]: key tiles, double-buffered
    T *vs = ks + 2 * BK * ld; // [2][BK][ld]
    const unsigned lane = threadIdx.x % 32, warp = threadIdx.x / 32, g = lane / 4, t = lane % 4;
    const unsigned long long head = blockIdx.x;
    const unsigned q0 = blockIdx.y * BQ, row0 = q0 + warp * ROWS;
    const float scale = (float)scale_f64;
    q += head * tq * d;
    dout += head * tq * d;
    k += (head / group) * tk * d; // grouped-query attention: this query head's key/value head
    v += (head / group) * tk * d;
    const bool kvec = att_vec(k, d) && att_vec(v, d);
    const unsigned nkeys = att_keys_seen(causal, tq, tk, min(q0 + BQ, tq) - 1), ntiles = (nkeys + BK - 1) / BK;
    auto stage_kv = [&](unsigned it) {
        att_stage(ks + (it % 2) * BK * ld, k, it * BK, BK, tk, d, dp, kvec);
        att_stage(vs + (it % 2) * BK * ld, v, it * BK, BK, tk, d, dp, kvec);
    };
    att_stage(qs, q, q0, BQ, tq, d, dp, att_vec(q, d));
    att_stage(gs, dout, q0, BQ, tq, d, dp, att_vec(dout, d));
    kiln_cp_async_commit();
    stage_kv(0); // nkeys >= 1: every row sees key 0
    kiln_cp_async_commit();
    kiln_cp_async_wait<1>(); // this thread's part of the Q and dO tiles has landed
    __syncthreads();
    unsigned qa[KC][4], ga[KC][4];
#pragma unroll
    for (int kc = 0; kc < KC; ++kc) {
        if (kc * 16 < (int)dp) {
            att_frag_a(qa[kc], qs, ld, warp * ROWS, kc * 16);
            att_frag_a(ga[kc], gs, ld, warp * ROWS, kc * 16);
        }
    }
    // lse and D of the lane's rows g and g + 8
    float lr[2], dr[2], acc[DT][4];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        const unsigned i = row0 + g + h * 8;
        lr[h] = i < tq ? lse[head * tq + i] : 0.0f;
        dr[h] = i < tq ? dvec[head * tq + i] : 0.0f;
    }
#pragma unroll
    for (int dt = 0; dt < DT; ++dt) acc[dt][0] = acc[dt][1] = acc[dt][2] = acc[dt][3] = 0.0f;
    for (unsigned it = 0; it < ntiles; ++it) {
        const unsigned k0 = it * BK;
        if (it + 1 < ntiles) stage_kv(it + 1);
        kiln_cp_async_commit();
        kiln_cp_async_wait<1>(); // tile it has landed ...
        __syncthreads();         // ... for every thread
        if (!causal || att_visible(causal, tq, tk, row0 + ROWS - 1, k0)) {
            const T *kt = ks + (it % 2) * BK * ld, *vt = vs + (it % 2) * BK * ld;
            float s[BK / 8][4], dps[BK / 8][4];
#pragma unroll
            for (int nt = 0; nt < BK / 8; ++nt)
#pragma unroll
                for (int e = 0; e < 4; ++e) s[nt][e] = dps[nt][e] = 0.0f;
#pragma unroll
            for (int kc = 0; kc < KC; ++kc) {
                if (kc * 16 < (int)dp) {
#pragma unroll
                    for (int np = 0; np < BK / 16; ++np) {
                        unsigned kb[4], vb[4];
                        att_frag_b_nk(kb, kt, ld, np * 16, kc * 16);
                        att_frag_b_nk(vb, vt, ld, np * 16, kc * 16);
#pragma unroll
                        for (int h = 0; h < 2; ++h) {
                            att_mma<T>(s[2 * np + h], qa[kc], kb, h);
                            att_mma<T>(dps[2 * np + h], ga[kc], vb, h);
                        }
                    }
                }
            }
            // dS in place: row g (elements 0, 1) or g + 8 (2, 3) of the warp's 16
#pragma unroll
            for (int nt = 0; nt < BK / 8; ++nt)
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const unsigned i = row0 + g + (e / 2) * 8, j = k0 + nt * 8 + 2 * t + e % 2;
                    const bool seen = i < tq && j < tk && att_visible(causal, tq, tk, i, j);
                    const float p = seen ? kiln_exp(s[nt][e] * scale - lr[e / 2]) : 0.0f;
                    dps[nt][e] = p * (dps[nt][e] - dr[e / 2]);
                }
            // dQ += dS·K, the tile's 32 keys as two k-steps
            att_mma_rows_by_tile<T, BK / 16>(acc, dps, kt, ld, dp);
        }
        __syncthreads(); // tile it's buffers are consumed before tile it + 2 is staged into them
    }
    const float by_scale[2] = {scale, scale};
    att_store_rows(dq + head * tq * d, acc, by_scale, row0, tq, d);
}

// Entry points, one per dtype (KILN_ENTRY, common.cuh): SIMT for f32/f64 (A = T), tensor cores for
// bf16/f16 (`_mma_`, A = float); A is the type of lse and D. The two share parameter lists, so a family
// takes the implementation it calls.
#define ATTENTION_FWD_KERNEL(impl, T, A)                                                                               \
    (const T *q, const T *k, const T *v, T *o, A *lse, unsigned tq, unsigned tk, unsigned d, unsigned group,           \
     int causal, double scale) {                                                                                       \
        impl(q, k, v, o, lse, tq, tk, d, group, causal, scale);                                                        \
    }
#define ATTENTION_BWD_DOT_KERNEL(T, A)                                                                                 \
    (const T *o, const T *dout, A *dvec, unsigned long long rows, unsigned d) {                                        \
        attention_bwd_dot_impl(o, dout, dvec, rows, d);                                                                \
    }
#define ATTENTION_BWD_DKDV_KERNEL(impl, T, A)                                                                          \
    (const T *q, const T *k, const T *v, const T *dout, const A *lse, const A *dvec, T *dk, T *dv, unsigned tq,        \
     unsigned tk, unsigned d, unsigned group, int causal, double scale) {                                              \
        impl(q, k, v, dout, lse, dvec, dk, dv, tq, tk, d, group, causal, scale);                                       \
    }
#define ATTENTION_BWD_DQ_KERNEL(impl, T, A)                                                                            \
    (const T *q, const T *k, const T *v, const T *dout, const A *lse, const A *dvec, T *dq, unsigned tq, unsigned tk,  \
     unsigned d, unsigned group, int causal, double scale) {                                                           \
        impl(q, k, v, dout, lse, dvec, dq, tq, tk, d, group, causal, scale);                                           \
    }

KILN_ENTRY(attention_fwd_f32, ATTENTION_FWD_KERNEL, attention_fwd_impl, float, float)
KILN_ENTRY(attention_bwd_dot_f32, ATTENTION_BWD_DOT_KERNEL, float, float)
KILN_ENTRY(attention_bwd_dkdv_f32, ATTENTION_BWD_DKDV_KERNEL, attention_bwd_dkdv_impl, float, float)
KILN_ENTRY(attention_bwd_dq_f32, ATTENTION_BWD_DQ_KERNEL, attention_bwd_dq_impl, float, float)

KILN_ENTRY(attention_fwd_f64, ATTENTION_FWD_KERNEL, attention_fwd_impl, double, double)
KILN_ENTRY(attention_bwd_dot_f64, ATTENTION_BWD_DOT_KERNEL, double, double)
KILN_ENTRY(attention_bwd_dkdv_f64, ATTENTION_BWD_DKDV_KERNEL, attention_bwd_dkdv_impl, double, double)
KILN_ENTRY(attention_bwd_dq_f64, ATTENTION_BWD_DQ_KERNEL, attention_bwd_dq_impl, double, double)

KILN_ENTRY(attention_fwd_mma_bf16, ATTENTION_FWD_KERNEL, attention_fwd_mma_impl, __nv_bfloat16, float)
KILN_ENTRY(attention_bwd_dot_bf16, ATTENTION_BWD_DOT_KERNEL, __nv_bfloat16, float)
KILN_ENTRY(attention_bwd_dkdv_mma_bf16, ATTENTION_BWD_DKDV_KERNEL, attention_bwd_dkdv_mma_impl, __nv_bfloat16, float)
KILN_ENTRY(attention_bwd_dq_mma_bf16, ATTENTION_BWD_DQ_KERNEL, attention_bwd_dq_mma_impl, __nv_bfloat16, float)

KILN_ENTRY(attention_fwd_mma_f16, ATTENTION_FWD_KERNEL, attention_fwd_mma_impl, __half, float)
KILN_ENTRY(attention_bwd_dot_f16, ATTENTION_BWD_DOT_KERNEL, __half, float)
KILN_ENTRY(attention_bwd_dkdv_mma_f16, ATTENTION_BWD_DKDV_KERNEL, attention_bwd_dkdv_mma_impl, __half, float)
KILN_ENTRY(attention_bwd_dq_mma_f16, ATTENTION_BWD_DQ_KERNEL, attention_bwd_dq_mma_impl, __half, float)
