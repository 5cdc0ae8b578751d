//! AMX-BF16: a 32×32 block of f32 accumulators held in four tile registers and fed by
//! `tdpbf16ps`, for bf16 A and B ([`super::bgemm`]) where the CPU and the OS allow AMX
//! (`backend/cpu/amx.rs`: detection, permission, tile configuration).
//!
//! # Tiles
//!
//! `tdpbf16ps C, A, B` multiplies an A tile of 16 rows × 16 pairs of bf16 (16 × 64 bytes) by a B
//! tile of 16 pair rows × 16 columns (16 × 64 bytes, the "VNNI" layout: pair row q holds
//! `B[2q, j], B[2q + 1, j]` side by side for each column j) into a C tile of 16 × 16 f32:
//! `C[i, j] += A[i, 2q]·B[2q, j] + A[i, 2q + 1]·B[2q + 1, j]` over q < 16, 16·16·32 = 8192
//! multiply-adds per instruction. The kernel keeps a 32×32 block of C in four tiles; each step of
//! 32 along k loads two A tiles and two B tiles and issues four products, so every tile load
//! feeds two of them:
//!
//! ```text
//! tmm0 C[0..16, 0..16]    tmm1 C[0..16, 16..32]     tmm4 Ã rows 0..16     tmm6 B̃ columns 0..16
//! tmm2 C[16..32, 0..16]   tmm3 C[16..32, 16..32]    tmm5 Ã rows 16..32    tmm7 B̃ columns 16..32
//! ```
//!
//! # Packing
//!
//! ```text
//! Ã (one micro-panel, MR = 32 rows):     ã[(t·32 + i)·32 + e]  = A[i, 32t + e]      (kc'/32, 32, 32)
//! B̃ (each micro-panel, NR = 32 columns): b̃[(q·32 + j)·2 + h]   = B[2q + h, j]       (kc'/2, 32, 2)
//! ```
//!
//! with kc' = kc rounded up to 32 (the driver's `K_STEP`) and every padding element (rows past
//! m, columns past n, k past kc) zero, so the k loop needs no masks and the write-back masks
//! only the rows and columns of C. An A tile is 1 KiB at row stride 64 bytes; a B tile is 16
//! rows of 64 bytes at stride 128 (its 16 columns are half of each 128-byte pair row). B̃ is the
//! `vdpbf16ps` kernel's layout with NR = 32, packed by the same function
//! (`avx512bf16::pack_pairs`: a 16×16 transpose of 32-bit pairs for a B contiguous along k, such
//! as a Linear's Wᵀ in `x·Wᵀ`; an interleave of two rows for a row-major B, such as W in
//! `dX = dY·W`). Ã of a row-major A (activations, dY) is a copy, one masked zmm per 32 elements;
//! of a column-major A (`dYᵀ` in `dW = dYᵀ·X`) an interleave of two columns into pairs followed
//! by a 16×16 transpose of the pairs.
//!
//! # Cost
//!
//! Per step of 32 along k: 4 tile loads, 4 KiB (Ã's 2 KiB from L1, B̃'s 2 KiB streamed from L2),
//! and 4 tile products, 32·32·32 multiply-adds = 65536 flops, 16 flops per byte loaded. On
//! Sapphire Rapids one `tdpbf16ps` issues every 16 cycles (about 1024 flops per cycle and core,
//! 8× `vdpbf16ps` on both FMA ports). A whole 32×32 block of C with alpha 1 and beta 0 or 1 (all
//! but a product's edge blocks) starts the k loop as zeros or as C's running sums, loaded into
//! the four C tiles, and is stored straight back into C; any other block is stored to a 4 KiB
//! buffer and written back by AVX-512 with alpha, beta and the edge masks (the other kernels'
//! write-back). Going through the buffer made GPT-2's bf16 products 1–11% slower on a Sapphire
//! Rapids class Xeon (docs/perf-log.md). KC = 512: Ã is 32 KiB of the 48 KiB L1; NC = 1024: the B̃
//! block is 1 MiB of the 2 MiB L2. Packing costs more, relative to the products, than for the
//! vector kernels: each packed B̃ element feeds only m multiply-adds, at 1024 flops a cycle.
//!
//! # Numerics
//!
//! As `vdpbf16ps` (avx512bf16.rs): the products of bf16 are exact in f32, the accumulation of
//! each is rounded to nearest even, MXCSR is ignored (bf16 inputs below 2⁻¹²⁶ are read as zero,
//! results below it flushed; Intel SDM, TDPBF16PS); NaN and infinities propagate as in f32. A
//! block that goes between the tiles and C directly with beta 1 (C's running sums, a previous KC
//! block's or the caller's) accumulates onto them in the tiles, each product's addition rounded as
//! above, so a subnormal sum in C is read as zero there too; the write-back path adds beta·C once
//! after the k loop, in AVX-512 (MXCSR's rounding and subnormals).

