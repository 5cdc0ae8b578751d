// matmul.cu — batched matrix product with a fused epilogue:
//   C[b] = epilogue(A[b] · B[b]),  A[b] [M, K], B[b] [K, N], C contiguous [batch, M, N],
//   epilogue(y)[i][j] = act(y[i][j] + bias[j]) + residual[b][i][j]   (bias, GELU and residual optional)
// accumulated in f32 (f64 for f64) and rounded once to T at the store. Optionally a second output
// Z[b][i][j] = y[i][j] + bias[j], the activation's input (linear_gelu keeps it for GELU's backward, as
// llm.c keeps fch): the same launch, one more store per element of C.
//
// Why store Z rather than recompute it in the backward: recomputing is a second GEMM, 2·M·N·K FLOPs
// (plus writing Z and reading it back, which the backward needs either way); storing costs M·N·sizeof(T)
// bytes more in the forward. So storing saves 2·K / sizeof(T) FLOPs per byte written: 768 for GPT-2's
// MLP in bf16 (K = 768), 384 in f32, against an H100/H200's ridge point of roughly 990 TFLOP/s over
// 3.35-4.8 TB/s ≈ 200-300 FLOPs per byte (SIMT f32: 67 TFLOP/s, ~15-20). At B·T = 8192, N = 3072 that is
// 50 MB more written (bf16, ~10 µs at 4.8 TB/s) against 38.7 GFLOP not recomputed (~40-60 µs on tensor
// cores). The price is memory: Z lives until the backward (as llm.c's fch does).
//
// Operands are read in place through their strides: each matrix is "k-contiguous" (A row-major, or B
// stored as [N, K] row-major, as a Linear weight) or "mn-contiguous" (A stored as [K, M], B row-major);
// lda/ldb is the other stride. Batch entries are found through a KilnLayout over the batch dims (any
// broadcast: stride-0 dims). The Rust wrapper copies an operand that is neither (one contiguous copy).
//
// Algorithm: one block computes a BM x BN tile of C. The K dimension is walked in BK-wide slabs through
// a STAGES-deep ring of shared-memory buffers: slab kt + STAGES - 1 is being copied (cp.async, 16 bytes
// per thread and instruction, zero-filled past the matrix edge) while slab kt is multiplied. A slab keeps
// the global layout (k-contiguous tiles as [x][BK], the others as [BK][x]), so the copy is always along
// the contiguous dim; rows are padded by 16 bytes against bank conflicts. When an operand is not 16-byte
// aligned (base, ld), its slabs are loaded one element at a time instead (same layout, same zero fill).
// Either way the stores into the slab are free of bank conflicts and a warp's loads cover whole rows
// (load_slab says how; Emu's profiler counts both, docs/kernels.md).
//   - f32/f64, SIMT: BM = BN = 64, BK = 16; 256 threads as 16 x 16, each a 4 x 4 register tile.
//   - bf16/f16, tensor cores: BM = BN = 128, BK = 32; 8 warps as 2 (M) x 4 (N), each a 64 x 32 tile of
//     4 x 4 mma.m16n8k16 (f32 accumulators, 64 per thread); fragments come from ldmatrix (.trans for
//     an mn-contiguous A or an n-contiguous B, which gives every transpose combination without shuffles).
// The epilogue works from the accumulators in registers: predicated on i < M, j < N; K = 0 gives
// epilogue(0). The tensor-core kernel stores runs of 8 columns of a row per lane, 16-byte accesses
// (the fragments regrouped among each quad of lanes by kiln_quad_transpose: a warp's store writes 8
// rows x 64 contiguous bytes) when N % 8 == 0 and C, Z, bias and residual are 16-byte aligned; otherwise
// one element at a time in fragment order (a warp's store: 8 rows x 4 lanes x 2 bytes). The SIMT
// kernel's element stores are 16 consecutive elements per half warp.
// Launch: 256 threads; grid (ceil(N / BN), ceil(M / BM), min(batch, 65535)) with a loop over the rest of
// the batch; dynamic shared memory STAGES * (tile(BM) + tile(BN)) * sizeof(T) (matmul_smem_bytes in
// src/backend/cuda/matmul.rs: 30 KiB f32, 36 KiB f64, 60 KiB bf16/f16).
// Roofline: 2·M·N·K FLOPs per batch entry; bytes ≥ (M·K + K·N + M·N) · sizeof(T) (+ N bias, + M·N Z, + M·N
// residual), each A slab re-read ceil(N / BN) times and each B slab ceil(M / BM) times (from L2).
// Z is written only when a backward will run (not under no_grad, not for inference). Dynamic shared
// memory over 48 KiB (the bf16/f16 tiles) is opt-in on a GPU: both executors raise the kernel's limit.
// Entry points: Tensor::matmul (no epilogue), Tensor::linear, linear_gelu, linear_residual (x·wᵀ + b with
// w [out, in]; one launch each). The CPU path applies the same epilogue to its f32 product before
// rounding, so Cpu and Emu agree to f32 rounding.
// Checks: tests/devices.rs matmul_every_layout_and_batch (M, N, K in {1, 7, 16, 63, 65, 129}, both
// operands row- or column-major, strided views, five batch/broadcast patterns, every float dtype, values
// and both gradients against the CPU), linear_with_fused_epilogues,
// matmul_epilogue_in_runs_of_eight_columns, K = 0, broadcast and unaligned operands; tests/bench.rs
// emu_profile_* (Emu's profiler: no bank conflicts in the slab stores, whole sectors in the epilogue's
// stores); tests/gradcheck.rs linear_and_its_fused_epilogues (f64); tests/ptx_helpers.rs (each PTX
// helper); tests/ptxas.rs (no spills). Benchmarks: benches/matmul.rs cuda_matmul (f32 and bf16 at
// 1024-4096, plain and linear_gelu; skipped without a GPU), kiln bench matmul_* next to cuBLAS.
// Headroom (not yet measured on a GPU): the SIMT kernel indexes shared memory through runtime strides
// (scalar LDS, 128-190 registers; per-layout template instances would allow float4 LDS and a 128 x 128
// tile); the tensor-core kernel's element-by-element epilogue (odd N) could store pairs where N is
// even; no split-K for small M·N with large K; no swizzled block order for L2 reuse; Hopper's
// wgmma/TMA are not used.
#include "common.cuh"

