// linear_quantized.cu — y = x·Wᵀ with W kept in one of ggml's block formats (a QuantizedMatrix,
// src/backend/op/quantized.rs: Q4_0/Q4_1/Q8_0 in 16-row groups, Q4_K/Q6_K row after row), x f32
// [m, k] row-major, y f32 [m, n]: the projections of a quantized Llama on Device::Cuda/Emu. The CPU
// backend (src/backend/cpu/linear_quantized/) is the reference; its module header gives the algorithm
// the decode kernel follows.
//
// Three paths, chosen per call by src/backend/cuda/linear_quantized.rs:
//
// 1. Decode (fewer than MMA_FROM_ROWS = 8 rows of x, every format), llama.cpp's algorithm with
//    8-bit activations:
//    linear_quantized_quantize_x rounds each 32-element block of x to signed bytes as the CPU does,
//      xd = max|x| / 127,  xq = rint(x · (127 / max|x|)) (ties to even),  xds = (xd, xd·Σxq),
//    bit for bit the CPU's values. Launch: one warp per block of 32, 256 threads per CTA,
//    ceil(m·k / 256) CTAs. Per call: 4·m·k bytes read, m·k + m·k/4 bytes written.
//    linear_quantized_<fmt> (q4_0, q4_1, q8_0) then computes, per weight block (w = a·q + c),
//      Σ w·x ≈ (a·xd)·Σ q·xq + c·(xd·Σxq)    (Q4_0: a = d, c = -8d; Q4_1: a = d, c = m; Q8_0: c = 0)
//    with __dp4a for Σ q·xq, four byte products per instruction. Launch: one CTA of 4 warps per
//    (16-row group, row of x): grid [groups, m], block 128. A tile (16 rows × one block) holds its
//    quants as 64-byte words, word s holding 4 quant bytes of each of the 16 rows; lane j of a tile
//    loads 16 bytes at 16·j (one coalesced uint4 per lane: 256 contiguous bytes per half-warp for Q4,
//    512 per warp for Q8), which are word s = j / 4 of rows 4(j % 4) .. 4(j % 4) + 3, plus those 4
//    rows' f16 scales (8 bytes; 8 more for Q4_1's mins). A Q4 tile takes 16 lanes, so a warp does two
//    blocks per step, a Q8 tile one; warp w takes steps w, w + 4, ... of the row's blocks. Each lane
//    keeps 4 f32 sums (its rows); a butterfly over lanes 4, 8, 16 apart leaves row 4q + u's warp sum in
//    lane q, and the 4 warps' sums are added in shared memory in warp order (a fixed order: a run
//    repeats bit for bit). Rows past n (the zero padding of the last group) are not stored.
//    Roofline per call: 2·m·n·k FLOPs (integer multiply-adds); W read once from DRAM per call (n
//    rounded up to 16 × k/32 × block bytes: Q4_0 18, Q4_1 20, Q8_0 34 per 32 weights, 4.5/5/8.5 bits
//    per weight), re-read from L2 for each further row of x; x's k + k/4 bytes per row, read by every
//    group from L2. So a decoded token moves, per projection, its quantized weight bytes plus about
//    5·k bytes: SmolLM2-135M Q4_1 reads ~92 MiB of weights per token.
//    linear_quantized_q4_k / _q6_k do the same for the formats kept row after row (256-element
//    super-blocks: Q4_K 144 bytes, a = d·sc and c = -dmin·mn per sub-block of 32; Q6_K 210 bytes,
//    c = 0 and a = d·s8 per 16 elements, so two integer sums per sub-block, Σ(q-32)·xq taken as
//    Σq·xq - 32·Σxq with a second __dp4a against 0x01010101), the CPU's portable dot's formulas and
//    order per term. Launch: grid [ceil(n / 4), m], block 128: warp w of a CTA takes one row of W and
//    one row of x, lane l sub-block l % 8 of super-blocks l / 8, l / 8 + 4, ... (Q4_K: its 32 nibble
//    bytes as two 16-byte loads, shared by the lanes of sub-blocks 2i and 2i + 1; Q6_K: 9 aligned
//    32-bit loads each for its 32 bytes of ql and of qh, shifted by 16 bits where the block, only
//    2-byte aligned, is 2 bytes off; x's block as two 16-byte loads), then a butterfly sum over the
//    warp. Roofline per call:
//    2·m·n·k FLOPs (integer), W's bytes once from DRAM (4.5 bits per weight for Q4_K, 6.56 for Q6_K),
//    again from L2 per further row of x, and x's k + k/4 bytes per row of x and of W (L1/L2): about
//    1/7 of the traffic of decoding W to f32, which the K formats took at every size before.
//
// 2. Prefill (a grouped format from MMA_FROM_ROWS rows of x on), the same algorithm on the integer
//    tensor cores: x rounded by linear_quantized_quantize_x as in 1, then linear_quantized_mma_<fmt>
//    multiplies each 16-row group's block (the A operand, 16 × 32 quants) with the block of 8 rows of
//    x at a time (B, 32 × 8 signed bytes) by one mma.sync.m16n8k32.row.col.s32.s8.s8.s32: the 128
//    integer sums Σ q·xq of that block, exact, which each lane then scales into its 4 f32 sums as 1
//    does, acc += (a·xd)·Σq·xq + c·(xd·Σxq) (the scales change every block, so the integer sums cannot
//    run on across blocks). The tile layout of QuantizedMatrix is the A fragment as it is: lane
//    (g = lane/4, t = lane%4) needs bytes 4t.. and 4t+16.. of rows g and g+8, which are word t (Q4:
//    its low and high nibbles, 0..15, exact as .s8) or words t and t+4 (Q8) of the tile, so each lane
//    loads 2 (Q4) or 4 (Q8) 32-bit words per block, 128 contiguous bytes per warp load, no shuffle.
//    Launch: grid [ceil(groups / 4), ceil(m / 32)], block 128: warp w of CTA (bx, by) takes group
//    4·bx + w (16 rows of W) against rows 32·by .. 32·by + 31 of x (4 n-tiles of 8; tiles wholly past
//    m are skipped, warps past the last group only help stage x). x's rows are staged in shared memory
//    4 blocks at a time (2 stages of 32 rows × 144 bytes, 9 KiB, by 16-byte cp.async with zero fill
//    past m and past the row's end; the next stage's copy overlaps this stage's products), B read from
//    there (4 bytes per lane, rows 144 bytes apart: conflict-free); A and the f16 scales from global
//    memory (each W byte is read by one warp of the CTA), xds with __ldg (L1 hits: 4 rows' pairs per
//    block and n-tile). The f32 sums of a lane (W rows g, g+8 × x rows 2t, 2t+1 of each n-tile) are
//    stored at the end: rows past n or m are not.
//    Roofline per call: 2·m·n·k integer operations (on the tensor cores: 2·16·8·32 = 8192 per mma,
//    (m rounded up to 8) · (n rounded up to 16) · k / 4096 mma), plus 12 f32 operations per lane and
//    mma for the scales (about 1/11 of an FP32 op per multiply-add, the larger cost on an H100: its
//    INT8 tensor peak is ~30× its FP32 rate); W read once from DRAM (its grouped bytes, as in 1) and
//    from L2 once per 32 rows of x (ceil(m/32) times); x's m·k bytes (+ m·k/4 of scales) read from L2
//    by each of the ceil(groups/4) CTA columns; y's 4·m·n bytes written once. A 128-token prefill of
//    SmolLM2's [1536, 576] Q4_1 projection: 226 M integer ops (~0.11 µs at 1979 TOPS), 0.55 MB of W
//    (~0.17 µs at 3.35 TB/s), 10.6 M f32 ops (~0.16 µs at 67 TFLOP/s): all far under a launch's
//    few µs, so the prefill of a small model is launch-bound. For large n·k, W's bytes bound the
//    kernel up to about 130 rows of x (Q4_1: 0.625 bytes per weight at 3.35 TB/s against 0.094 f32
//    ops per multiply-add at 67 TFLOP/s), the f32 scaling from there on (1.4× the tensor time).
//
// 3. The recorded forward (autograd on), the input's gradient, and Q4_K/Q6_K from MMA_FROM_ROWS rows:
//    linear_quantized_dequantize_<fmt>
//    decodes W to f32 [n, k] (the formulas and evaluation order of src/backend/cpu/dequantize.rs, with
//    __fmul_rn/__fadd_rn so that no multiply-add is fused: bit for bit the CPU's weights), and the f32
//    matmul kernel (kernels/matmul.cu) multiplies, x not rounded. Launch: grid-stride, one thread per
//    weight (256 threads per CTA), each reading its block's scale bytes (L1/L2 hits) and writing one
//    f32: 4·n·k bytes written per call, W's bytes read. The decoded copy lives for the call only.
//
// Headroom (not yet measured on a GPU: Emu-verified only; the integer mma path has never run on a
// tensor core): in 1, x's bytes could be staged in shared memory once per CTA; in 2, xds could be
// staged with x (its 8-byte pairs are not 16-byte aligned per row, hence __ldg), W's tiles could go
// through cp.async too (more stages, more rows of x per CTA: 64 would halve W's L2 reads at the cost
// of more padding for short prompts), and a split over k would give a short prompt of a small model
// more than groups/4 × ceil(m/32) CTAs (SmolLM2's 576-row projections: 9 per 32 rows of x); Q4_K/Q6_K
// have no tensor-core kernel (their prefill decodes W to f32, about 7× its bytes of traffic: the
// mma kernel would take them with the super-block's sub-block scales in place of the tile's), and
// their decode kernel reads x once per row of W (4 rows per CTA could share it through shared memory).
#include "common.cuh"