use super::avx512::{first_lanes, transpose_16x16, Zmm};
use super::avx512bf16::pack_pairs;
use super::kernel::Kernel;
use super::matrix::{Epilogue, MatMut, MatRef};
use super::simd::write_back;
use crate::backend::cpu::amx::{self, AmxOp, TileConfig};
use half::bf16;
use std::arch::asm;
use std::arch::x86_64::*;

/// The `tdpbf16ps` micro-kernel.
pub(super) struct AmxBf16;

/// Rows of the C block: two tiles of 16.
const MR: usize = 32;
/// Columns of the C block: two tiles of 16.
const NR: usize = 32;
/// Steps of k per tile product: 16 pairs, 64 bytes of an A tile's row.
const KT: usize = 32;

/// Every tile 16 rows × 64 bytes (module header's drawing: tmm0-3 C, tmm4-5 A, tmm6-7 B).
const TILES: TileConfig = TileConfig::new(&[
    (0, 16, 64),
    (1, 16, 64),
    (2, 16, 64),
    (3, 16, 64),
    (4, 16, 64),
    (5, 16, 64),
    (6, 16, 64),
    (7, 16, 64),
]);

impl Kernel for AmxBf16 {
    type T = f32;
    type In = bf16;
    const MR: usize = MR;
    const NR: usize = NR;
    /// Ã micro-panel 32·512·2 B = 32 KiB of the 48 KiB L1.
    const KC: usize = 512;
    /// B̃ block 512·1024·2 B = 1 MiB of the 2 MiB L2.
    const NC: usize = 1024;
    const K_STEP: usize = KT;

    unsafe fn tile(
        kc: usize,
        a: *const bf16,
        b: *const bf16,
        c: MatMut<f32>,
        mr: usize,
        nr: usize,
        ep: &Epilogue<f32>,
    ) {
        // SAFETY: forwarded contract, which includes the target features and the loaded tiles
        // (`with_thread_state`).
        unsafe { tile(kc, a, b, c, mr, nr, ep) }
    }

    unsafe fn pack_a(mr: usize, kc: usize, a: MatRef<bf16>, dst: &mut [bf16]) {
        // SAFETY: forwarded contract (rows 0..mr, columns 0..kc of `a` are readable, dst holds
        // round_up(kc, 32)·MR elements).
        unsafe { pack_a(mr, kc, a, dst) }
    }

    unsafe fn pack_b(kc: usize, nc: usize, b: MatRef<bf16>, dst: &mut [bf16]) {
        let (panel_len, paired) = (kc.next_multiple_of(KT) * NR, kc.next_multiple_of(2) * NR);
        for (j0, panel) in (0..nc).step_by(NR).zip(dst.chunks_exact_mut(panel_len)) {
            // B's columns are the panel's lanes: lane stride cs, k stride rs.
            // SAFETY: columns j0..j0 + nr, rows 0..kc of `b` are readable (forwarded contract),
            // the panel holds round_up(kc, 32)·NR elements and the CPU has AVX-512 BF16's
            // companions F/BW/VL (`supported`).
            unsafe { pack_pairs(b.at(0, j0).ptr, b.cs, b.rs, NR.min(nc - j0), NR, kc, panel) }
            // pack_pairs pads k to a whole pair; the last tile's remaining pair rows are zero too
            panel[paired..].fill(bf16::ZERO);
        }
    }

    unsafe fn with_thread_state<R>(f: impl FnOnce() -> R) -> R {
        // SAFETY: the CPU and OS run AMX-BF16 (caller's contract: `supported`); the tiles are
        // released when `_tiles` drops.
        let _tiles = unsafe { TILES.load() };
        f()
    }
}