#define MATMUL_THREADS 256

template <typename T> struct MatmulTile;
template <> struct MatmulTile<float> {
    static constexpr int BM = 64, BN = 64, BK = 16, STAGES = 3;
};
template <> struct MatmulTile<double> {
    static constexpr int BM = 64, BN = 64, BK = 16, STAGES = 2;
};
template <> struct MatmulTile<__nv_bfloat16> {
    static constexpr int BM = 128, BN = 128, BK = 32, STAGES = 3;
};
template <> struct MatmulTile<__half> {
    static constexpr int BM = 128, BN = 128, BK = 32, STAGES = 3;
};

// Elements of padding per shared-memory row (16 bytes: rows stay 16-byte aligned for cp.async/ldmatrix).
template <typename T> __device__ __forceinline__ constexpr int pad() { return 16 / (int)sizeof(T); }

// Elements of one operand's slab buffer: X (BM or BN) by BK, in either layout.
template <typename T, int X, int BK> __device__ __forceinline__ constexpr int slab_elems() {
    return X * (BK + pad<T>()) > BK * (X + pad<T>()) ? X * (BK + pad<T>()) : BK * (X + pad<T>());
}

// One operand of the product as the kernel reads it: element (x, k) — x is m for A and n for B — of
// batch entry b is at base + x * sx + k * sk, with sk = 1 (kcontig) or sx = 1, the other being ld.
struct Operand {
    const void *ptr;
    long long ld;
    int kcontig;
};