#define LINEAR_QUANTIZED_WARPS 4
#define LINEAR_QUANTIZED_GROUP_ROWS 16

// The f16 at `p` (any 2-byte alignment) as f32.
__device__ __forceinline__ float linear_quantized_f16(const unsigned char *p) {
    return __half2float(__ushort_as_half((unsigned short)(p[0] | (p[1] << 8))));
}

// ---------------------------------------------------------------------------------------------------
// x rounded to signed bytes per block of 32 (the CPU's Q8Rows::quantize): xq [blocks·32], xds [blocks]
// as (xd, xd·Σxq).
__device__ __forceinline__ void linear_quantized_quantize_x_impl(const float *__restrict__ x, signed char *__restrict__ xq,
                                                                 float2 *__restrict__ xds, unsigned long long blocks) {
    const unsigned lane = threadIdx.x % 32;
    const unsigned long long b = (unsigned long long)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (b >= blocks) return; // a whole warp leaves together: b is the same for its 32 lanes
    const float v = x[b * 32 + lane];
    const float amax = kiln_warp_max(fabsf(v));
    const float d = amax / 127.0f;
    const float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
    const int q = __float2int_rn(v * inv);
    int sum = q;
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) sum += __shfl_xor_sync(KILN_FULL_MASK, sum, offset);
    xq[b * 32 + lane] = (signed char)q;
    if (lane == 0) {
        float2 ds;
        ds.x = d;
        ds.y = d * (float)sum;
        xds[b] = ds;
    }
}