/// Whether this CPU and OS run [`AmxBf16`]: AMX-BF16 with the tile data granted, and the AVX-512
/// BF16 (F/BW/VL) its packing and write-back use.
pub(super) fn supported() -> bool {
    super::avx512bf16::supported() && amx::available(AmxOp::Bf16)
}

/// A 32×32 f32 block of C as the tiles store it (row stride 128 bytes), cache-line aligned: the
/// layout of the 32 rows of two zmm accumulators that [`write_back`] takes.
#[repr(C, align(64))]
struct CBlock([[__m512; 2]; MR]);

/// The micro-kernel: [`Kernel::tile`]'s contract with round_up(kc, 32)/32 steps of four tile
/// products.
///
/// A whole 32×32 block of a row-major C with alpha 1 and beta 0 or 1 (every block of a product
/// but its edges, the usual case) goes between the tiles and C directly: beta 1 loads the
/// block's running sums into the tiles, the k loop adds to them, and the tiles are stored back
/// into C. Any other block is stored to a buffer and written back with AVX-512 (alpha, beta,
/// the edge masks).
///
/// # Safety
///
/// As for [`Kernel::tile`]; `TILES` is loaded on this thread and the CPU supports AVX-512F.
#[target_feature(enable = "avx512f")]
unsafe fn tile(kc: usize, a: *const bf16, b: *const bf16, c: MatMut<f32>, mr: usize, nr: usize, ep: &Epilogue<f32>) {
    let direct = mr == MR && nr == NR && c.cs == 1 && ep.alpha == 1.0 && (ep.beta == 0.0 || ep.beta == 1.0);
    let mut block = std::mem::MaybeUninit::<CBlock>::uninit();
    // Where the C tiles start and end: C itself (row stride rs) or the block (stride NR).
    let (c_tiles, c_stride) = if direct {
        (c.ptr, c.rs * size_of::<f32>())
    } else {
        (block.as_mut_ptr().cast::<f32>(), NR * size_of::<f32>())
    };
    // Tile (r, h) of C starts at row 16r, column 16h.
    let lower_half = 16 * c_stride;
    let load_c = direct && ep.beta == 1.0;
    // SAFETY: step t reads Ã's 2 KiB at a + 2048·t bytes (tiles of 16 rows × 64 bytes at row
    // stride 64) and B̃'s 2 KiB at b + 2048·t (16 rows × 64 bytes at stride 128, from offsets 0
    // and 64), inside the round_up(kc, 32)·32 elements of each panel (caller's contract). The C
    // tiles are 16 rows × 64 bytes at `c_stride` from `c_tiles`: in C, the caller's 32×32 block
    // of a row-major C (direct: mr, nr are MR, NR and cs is 1), read only when beta is 1 (then
    // initialised); else the 4 KiB of `block`. The tile configuration is loaded (caller's
    // contract).
    unsafe {
        asm!(
            "test {load_c}, {load_c}",
            "jz 3f",
            "tileloadd tmm0, [{c} + {cs}*1]",
            "tileloadd tmm1, [{c} + {cs}*1 + 64]",
            "tileloadd tmm2, [{c_low} + {cs}*1]",
            "tileloadd tmm3, [{c_low} + {cs}*1 + 64]",
            "jmp 2f",
            "3:",
            "tilezero tmm0",
            "tilezero tmm1",
            "tilezero tmm2",
            "tilezero tmm3",
            "2:",
            "tileloadd tmm4, [{a} + {s64}*1]",
            "tileloadd tmm5, [{a} + {s64}*1 + 1024]",
            "tileloadd tmm6, [{b} + {s128}*1]",
            "tileloadd tmm7, [{b} + {s128}*1 + 64]",
            "tdpbf16ps tmm0, tmm4, tmm6",
            "tdpbf16ps tmm1, tmm4, tmm7",
            "tdpbf16ps tmm2, tmm5, tmm6",
            "tdpbf16ps tmm3, tmm5, tmm7",
            "add {a}, 2048",
            "add {b}, 2048",
            "dec {steps}",
            "jnz 2b",
            "tilestored [{c} + {cs}*1], tmm0",
            "tilestored [{c} + {cs}*1 + 64], tmm1",
            "tilestored [{c_low} + {cs}*1], tmm2",
            "tilestored [{c_low} + {cs}*1 + 64], tmm3",
            a = inout(reg) a => _,
            b = inout(reg) b => _,
            steps = inout(reg) kc.div_ceil(KT) => _,
            s64 = in(reg) 64usize,
            s128 = in(reg) 128usize,
            c = in(reg) c_tiles,
            c_low = in(reg) c_tiles.wrapping_byte_add(lower_half),
            cs = in(reg) c_stride,
            load_c = in(reg) usize::from(load_c),
            options(nostack),
        );
    }
    if !direct {
        // SAFETY: the tile stores above initialised the whole block; AVX-512F is supported;
        // mr <= MR, nr <= NR = 2·16 and the C view is the caller's.
        unsafe { write_back::<Zmm<f32>, MR>(&block.assume_init_ref().0, c, mr, nr, ep) }
    }
}