// Copies ROWS x COLS elements (COLS along the contiguous dim) from g (row stride ld) to s (row stride
// COLS + pad), zero past rows_left rows and cols_left columns. With `vec`, by 16-byte cp.async (g and ld
// 16-byte aligned); otherwise element by element.
//
// Which thread moves what decides the shared-memory bank conflicts of the stores (and the coalescing
// of the loads). A 16-byte store is done by quarter warps, so each group of 8 lanes must cover the 32
// banks once: rows of 8 or more chunks give a quarter warp 8 consecutive chunks of one row (128
// contiguous bytes); rows of 4 chunks (the k-contiguous slabs: 64 bytes, padded to 80 = 5 chunks) give
// it one chunk column of 8 consecutive rows, which start at 5 r mod 8: 8 distinct 16-byte bank groups.
// (Eight lanes on two rows' 4 chunks would put chunk 0 of the first and chunk 3 of the second in the
// same 4 banks, as 80 + 48 = 128: 2 wavefronts per quarter instead of 1.) A warp still reads the same
// 8 rows x 64 bytes of global memory. Element by element, consecutive lanes take consecutive elements
// of a row: 64 or 128 contiguous bytes per row for the loads, one word per bank for the stores, except
// that 16 floats per row put a warp on two rows, and rows 20 words apart share 4 banks; so the second
// half warp takes the row 4 further on (80 words: the other 16 banks).
template <typename T, int ROWS, int COLS>
__device__ __forceinline__ void load_slab(T *s, const T *g, const T *safe, long long ld, int rows_left, int cols_left,
                                          bool vec) {
    constexpr int V = 16 / sizeof(T), CPR = COLS / V, CHUNKS = ROWS * CPR, SLD = COLS + pad<T>();
    static_assert(COLS % V == 0 && CHUNKS % MATMUL_THREADS == 0, "whole chunks for every thread");
    static_assert(CPR % 8 == 0 || (CPR == 4 && (SLD * sizeof(T) / 16) % 2 == 1),
                  "a quarter warp's 8 chunks: of one row, or of 8 rows whose 16-byte stride is odd");
    // Not unrolled: unrolled, these loops took matmul_bf16 to 237 registers on sm_80 (126 as they are),
    // past the 128 that let two of its 256-thread blocks share an SM.
    if (vec) {
#pragma unroll 1
        for (int i = 0; i < CHUNKS / MATMUL_THREADS; ++i) {
            const int c = threadIdx.x + i * MATMUL_THREADS;
            // chunk c is (r, col / V): along a row, or (4 chunks per row) down 8 rows per quarter warp
            const int r = CPR >= 8 ? c / CPR : (c / 32) * 8 + c % 8;
            const int col = (CPR >= 8 ? c % CPR : c % 32 / 8) * V;
            const int left = cols_left - col;
            const int n = r < rows_left ? (left < 0 ? 0 : (left < V ? left : V)) : 0;
            kiln_cp_async_16(s + r * SLD + col, n > 0 ? g + r * ld + col : safe, n * (unsigned)sizeof(T));
        }
    } else {
        constexpr bool TWO_ROWS_PER_WARP = sizeof(T) == 4 && COLS == 16;
        static_assert(!TWO_ROWS_PER_WARP || (ROWS % 8 == 0 && 4 * SLD % 32 == 16), "rows r and r + 4 in other banks");
        const T zero = KilnFloat<T>::down(0.0f);
#pragma unroll 1
        for (int i = 0; i < ROWS * COLS / MATMUL_THREADS; ++i) {
            const int e = threadIdx.x + i * MATMUL_THREADS, col = e % COLS;
            int r = e / COLS;
            // warp k's rows 2k and 2k + 1 become rows k % 4 and k % 4 + 4 of their group of 8
            if (TWO_ROWS_PER_WARP) r = (r & ~7) | (r & 1) << 2 | (r & 6) >> 1;
            T v = zero;
            if (r < rows_left && col < cols_left) v = g[r * ld + col];
            s[r * SLD + col] = v; // one store for every lane, in range or not
        }
    }
}