// ---------------------------------------------------------------------------------------------------
// The decode product of the grouped formats. Quant bytes per block and row: 16 (Q4) or 32 (Q8).
template <int QUANT_BYTES, bool MINS> struct LinearQuantizedTile {
    static constexpr int QUANTS = LINEAR_QUANTIZED_GROUP_ROWS * QUANT_BYTES;    // bytes of the quant words
    static constexpr int BYTES = QUANTS + (MINS ? 2 : 1) * 2 * LINEAR_QUANTIZED_GROUP_ROWS; // + d (+ m)
    static constexpr int LANES = QUANTS / 16;                                   // lanes per tile
    static constexpr int PER_STEP = 32 / LANES;                                 // tiles per warp step
};

// Σ q·xq of one row's word (4 quant bytes) with x's block `xb`; s is the word's index in the block.
template <int FORMAT> __device__ __forceinline__ int linear_quantized_word_dot(unsigned w, const int *xb, unsigned s);
// Q4_0, Q4_1: the word's low nibbles are elements 4s..4s+3, its high nibbles 16+4s..16+4s+3.
template <> __device__ __forceinline__ int linear_quantized_word_dot<4>(unsigned w, const int *xb, unsigned s) {
    const int lo = __dp4a((int)(w & 0x0f0f0f0fu), __ldg(xb + s), 0);
    return __dp4a((int)((w >> 4) & 0x0f0f0f0fu), __ldg(xb + 4 + s), lo);
}
// Q8_0: the word is elements 4s..4s+3, signed bytes.
template <> __device__ __forceinline__ int linear_quantized_word_dot<8>(unsigned w, const int *xb, unsigned s) {
    return __dp4a((int)w, __ldg(xb + s), 0);
}

// FORMAT 4 (four-bit) or 8; C_FROM: 0 c = -8·d (Q4_0), 1 c = m (Q4_1), 2 c = 0 (Q8_0).
template <int FORMAT, int C_FROM>
__device__ __forceinline__ void linear_quantized_group_impl(const unsigned char *__restrict__ w,
                                                            const signed char *__restrict__ xq,
                                                            const float2 *__restrict__ xds, float *__restrict__ y,
                                                            unsigned n, unsigned blocks) {
    typedef LinearQuantizedTile<FORMAT == 4 ? 16 : 32, C_FROM == 1> Tile;
    __shared__ float warp_sums[LINEAR_QUANTIZED_WARPS][LINEAR_QUANTIZED_GROUP_ROWS];
    const unsigned lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const unsigned t = lane / Tile::LANES, j = lane % Tile::LANES; // tile of the step, lane in the tile
    const unsigned s = j / 4, q = j % 4;                            // word, and rows 4q..4q+3
    const unsigned long long group = blockIdx.x, i = blockIdx.y;    // row group of W, row of x
    const unsigned char *tiles = w + group * blocks * Tile::BYTES;
    const int *xrow = reinterpret_cast<const int *>(xq + i * blocks * 32);
    const float2 *dsrow = xds + i * blocks;

    float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (unsigned b0 = warp * Tile::PER_STEP; b0 < blocks; b0 += LINEAR_QUANTIZED_WARPS * Tile::PER_STEP) {
        const unsigned b = b0 + t;
        if (b >= blocks) continue; // the second half-warp past an odd block count
        const unsigned char *tile = tiles + (unsigned long long)b * Tile::BYTES;
        const uint4 words = __ldg(reinterpret_cast<const uint4 *>(tile + 16 * j));
        const uint2 d4 = __ldg(reinterpret_cast<const uint2 *>(tile + Tile::QUANTS + 8 * q));
        const float2 ds = __ldg(dsrow + b);
        const int *xb = xrow + 8 * b; // block b's 32 bytes as 8 ints
        const unsigned wv[4] = {words.x, words.y, words.z, words.w};
        const unsigned dv[2] = {d4.x, d4.y};
        unsigned mv[2] = {0u, 0u};
        if (C_FROM == 1) {
            const uint2 m4 = __ldg(reinterpret_cast<const uint2 *>(tile + Tile::QUANTS + 32 + 8 * q));
            mv[0] = m4.x;
            mv[1] = m4.y;
        }
#pragma unroll
        for (int u = 0; u < 4; ++u) {
            const float d = __half2float(__ushort_as_half((unsigned short)(dv[u / 2] >> (16 * (u % 2)))));
            const int isum = linear_quantized_word_dot<FORMAT>(wv[u], xb, s);
            float c = 0.0f;
            if (C_FROM == 0) c = -8.0f * d;
            if (C_FROM == 1) c = __half2float(__ushort_as_half((unsigned short)(mv[u / 2] >> (16 * (u % 2)))));
            // the c term once per block and row: in the lane holding word 0
            acc[u] += d * ds.x * (float)isum + (s == 0 ? c * ds.y : 0.0f);
        }
    }
    // lanes with the same q hold the same rows: add over the lane bits above q's two
#pragma unroll
    for (int u = 0; u < 4; ++u) {
#pragma unroll
        for (int offset = 4; offset < 32; offset <<= 1) acc[u] += __shfl_xor_sync(KILN_FULL_MASK, acc[u], offset);
    }
    if (lane < 4) {
#pragma unroll
        for (int u = 0; u < 4; ++u) warp_sums[warp][4 * lane + u] = acc[u];
    }
    __syncthreads();
    if (threadIdx.x >= LINEAR_QUANTIZED_GROUP_ROWS) return;
    const unsigned long long row = group * LINEAR_QUANTIZED_GROUP_ROWS + threadIdx.x;
    if (row >= n) return;
    float sum = 0.0f;
#pragma unroll
    for (int v = 0; v < LINEAR_QUANTIZED_WARPS; ++v) sum += warp_sums[v][threadIdx.x];
    y[i * n + row] = sum;
}