/// Packs the `mr×kc` block `a` (`mr <= MR`) into Ã (module header), zero past row mr and
/// column kc.
///
/// # Safety
///
/// Element `(i, p)` of `a` is readable for `i < mr`, `p < kc`; `dst` holds at least
/// `round_up(kc, 32)·MR` elements; the CPU supports AVX-512 F, BW and VL.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn pack_a(mr: usize, kc: usize, a: MatRef<bf16>, dst: &mut [bf16]) {
    let steps = kc.div_ceil(KT);
    let dst = &mut dst[..steps * KT * MR];
    if a.cs == 1 {
        // Row-major A: each tile row is 32 contiguous elements of a row of A, one masked zmm.
        for t in 0..steps {
            let width = (kc - KT * t).min(KT);
            let read: __mmask32 = if width == KT { !0 } else { (1 << width) - 1 };
            for i in 0..MR {
                // SAFETY: row i < mr holds elements KT·t..KT·t + width < kc (the mask reads no
                // other); the store writes row i of step t's 32 rows of 32 (64 bytes) in dst.
                unsafe {
                    let row = if i < mr {
                        _mm512_maskz_loadu_epi16(read, a.ptr.add(i * a.rs + KT * t).cast())
                    } else {
                        _mm512_setzero_si512()
                    };
                    _mm512_storeu_si512(dst.as_mut_ptr().add((t * MR + i) * KT).cast(), row);
                }
            }
        }
    } else if a.rs == 1 {
        // Column-major A: column p holds A[0..mr, p] contiguously. Interleave columns 2q and
        // 2q + 1 into 32-bit pairs, 16 rows at a time, then transpose 16 pair steps × 16 rows.
        for t in 0..steps {
            for i0 in (0..MR).step_by(16) {
                let read = first_lanes(mr.saturating_sub(i0).min(16));
                let column = |p: usize| {
                    if p < kc {
                        // SAFETY: the mask reads rows i0.. < mr of column p < kc.
                        unsafe {
                            _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(
                                read,
                                a.ptr.wrapping_add(p * a.cs + i0).cast(),
                            ))
                        }
                    } else {
                        _mm512_setzero_si512()
                    }
                };
                let mut pairs = [_mm512_setzero_ps(); 16];
                for (q, pair) in pairs.iter_mut().enumerate() {
                    let p = KT * t + 2 * q;
                    *pair = _mm512_castsi512_ps(_mm512_or_si512(column(p), _mm512_slli_epi32::<16>(column(p + 1))));
                }
                // SAFETY: rows i0..i0 + 16 of step t are 16 rows of 16 pairs (64 bytes) in dst,
                // 4-byte aligned (the buffer is 64-byte aligned).
                unsafe { transpose_16x16(pairs, dst.as_mut_ptr().add((t * MR + i0) * KT).cast(), KT / 2, 16) };
            }
        }
    } else {
        for t in 0..steps {
            for i in 0..MR {
                for e in 0..KT {
                    let p = KT * t + e;
                    dst[(t * MR + i) * KT + e] = if i < mr && p < kc {
                        // SAFETY: (i, p) is an element of the block (caller's contract).
                        unsafe { *a.at(i, p).ptr }
                    } else {
                        bf16::ZERO
                    };
                }
            }
        }
    }
}