// The X x BK slab of `op` whose first element is (x0, k0) into s.
template <typename T, int X, int BK>
__device__ __forceinline__ void load_operand(T *s, const Operand &op, const T *base, int x0, int k0, int xs, int ks,
                                             bool vec) {
    if (op.kcontig)
        load_slab<T, X, BK>(s, base + (long long)x0 * op.ld + k0, base, op.ld, xs - x0, ks - k0, vec);
    else
        load_slab<T, BK, X>(s, base + (long long)k0 * op.ld + x0, base, op.ld, ks - k0, xs - x0, vec);
}

// ---------------------------------------------------------------------------------------------------
// The two inner products: a block's accumulators, how a slab pair is multiplied into them, and which
// element of C each accumulator is.

// SIMT: thread (tx, ty) = (tid % 16, tid / 16) owns rows 4 ty .. 4 ty + 3 and columns tx, tx + 16, tx + 32,
// tx + 48. Strided columns, not 4 tx .. 4 tx + 3: for each k, the 16 lanes of a half warp then read 16
// consecutive elements of an n-contiguous B slab, in 16 banks (with 4 tx + i, lanes tx and tx + 8 read
// different words of one bank: a 2-way conflict on every B load), and of a k-contiguous one (f32 row
// stride BK + pad = 20 words) 8 banks, 2-way rather than 8-way; and the epilogue stores 16 consecutive
// elements of C per half warp instead of 16 elements 4 apart.
template <typename T> struct SimtMma {
    typedef typename KilnFloat<T>::Acc A;
    static constexpr int BM = MatmulTile<T>::BM, BN = MatmulTile<T>::BN, BK = MatmulTile<T>::BK;
    static constexpr int COUNT = 16;
    static constexpr int RUN = 1; // stores one element at a time (get, row, col)
    A acc[COUNT];

    __device__ __forceinline__ void zero() {
#pragma unroll
        for (int i = 0; i < COUNT; ++i) acc[i] = (A)0;
    }
    __device__ __forceinline__ A get(int i) const { return acc[i]; }

    __device__ __forceinline__ void multiply(const T *sa, const T *sb, int a_kcontig, int b_kcontig) {
        const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
        // element (x, k) of a slab is at x * sx + k * sk
        const int sam = a_kcontig ? BK + pad<T>() : 1, sak = a_kcontig ? 1 : BM + pad<T>();
        const int sbn = b_kcontig ? BK + pad<T>() : 1, sbk = b_kcontig ? 1 : BN + pad<T>();
        const T *pa = sa + 4 * ty * sam, *pb = sb + tx * sbn;
#pragma unroll
        for (int k = 0; k < BK; ++k) {
            A a[4], b[4];
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                a[i] = KilnFloat<T>::up(pa[i * sam + k * sak]);
                b[i] = KilnFloat<T>::up(pb[16 * i * sbn + k * sbk]);
            }
#pragma unroll
            for (int i = 0; i < 4; ++i)
#pragma unroll
                for (int j = 0; j < 4; ++j) acc[i * 4 + j] += a[i] * b[j];
        }
    }

    // (row, column) of accumulator i within the block's tile.
    static __device__ __forceinline__ int row(int i) { return 4 * (int)(threadIdx.x / 16) + i / 4; }
    static __device__ __forceinline__ int col(int i) { return (int)(threadIdx.x % 16) + 16 * (i % 4); }
};