// ---------------------------------------------------------------------------------------------------
// The decode product of Q4_K and Q6_K (kept row after row, 256-element super-blocks). Lane l of a warp
// takes sub-block l % 8 (32 elements) of super-block 4·step + l / 8 of its row of W.
#define LINEAR_QUANTIZED_K_WARPS 4 // warps per CTA, one row of W each

// x's block of 32 quants (32-byte aligned) as 8 ints, in two 16-byte loads.
__device__ __forceinline__ void linear_quantized_x_block(const int *xb, int (&x)[8]) {
    const int4 lo = __ldg(reinterpret_cast<const int4 *>(xb)), hi = __ldg(reinterpret_cast<const int4 *>(xb) + 1);
    x[0] = lo.x, x[1] = lo.y, x[2] = lo.z, x[3] = lo.w, x[4] = hi.x, x[5] = hi.y, x[6] = hi.z, x[7] = hi.w;
}

// The 8 words of the 32 bytes at `p`, which is 2-byte aligned (Q6_K's 210-byte blocks leave no more): 8
// aligned 32-bit loads from p rounded down to 4 bytes, and a 9th when p is 2 bytes off, each word then the
// high half of one and the low half of the next. The extra 2 bytes on each side are still W's: a block 2
// bytes off is not the buffer's first, and the 32 bytes end at least 16 bytes before the block's end.
__device__ __forceinline__ void linear_quantized_words_at2(const unsigned char *p, unsigned (&out)[8]) {
    const unsigned off = (unsigned)((unsigned long long)p & 2);
    const unsigned *a = reinterpret_cast<const unsigned *>(p - off);
    unsigned v[9];
#pragma unroll
    for (int i = 0; i < 8; ++i) v[i] = __ldg(a + i);
    v[8] = off ? __ldg(a + 8) : 0u;
#pragma unroll
    for (int i = 0; i < 8; ++i) out[i] = off ? (v[i] >> 16) | (v[i + 1] << 16) : v[i];
}

// Q4_K sub-block j of the super-block at `blk` against x's block `xb` (8 ints) with (xd, xd·Σxq) = ds:
// (d·sc)·xd·Σq·xq - (dmin·mn)·xd·Σxq, as the CPU's portable dot orders it.
__device__ __forceinline__ float linear_quantized_q4_k_sub(const unsigned char *blk, unsigned j, const int *xb,
                                                           float2 ds) {
    // the 32 nibbles: bytes 32·(j/2) .. + 31 of qs, low (j even) or high nibbles; 16-byte aligned
    const uint4 *qs = reinterpret_cast<const uint4 *>(blk + 16 + 32 * (j / 2));
    const uint4 lo = __ldg(qs), hi = __ldg(qs + 1);
    const unsigned words[8] = {lo.x, lo.y, lo.z, lo.w, hi.x, hi.y, hi.z, hi.w};
    const unsigned shift = 4 * (j % 2);
    int x[8];
    linear_quantized_x_block(xb, x);
    int isum = 0;
#pragma unroll
    for (int w = 0; w < 8; ++w) isum = __dp4a((int)((words[w] >> shift) & 0x0f0f0f0fu), x[w], isum);
    const unsigned char *sc = blk + 4;
    unsigned scale, min;
    if (j < 4) {
        scale = __ldg(sc + j) & 0x3f;
        min = __ldg(sc + j + 4) & 0x3f;
    } else {
        scale = (__ldg(sc + j + 4) & 0xf) | ((__ldg(sc + j - 4) >> 2) & 0x30);
        min = (__ldg(sc + j + 4) >> 4) | ((__ldg(sc + j) >> 2) & 0x30);
    }
    const float d = linear_quantized_f16(blk), dmin = linear_quantized_f16(blk + 2);
    return d * (float)scale * ds.x * (float)isum - dmin * (float)min * ds.y;
}