// Tensor cores: warp w = (wm, wn) = (w / 4, w % 4) owns rows 64 wm .. + 63 and columns 32 wn .. + 31 as
// 4 x 4 tiles of 16 x 8; acc[mt * 4 + nt] is tile (mt, nt)'s C fragment, get(i) its element i % 4.
template <typename T> struct TensorCoreMma {
    typedef float A;
    static constexpr int BM = MatmulTile<T>::BM, BN = MatmulTile<T>::BN, BK = MatmulTile<T>::BK;
    static constexpr int COUNT = 64;
    static constexpr int RUN = 8; // also stores runs of 8 columns (for_each_run)
    A acc[16][4];

    __device__ __forceinline__ void zero() {
#pragma unroll
        for (int t = 0; t < 16; ++t)
#pragma unroll
            for (int i = 0; i < 4; ++i) acc[t][i] = 0.0f;
    }
    __device__ __forceinline__ A get(int i) const { return acc[i / 4][i % 4]; }

    __device__ __forceinline__ void multiply(const T *sa, const T *sb, int a_kcontig, int b_kcontig) {
        const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, wm = warp / 4, wn = warp % 4;
        const int quad = lane / 8, r8 = lane % 8;
#pragma unroll
        for (int kk = 0; kk < BK; kk += 16) {
            unsigned fa[4][4], fb[4][2];
#pragma unroll
            for (int mt = 0; mt < 4; ++mt) {
                // matrix quad: rows 8 (quad % 2) .., k 8 (quad / 2) .. of the 16 x 16 A tile
                const int m = wm * 64 + mt * 16 + (quad % 2) * 8, k = kk + (quad / 2) * 8;
                if (a_kcontig)
                    kiln_ldmatrix_x4(fa[mt], sa + (m + r8) * (BK + pad<T>()) + k);
                else
                    kiln_ldmatrix_x4_trans(fa[mt], sa + (k + r8) * (BM + pad<T>()) + m);
            }
#pragma unroll
            for (int p = 0; p < 2; ++p) {
                // two 16 x 8 B tiles: registers 0-1 for columns n .. n + 7, 2-3 for n + 8 .. n + 15
                const int n = wn * 32 + p * 16;
                unsigned r[4];
                if (b_kcontig)
                    kiln_ldmatrix_x4(r, sb + (n + (quad / 2) * 8 + r8) * (BK + pad<T>()) + kk + (quad % 2) * 8);
                else
                    kiln_ldmatrix_x4_trans(r, sb + (kk + lane % 16) * (BN + pad<T>()) + n + (lane / 16) * 8);
                fb[2 * p][0] = r[0];
                fb[2 * p][1] = r[1];
                fb[2 * p + 1][0] = r[2];
                fb[2 * p + 1][1] = r[3];
            }
#pragma unroll
            for (int mt = 0; mt < 4; ++mt)
#pragma unroll
                for (int nt = 0; nt < 4; ++nt) kiln_mma_m16n8k16<T>(acc[mt * 4 + nt], fa[mt], fb[nt]);
        }
    }

    static __device__ __forceinline__ int row(int i) {
        const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
        return (warp / 4) * 64 + (i / 16) * 16 + lane / 4 + ((i % 4) / 2) * 8;
    }
    static __device__ __forceinline__ int col(int i) {
        const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
        return (warp % 4) * 32 + ((i / 4) % 4) * 8 + 2 * (lane % 4) + i % 2;
    }

    // Calls f(row, col, v) for each of the lane's 8 runs: v[0..7] are the accumulators of (row, col ..
    // col + 7) within the block's tile. Each row of a warp's 16 x 32 strip mt is spread over a quad as
    // 4 tiles x 4 lanes x 2 columns; kiln_quad_transpose gives lane t tile t's 8 columns. Warp-wide.
    template <typename F> __device__ __forceinline__ void for_each_run(F f) const {
        const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
#pragma unroll
        for (int mt = 0; mt < 4; ++mt)
#pragma unroll
            for (int h = 0; h < 2; ++h) { // rows g and g + 8 of the strip: elements 0, 1 and 2, 3
                float v[8];
#pragma unroll
                for (int nt = 0; nt < 4; ++nt) {
                    v[2 * nt] = acc[mt * 4 + nt][2 * h];
                    v[2 * nt + 1] = acc[mt * 4 + nt][2 * h + 1];
                }
                kiln_quad_transpose(v);
                f((warp / 4) * 64 + mt * 16 + h * 8 + lane / 4, (warp % 4) * 32 + 8 * (lane % 4), v);
            }
    }
};

// The epilogue of N consecutive elements of one row of C: v are the products of (row, j .. j + N - 1),
// `at` is the offset of (row, j) in C (and in Z and the residual). With N > 1 every access is one
// N-element pack (the pointers are aligned to it).
template <typename T, int N, typename A>
__device__ __forceinline__ void matmul_epilogue(A (&v)[N], T *cb, T *zb, const T *bias, const T *rb,
                                                unsigned long long at, int j, int gelu) {
    typedef KilnPack<T, N> Pack;
    typedef KilnFloat<T> F;
    if (bias) {
        const Pack b = *reinterpret_cast<const Pack *>(bias + j);
#pragma unroll
        for (int e = 0; e < N; ++e) v[e] += F::up(b.v[e]);
    }
    Pack out;
    if (zb) {
#pragma unroll
        for (int e = 0; e < N; ++e) out.v[e] = F::down(v[e]);
        *reinterpret_cast<Pack *>(zb + at) = out;
    }
    if (gelu) {
#pragma unroll
        for (int e = 0; e < N; ++e) v[e] = kiln_gelu(v[e]);
    }
    if (rb) {
        const Pack r = *reinterpret_cast<const Pack *>(rb + at);
#pragma unroll
        for (int e = 0; e < N; ++e) v[e] += F::up(r.v[e]);
    }
#pragma unroll
    for (int e = 0; e < N; ++e) out.v[e] = F::down(v[e]);
    *reinterpret_cast<Pack *>(cb + at) = out;
}

// ---------------------------------------------------------------------------------------------------