// Q6_K sub-block j (elements 32j .. 32j + 31 = 128h + p): the low 4 bits from ql[64h + p % 64] >> 4·(p / 64),
// the high 2 from qh[32h + p % 32] >> 2·(p / 32), q - 32; a scale per 16 elements:
// d·xd·(s8[2j]·Σ_0..15 (q-32)·xq + s8[2j+1]·Σ_16..31), as the CPU's portable dot orders it.
__device__ __forceinline__ float linear_quantized_q6_k_sub(const unsigned char *blk, unsigned j, const int *xb,
                                                           float2 ds) {
    const unsigned h = j / 4, jj = j % 4;
    const unsigned char *ql = blk + 64 * h + 32 * (jj % 2), *qh = blk + 128 + 32 * h;
    const unsigned lshift = 4 * (jj / 2), hshift = 2 * jj;
    unsigned lw[8], hw[8];
    linear_quantized_words_at2(ql, lw);
    linear_quantized_words_at2(qh, hw);
    int x[8];
    linear_quantized_x_block(xb, x);
    int isum[2] = {0, 0}, xsum[2] = {0, 0};
#pragma unroll
    for (int w = 0; w < 8; ++w) {
        const unsigned low = (lw[w] >> lshift) & 0x0f0f0f0fu, high = ((hw[w] >> hshift) & 0x03030303u) << 4;
        // Σ (q - 32)·xq = Σ q·xq - 32·Σ xq, each byte of q in 0..63
        isum[w / 4] = __dp4a((int)(low | high), x[w], isum[w / 4]);
        xsum[w / 4] = __dp4a(0x01010101, x[w], xsum[w / 4]);
    }
    const unsigned short s01 = __ldg(reinterpret_cast<const unsigned short *>(blk + 192 + 2 * j));
    const float s0 = (float)(signed char)(s01 & 0xff), s1 = (float)(signed char)(s01 >> 8);
    const float d = linear_quantized_f16(blk + 208);
    return d * ds.x * (s0 * (float)(isum[0] - 32 * xsum[0]) + s1 * (float)(isum[1] - 32 * xsum[1]));
}

// FORMAT 0 (Q4_K, 144-byte blocks) or 1 (Q6_K, 210). Launch: grid [ceil(n / 4), m], block 128: warp w of
// CTA (bx, i) dots row 4·bx + w of W with row i of x; a warp step covers 4 super-blocks (1024 weights),
// each lane one sub-block of 32 (8 __dp4a, or 16 for Q6_K with its Σxq), then a butterfly sum over the
// warp (a fixed order: a run repeats bit for bit).
template <int FORMAT>
__device__ __forceinline__ void linear_quantized_k_impl(const unsigned char *__restrict__ w,
                                                        const signed char *__restrict__ xq,
                                                        const float2 *__restrict__ xds, float *__restrict__ y,
                                                        unsigned n, unsigned blocks) {
    constexpr unsigned BYTES = FORMAT == 0 ? 144 : 210;
    const unsigned lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const unsigned row = blockIdx.x * LINEAR_QUANTIZED_K_WARPS + warp;
    const unsigned long long i = blockIdx.y;
    if (row >= n) return; // the whole warp: no barrier below
    const unsigned supers = blocks / 8, j = lane % 8;
    const unsigned char *wrow = w + (unsigned long long)row * supers * BYTES;
    const int *xrow = reinterpret_cast<const int *>(xq + i * blocks * 32);
    const float2 *dsrow = xds + i * blocks;
    float acc = 0.0f;
    for (unsigned sb = lane / 8; sb < supers; sb += 4) {
        const unsigned b = 8 * sb + j; // x's block
        const unsigned char *blk = wrow + (unsigned long long)sb * BYTES;
        const float2 ds = __ldg(dsrow + b);
        acc += FORMAT == 0 ? linear_quantized_q4_k_sub(blk, j, xrow + 8 * b, ds)
                           : linear_quantized_q6_k_sub(blk, j, xrow + 8 * b, ds);
    }
    acc = kiln_warp_sum(acc);
    if (lane == 0) y[i * n + row] = acc;
}

// ---------------------------------------------------------------------------------------------------
// The prefill product of the grouped formats on the integer tensor cores (path 2 of the header).
#define LINEAR_QUANTIZED_MMA_WARPS 4         // warps per CTA, one 16-row group of W each
#define LINEAR_QUANTIZED_MMA_ROWS 32         // rows of x per CTA: four 8-row n-tiles
#define LINEAR_QUANTIZED_MMA_STAGE_BLOCKS 4  // blocks of 32 per pipeline stage
// A staged row of x: its stage's blocks, padded by 16 bytes so that the 8 rows of a B fragment load
// (row stride 36 words) fall in 8 different groups of 4 banks.
#define LINEAR_QUANTIZED_MMA_ROW_BYTES (32 * LINEAR_QUANTIZED_MMA_STAGE_BLOCKS + 16)

// Stage `stage` of x's quantized rows row0 .. row0 + 31 (blocks 4·stage .. 4·stage + 3) into `dst`, one
// 16-byte cp.async per chunk, 8 consecutive threads per row (128 contiguous bytes from global, one
// conflict-free pass into shared memory); rows past m and blocks past the row's end are zero-filled
// without being read. Commits one group per thread.
__device__ __forceinline__ void linear_quantized_mma_stage(unsigned char *dst, const signed char *__restrict__ xq,
                                                           unsigned row0, unsigned m, unsigned blocks,
                                                           unsigned stage) {
    constexpr unsigned CHUNKS = 2 * LINEAR_QUANTIZED_MMA_STAGE_BLOCKS; // per row
    for (unsigned c = threadIdx.x; c < LINEAR_QUANTIZED_MMA_ROWS * CHUNKS; c += blockDim.x) {
        const unsigned r = c / CHUNKS, j = c % CHUNKS, b = stage * LINEAR_QUANTIZED_MMA_STAGE_BLOCKS + j / 2;
        const bool in = row0 + r < m && b < blocks;
        const signed char *src = in ? xq + ((unsigned long long)(row0 + r) * blocks + b) * 32 + 16 * (j % 2) : xq;
        kiln_cp_async_16(dst + r * LINEAR_QUANTIZED_MMA_ROW_BYTES + 16 * j, src, in ? 16u : 0u);
    }
    kiln_cp_async_commit();
}