template <typename T, typename Mma>
__device__ __forceinline__ void matmul_impl(const T *a, KilnLayout a_batch, long long lda, int a_kcontig, const T *b,
                                            KilnLayout b_batch, long long ldb, int b_kcontig, T *c, T *pre,
                                            const T *bias, const T *residual, unsigned m, unsigned n, unsigned k,
                                            unsigned long long batch, int gelu) {
    typedef typename Mma::A A;
    constexpr int BM = MatmulTile<T>::BM, BN = MatmulTile<T>::BN, BK = MatmulTile<T>::BK;
    constexpr int STAGES = MatmulTile<T>::STAGES, V = 16 / sizeof(T);
    constexpr int SA = slab_elems<T, BM, BK>(), SB = slab_elems<T, BN, BK>();
    KILN_DYNAMIC_SMEM(T, smem); // STAGES x (SA + SB)
    const Operand oa = {a, lda, a_kcontig}, ob = {b, ldb, b_kcontig};
    const int m0 = blockIdx.y * BM, n0 = blockIdx.x * BN;
    const int ktiles = (int)((k + BK - 1) / BK);

    for (unsigned long long bi = blockIdx.z; bi < batch; bi += gridDim.z) {
        const T *ab = a + kiln_offset(a_batch, bi), *bb = b + kiln_offset(b_batch, bi);
        const bool va = kiln_aligned<16>(ab) && lda % V == 0, vb = kiln_aligned<16>(bb) && ldb % V == 0;
        Mma mma;
        mma.zero();
        // prologue: slabs 0 .. STAGES - 2 in flight, one commit group each (empty groups are fine)
#pragma unroll
        for (int s = 0; s < STAGES - 1; ++s) {
            if (s < ktiles) {
                load_operand<T, BM, BK>(smem + s * (SA + SB), oa, ab, m0, s * BK, (int)m, (int)k, va);
                load_operand<T, BN, BK>(smem + s * (SA + SB) + SA, ob, bb, n0, s * BK, (int)n, (int)k, vb);
            }
            kiln_cp_async_commit();
        }
        for (int kt = 0; kt < ktiles; ++kt) {
            kiln_cp_async_wait<STAGES - 2>(); // this thread's copies of slab kt have landed
            __syncthreads();                  // everyone's have, and slab kt - 1's buffer is free
            const int next = kt + STAGES - 1;
            if (next < ktiles) {
                T *s = smem + (next % STAGES) * (SA + SB);
                load_operand<T, BM, BK>(s, oa, ab, m0, next * BK, (int)m, (int)k, va);
                load_operand<T, BN, BK>(s + SA, ob, bb, n0, next * BK, (int)n, (int)k, vb);
            }
            kiln_cp_async_commit();
            const T *s = smem + (kt % STAGES) * (SA + SB);
            mma.multiply(s, s + SA, a_kcontig, b_kcontig);
        }
        kiln_cp_async_wait<0>();
        __syncthreads(); // the next batch entry's prologue reuses the buffers

        T *cb = c + bi * m * n;
        T *zb = pre ? pre + bi * m * n : pre;
        const T *rb = residual ? residual + bi * m * n : residual;
        constexpr int RUN = Mma::RUN;
        // runs of RUN columns: whole runs (N % RUN == 0) at aligned addresses (each run's offset is a
        // multiple of RUN), the same for every thread of the launch
        const bool runs = RUN > 1 && n % RUN == 0 && kiln_aligned<RUN * sizeof(T)>(cb) &&
                          kiln_aligned<RUN * sizeof(T)>(zb) && kiln_aligned<RUN * sizeof(T)>(bias) &&
                          kiln_aligned<RUN * sizeof(T)>(rb);
        if constexpr (RUN > 1) {
            if (runs) {
                mma.for_each_run([&](int row, int col, float(&v)[RUN]) {
                    const int r = m0 + row, j = n0 + col;
                    if (r < (int)m && j < (int)n)
                        matmul_epilogue<T, RUN>(v, cb, zb, bias, rb, (unsigned long long)r * n + j, j, gelu);
                });
            }
        }
        if (!runs) {
#pragma unroll
            for (int i = 0; i < Mma::COUNT; ++i) {
                const int r = m0 + Mma::row(i), j = n0 + Mma::col(i);
                if (r < (int)m && j < (int)n) {
                    A v[1] = {mma.get(i)};
                    matmul_epilogue<T, 1>(v, cb, zb, bias, rb, (unsigned long long)r * n + j, j, gelu);
                }
            }
        }
    }
}

// Entry points, one per dtype (KILN_ENTRY_BOUNDED, common.cuh): SIMT for f32/f64, tensor cores for
// bf16/f16.
#define MATMUL_KERNEL(T, Mma)                                                                                          \
    (const T *a, KilnLayout a_batch, long long lda, int a_kcontig, const T *b, KilnLayout b_batch, long long ldb,      \
     int b_kcontig, T *c, T *pre, const T *bias, const T *residual, unsigned m, unsigned n, unsigned k,                \
     unsigned long long batch, int gelu) {                                                                             \
        matmul_impl<T, Mma>(a, a_batch, lda, a_kcontig, b, b_batch, ldb, b_kcontig, c, pre, bias, residual, m, n, k,   \
                            batch, gelu);                                                                              \
    }

KILN_ENTRY_BOUNDED(matmul_f32, MATMUL_THREADS, MATMUL_KERNEL, float, SimtMma<float>)
KILN_ENTRY_BOUNDED(matmul_f64, MATMUL_THREADS, MATMUL_KERNEL, double, SimtMma<double>)
KILN_ENTRY_BOUNDED(matmul_bf16, MATMUL_THREADS, MATMUL_KERNEL, __nv_bfloat16, TensorCoreMma<__nv_bfloat16>)
KILN_ENTRY_BOUNDED(matmul_f16, MATMUL_THREADS, MATMUL_KERNEL, __half, TensorCoreMma<__half>)