// FORMAT 4 (four-bit) or 8; C_FROM as linear_quantized_group_impl's. y [m, n] = x·Wᵀ with x quantized
// (xq, xds: linear_quantized_quantize_x). Launch: grid [ceil(groups / 4), ceil(m / 32)], block 128.
template <int FORMAT, int C_FROM>
__device__ __forceinline__ void linear_quantized_mma_impl(const unsigned char *__restrict__ w,
                                                          const signed char *__restrict__ xq,
                                                          const float2 *__restrict__ xds, float *__restrict__ y,
                                                          unsigned m, unsigned n, unsigned blocks) {
    typedef LinearQuantizedTile<FORMAT == 4 ? 16 : 32, C_FROM == 1> Tile;
    constexpr int NT = LINEAR_QUANTIZED_MMA_ROWS / 8, SB = LINEAR_QUANTIZED_MMA_STAGE_BLOCKS;
    __shared__ __align__(16) unsigned char xs[2][LINEAR_QUANTIZED_MMA_ROWS * LINEAR_QUANTIZED_MMA_ROW_BYTES];
    const unsigned lane = threadIdx.x % 32, warp = threadIdx.x / 32, g = lane / 4, t = lane % 4;
    const unsigned groups = (n + LINEAR_QUANTIZED_GROUP_ROWS - 1) / LINEAR_QUANTIZED_GROUP_ROWS;
    const unsigned group = blockIdx.x * LINEAR_QUANTIZED_MMA_WARPS + warp; // may be past the last group
    const unsigned row0 = blockIdx.y * LINEAR_QUANTIZED_MMA_ROWS;
    // the n-tiles holding at least one row of x (the last CTA's rows may end early)
    const unsigned ntiles = (m - row0 + 7) / 8;
    const unsigned char *tiles = w + (unsigned long long)(group < groups ? group : 0) * blocks * Tile::BYTES;
    const unsigned stages = (blocks + SB - 1) / SB;

    float acc[NT][4];
#pragma unroll
    for (int j = 0; j < NT; ++j)
#pragma unroll
        for (int u = 0; u < 4; ++u) acc[j][u] = 0.0f;

    linear_quantized_mma_stage(xs[0], xq, row0, m, blocks, 0);
    for (unsigned s = 0; s < stages; ++s) {
        // the next stage's copy overlaps this one's products; its buffer was last read in stage s - 1,
        // which every warp left at that stage's closing barrier
        if (s + 1 < stages) {
            linear_quantized_mma_stage(xs[(s + 1) % 2], xq, row0, m, blocks, s + 1);
            kiln_cp_async_wait<1>();
        } else {
            kiln_cp_async_wait<0>();
        }
        __syncthreads();
        if (group < groups) { // the same for the warp's 32 lanes: the mma's lanes stay together
            const unsigned char *xst = xs[s % 2];
            for (unsigned bb = 0; bb < SB; ++bb) {
                const unsigned b = s * SB + bb;
                if (b >= blocks) break;
                // A: rows g, g + 8 of the group; elements 4t .. 4t + 3 (a[0], a[1]) and 4t + 16 .. (a[2], a[3]),
                // which the tile keeps as word t (Q4: its low and high nibbles) or words t and t + 4 (Q8)
                const unsigned char *tile = tiles + (unsigned long long)b * Tile::BYTES;
                const unsigned *words = reinterpret_cast<const unsigned *>(tile);
                unsigned a[4];
                if (FORMAT == 8) {
                    a[0] = __ldg(words + 16 * t + g);
                    a[1] = __ldg(words + 16 * t + g + 8);
                    a[2] = __ldg(words + 16 * (t + 4) + g);
                    a[3] = __ldg(words + 16 * (t + 4) + g + 8);
                } else {
                    const unsigned w0 = __ldg(words + 16 * t + g), w1 = __ldg(words + 16 * t + g + 8);
                    a[0] = w0 & 0x0f0f0f0fu;
                    a[1] = w1 & 0x0f0f0f0fu;
                    a[2] = (w0 >> 4) & 0x0f0f0f0fu;
                    a[3] = (w1 >> 4) & 0x0f0f0f0fu;
                }
                // the f16 scales (and Q4_1's mins) of rows g and g + 8: 16-bit loads (the tile is 16-aligned)
                const unsigned short *scales = reinterpret_cast<const unsigned short *>(tile + Tile::QUANTS);
                const float d0 = __half2float(__ushort_as_half(__ldg(scales + g)));
                const float d1 = __half2float(__ushort_as_half(__ldg(scales + g + 8)));
                float c0 = 0.0f, c1 = 0.0f;
                if (C_FROM == 0) {
                    c0 = -8.0f * d0;
                    c1 = -8.0f * d1;
                }
                if (C_FROM == 1) {
                    c0 = __half2float(__ushort_as_half(__ldg(scales + 16 + g)));
                    c1 = __half2float(__ushort_as_half(__ldg(scales + 16 + g + 8)));
                }
#pragma unroll
                for (int j = 0; j < NT; ++j) {
                    if ((unsigned)j >= ntiles) continue; // the same for the warp's lanes
                    // B: row 8j + g of the staged x, bytes 4t .. 4t + 3 and 4t + 16 .. of block bb
                    const unsigned char *xr = xst + (8 * j + g) * LINEAR_QUANTIZED_MMA_ROW_BYTES + 32 * bb + 4 * t;
                    const unsigned bf[2] = {*reinterpret_cast<const unsigned *>(xr),
                                            *reinterpret_cast<const unsigned *>(xr + 16)};
                    int isum[4] = {0, 0, 0, 0};
                    kiln_mma_m16n8k32_s8(isum, a, bf);
                    // isum[u]: W row g (u < 2) or g + 8, x row 8j + 2t + u % 2; a row past m reads row m - 1's
                    // scales (its sums are zeros, never stored)
                    const unsigned i0 = row0 + 8 * j + 2 * t, i1 = i0 + 1;
                    const float2 x0 = __ldg(xds + (unsigned long long)(i0 < m ? i0 : m - 1) * blocks + b);
                    const float2 x1 = __ldg(xds + (unsigned long long)(i1 < m ? i1 : m - 1) * blocks + b);
                    acc[j][0] += d0 * x0.x * (float)isum[0] + c0 * x0.y;
                    acc[j][1] += d0 * x1.x * (float)isum[1] + c0 * x1.y;
                    acc[j][2] += d1 * x0.x * (float)isum[2] + c1 * x0.y;
                    acc[j][3] += d1 * x1.x * (float)isum[3] + c1 * x1.y;
                }
            }
        }
        __syncthreads();
    }
    if (group >= groups) return;
#pragma unroll
    for (int j = 0; j < NT; ++j) {
#pragma unroll
        for (int u = 0; u < 4; ++u) {
            const unsigned r = group * LINEAR_QUANTIZED_GROUP_ROWS + g + (u >= 2 ? 8 : 0);
            const unsigned i = row0 + 8 * j + 2 * t + u % 2;
            if (r < n && i < m) y[(unsigned long long)i * n + r] = acc[j][u];
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// W decoded to f32 [rows, cols], one weight per thread, as src/backend/cpu/dequantize.rs (see there for
// the block layouts) and QuantizedMatrix's tiles for the grouped formats.

// Element (r, c) of a grouped format: its quant and the f16 scales at the tile's end.
template <int QUANT_BYTES, bool MINS>
__device__ __forceinline__ const unsigned char *linear_quantized_tile_of(const unsigned char *w, unsigned long long r,
                                                                         unsigned long long c, unsigned long long cols) {
    typedef LinearQuantizedTile<QUANT_BYTES, MINS> Tile;
    const unsigned long long blocks = cols / 32, group = r / LINEAR_QUANTIZED_GROUP_ROWS;
    return w + (group * blocks + c / 32) * Tile::BYTES;
}

__device__ __forceinline__ float linear_quantized_q4_0_at(const unsigned char *w, unsigned long long r,
                                                          unsigned long long c, unsigned long long cols) {
    typedef LinearQuantizedTile<16, false> Tile;
    const unsigned char *tile = linear_quantized_tile_of<16, false>(w, r, c, cols);
    const unsigned lane = r % LINEAR_QUANTIZED_GROUP_ROWS, e = c % 32, byte = e % 16;
    const unsigned char qb = tile[64 * (byte / 4) + 4 * lane + byte % 4];
    const int q = e < 16 ? (qb & 15) : (qb >> 4);
    return __fmul_rn(linear_quantized_f16(tile + Tile::QUANTS + 2 * lane), (float)(q - 8));
}

__device__ __forceinline__ float linear_quantized_q4_1_at(const unsigned char *w, unsigned long long r,
                                                          unsigned long long c, unsigned long long cols) {
    typedef LinearQuantizedTile<16, true> Tile;
    const unsigned char *tile = linear_quantized_tile_of<16, true>(w, r, c, cols);
    const unsigned lane = r % LINEAR_QUANTIZED_GROUP_ROWS, e = c % 32, byte = e % 16;
    const unsigned char qb = tile[64 * (byte / 4) + 4 * lane + byte % 4];
    const int q = e < 16 ? (qb & 15) : (qb >> 4);
    const float d = linear_quantized_f16(tile + Tile::QUANTS + 2 * lane);
    const float m = linear_quantized_f16(tile + Tile::QUANTS + 32 + 2 * lane);
    return __fadd_rn(__fmul_rn(d, (float)q), m);
}

__device__ __forceinline__ float linear_quantized_q8_0_at(const unsigned char *w, unsigned long long r,
                                                          unsigned long long c, unsigned long long cols) {
    typedef LinearQuantizedTile<32, false> Tile;
    const unsigned char *tile = linear_quantized_tile_of<32, false>(w, r, c, cols);
    const unsigned lane = r % LINEAR_QUANTIZED_GROUP_ROWS, e = c % 32;
    const signed char q = (signed char)tile[64 * (e / 4) + 4 * lane + e % 4];
    return __fmul_rn((float)q, linear_quantized_f16(tile + Tile::QUANTS + 2 * lane));
}

// Q4_K: d, dmin | 12 bytes of six-bit scales and mins | 128 bytes of nibbles; sub-block s = e / 32.
__device__ __forceinline__ float linear_quantized_q4_k_at(const unsigned char *w, unsigned long long r,
                                                          unsigned long long c, unsigned long long cols) {
    const unsigned char *blk = w + (r * (cols / 256) + c / 256) * 144;
    const unsigned e = c % 256, s = e / 32;
    const unsigned char *sc = blk + 4;
    unsigned scale, min;
    if (s < 4) {
        scale = sc[s] & 0x3f;
        min = sc[s + 4] & 0x3f;
    } else {
        scale = (sc[s + 4] & 0xf) | ((sc[s - 4] >> 2) & 0x30);
        min = (sc[s + 4] >> 4) | ((sc[s] >> 2) & 0x30);
    }
    const unsigned q = (blk[16 + 32 * (s / 2) + e % 32] >> (4 * (s % 2))) & 0xf;
    const float d = __fmul_rn(linear_quantized_f16(blk), (float)scale);
    const float m = __fmul_rn(linear_quantized_f16(blk + 2), (float)min);
    return __fsub_rn(__fmul_rn(d, (float)q), m);
}

// Q6_K: ql 128 | qh 64 | 16 signed scales | d; element e = 128h + p.
__device__ __forceinline__ float linear_quantized_q6_k_at(const unsigned char *w, unsigned long long r,
                                                          unsigned long long c, unsigned long long cols) {
    const unsigned char *blk = w + (r * (cols / 256) + c / 256) * 210;
    const unsigned e = c % 256, h = e / 128, p = e % 128;
    const unsigned low = (blk[64 * h + p % 64] >> (4 * (p / 64))) & 0xf;
    const unsigned high = (blk[128 + 32 * h + p % 32] >> (2 * (p / 32))) & 3;
    const int q = (int)(low | (high << 4)) - 32;
    const float d = __fmul_rn(linear_quantized_f16(blk + 208), (float)(signed char)blk[192 + e / 16]);
    return __fmul_rn(d, (float)q);
}

#define LINEAR_QUANTIZED_DEQUANTIZE_KERNEL(AT)                                                                         \
    (const unsigned char *w, float *out, unsigned long long rows, unsigned long long cols) {                           \
        for (unsigned long long i = kiln_thread_index(); i < rows * cols; i += kiln_thread_count())                    \
            out[i] = AT(w, i / cols, i % cols, cols);                                                                  \
    }
#define LINEAR_QUANTIZED_QUANTIZE_X_KERNEL(T)                                                                          \
    (const T *x, signed char *xq, float2 *xds, unsigned long long blocks) {                                            \
        linear_quantized_quantize_x_impl(x, xq, xds, blocks);                                                          \
    }
#define LINEAR_QUANTIZED_GROUP_KERNEL(FORMAT, C_FROM)                                                                  \
    (const unsigned char *w, const signed char *xq, const float2 *xds, float *y, unsigned n, unsigned blocks) {        \
        linear_quantized_group_impl<FORMAT, C_FROM>(w, xq, xds, y, n, blocks);                                         \
    }
#define LINEAR_QUANTIZED_K_KERNEL(FORMAT)                                                                              \
    (const unsigned char *w, const signed char *xq, const float2 *xds, float *y, unsigned n, unsigned blocks) {        \
        linear_quantized_k_impl<FORMAT>(w, xq, xds, y, n, blocks);                                                     \
    }
#define LINEAR_QUANTIZED_MMA_KERNEL(FORMAT, C_FROM)                                                                    \
    (const unsigned char *w, const signed char *xq, const float2 *xds, float *y, unsigned m, unsigned n,               \
     unsigned blocks) {                                                                                                \
        linear_quantized_mma_impl<FORMAT, C_FROM>(w, xq, xds, y, m, n, blocks);                                        \
    }

KILN_ENTRY(linear_quantized_quantize_x, LINEAR_QUANTIZED_QUANTIZE_X_KERNEL, float)
KILN_ENTRY_BOUNDED(linear_quantized_q4_0, 128, LINEAR_QUANTIZED_GROUP_KERNEL, 4, 0)
KILN_ENTRY_BOUNDED(linear_quantized_q4_1, 128, LINEAR_QUANTIZED_GROUP_KERNEL, 4, 1)
KILN_ENTRY_BOUNDED(linear_quantized_q8_0, 128, LINEAR_QUANTIZED_GROUP_KERNEL, 8, 2)
KILN_ENTRY_BOUNDED(linear_quantized_q4_k, 128, LINEAR_QUANTIZED_K_KERNEL, 0)
KILN_ENTRY_BOUNDED(linear_quantized_q6_k, 128, LINEAR_QUANTIZED_K_KERNEL, 1)
KILN_ENTRY_BOUNDED(linear_quantized_mma_q4_0, 128, LINEAR_QUANTIZED_MMA_KERNEL, 4, 0)
KILN_ENTRY_BOUNDED(linear_quantized_mma_q4_1, 128, LINEAR_QUANTIZED_MMA_KERNEL, 4, 1)
KILN_ENTRY_BOUNDED(linear_quantized_mma_q8_0, 128, LINEAR_QUANTIZED_MMA_KERNEL, 8, 2)
KILN_ENTRY(linear_quantized_dequantize_q4_0, LINEAR_QUANTIZED_DEQUANTIZE_KERNEL, linear_quantized_q4_0_at)
KILN_ENTRY(linear_quantized_dequantize_q4_1, LINEAR_QUANTIZED_DEQUANTIZE_KERNEL, linear_quantized_q4_1_at)
KILN_ENTRY(linear_quantized_dequantize_q8_0, LINEAR_QUANTIZED_DEQUANTIZE_KERNEL, linear_quantized_q8_0_at)
KILN_ENTRY(linear_quantized_dequantize_q4_k, LINEAR_QUANTIZED_DEQUANTIZE_KERNEL, linear_quantized_q4_k_at)
KILN_ENTRY(linear_quantized_dequantize_q6_k, LINEAR_QUANTIZED_DEQUANTIZE_KERNEL, linear_quantized_q6_k_at)
