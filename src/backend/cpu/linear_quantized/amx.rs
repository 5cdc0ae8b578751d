//! Intel AMX (Advanced Matrix Extensions, Sapphire Rapids and later) for the grouped formats'
//! GEMM: the tile layout and the kernel.
//!
//! # Algorithm
//!
//! A tile register holds up to 16 rows of 64 bytes; `tdpbssd`/`tdpbsud` multiply an A tile of
//! 16 rows × K bytes (signed) with a B tile of K/4 rows × 16 columns × 4 bytes (signed or
//! unsigned: each B row holds 4 consecutive K bytes of each of 16 columns) into a C tile of 16 × 16
//! i32. Each 32-element block has its own scales, so one product per block, K = 32:
//!
//! ```text
//! A  tmm0  16 rows of x (8-bit, one block each, stride k bytes)        16 × 32 bytes
//! B  tmm1  the tile's 16 weight rows: 8 rows of 4 quants × 16 rows    8 × 64 bytes
//! C  tmm2  Σ xq·q for 16 rows of x × 16 weight rows                   16 × 16 i32
//! ```
//!
//! B is exactly the grouped layout's quant words (src/backend/op/quantized.rs: word s holds quant
//! bytes 4s..4s + 4 of each of the 16 rows), so Q8_0 tiles are loaded as stored; the nibble
//! formats are unpacked once per row group into bytes (word s: low nibbles, elements 4s..; word
//! 4 + s: high nibbles, elements 16 + 4s..), the same order. Then an AVX-512 epilogue converts C
//! and accumulates, per row of x, `(d·xd)·C + c·xdsum` on 16 weight rows at once (mod.rs's
//! formula). Per block of 16 × 16 × 32: 3 tile instructions and about 80 vector ones, where the
//! AVX-512 VNNI kernel takes about 350.
//!
//! Detection, the permission request and the tile configuration are shared with the bf16 GEMM
//! (`backend/cpu/amx.rs`).

use super::q8::{Q8Row, QK};
use crate::backend::cpu::amx::{self, AmxOp, TileConfig};
use crate::backend::op::{QuantFormat, GROUP_ROWS};
use std::arch::asm;
use std::arch::x86_64::*;
use std::cell::Cell;
use std::mem::MaybeUninit;

/// Rows of x per tile product (an A tile's 16 rows).
pub(super) const AMX_GEMM_ROWS: usize = 16;

/// Whether this CPU and OS run the AMX-INT8 tile products (`backend/cpu/amx.rs`).
pub(super) fn available() -> bool {
    amx::available(AmxOp::Int8)
}

/// Tiles 0 (A: 16 rows of one block of x), 1 (B: 8 rows of 64 bytes) and 2 (C: 16 × 16 i32), as
/// drawn in the module's documentation.
const TILES: TileConfig = TileConfig::new(&[(0, AMX_GEMM_ROWS, QK), (1, QK / 4, 64), (2, AMX_GEMM_ROWS, 64)]);

/// `C = A·B` on the tiles: A 16 rows of 32 signed bytes at `a` (stride `a_stride`), B 8 rows of
/// 64 bytes at `b` (stride 64), signed (`SIGNED_B`, Q8_0) or unsigned (nibbles); C's 16 × 16 i32
/// stored to `c`.
///
/// # Safety
/// `TILES` is loaded; the addresses hold what is said.
#[inline(always)]
unsafe fn tile_product<const SIGNED_B: bool>(a: *const i8, a_stride: usize, b: *const u8, c: &mut [[i32; 16]; 16]) {
    // SAFETY: the caller's; the loads read 16 × 32 bytes at a and 8 × 64 at b, the store writes
    // c's 1 KiB.
    unsafe {
        if SIGNED_B {
            asm!(
                "tilezero tmm2",
                "tileloadd tmm0, [{a} + {sa}*1]",
                "tileloadd tmm1, [{b} + {sb}*1]",
                "tdpbssd tmm2, tmm0, tmm1",
                "tilestored [{c} + {sb}*1], tmm2",
                a = in(reg) a, sa = in(reg) a_stride, b = in(reg) b, sb = in(reg) 64usize,
                c = in(reg) c.as_mut_ptr(), options(nostack),
            );
        } else {
            asm!(
                "tilezero tmm2",
                "tileloadd tmm0, [{a} + {sa}*1]",
                "tileloadd tmm1, [{b} + {sb}*1]",
                "tdpbsud tmm2, tmm0, tmm1",
                "tilestored [{c} + {sb}*1], tmm2",
                a = in(reg) a, sa = in(reg) a_stride, b = in(reg) b, sb = in(reg) 64usize,
                c = in(reg) c.as_mut_ptr(), options(nostack),
            );
        }
    }
}

/// The products of one row group's tiles with the rows of x in `x`, on AMX: `out[16·i + r]` for
/// x's row i and the group's row r (as `x86::group_gemm_vnni`).
///
/// # Safety
/// [`available`] is true, and the CPU has AVX-512 F and BW, FMA and F16C; `format` is grouped;
/// `tiles` holds whole tiles, `x` a multiple of [`AMX_GEMM_ROWS`] rows of one block per tile,
/// `out` 16 per row.
#[target_feature(enable = "avx512f,avx512bw,avx2,fma,f16c")]
pub(super) unsafe fn group_gemm(format: QuantFormat, tiles: &[u8], x: &Q8Row, out: &mut [MaybeUninit<f32>]) {
    let (tile, quants) = (GROUP_ROWS * format.block_bytes(), format.tile_quant_bytes());
    let blocks = tiles.len() / tile;
    let (rows, k) = (x.ds.len() / blocks, blocks * QK);
    assert!(
        format.is_grouped()
            && tiles.len() == blocks * tile
            && rows.is_multiple_of(AMX_GEMM_ROWS)
            && x.qs.len() == rows * k
            && out.len() == rows * GROUP_ROWS
    );
    // the B operand of every block: Q8_0's quant words as stored, the nibbles unpacked to bytes
    let signed = format == QuantFormat::Q8_0;
    // this thread's buffer, kept between calls (one call per row group of a product: a fresh
    // zeroed one was an allocation and a memset of 16·k bytes each time), its first 16·k bytes
    // overwritten below
    let mut unpacked = UNPACKED.take();
    if !signed {
        if unpacked.len() < blocks * 512 {
            unpacked.resize(blocks * 512, 0);
        }
        for (t, u) in tiles.chunks_exact(tile).zip(unpacked.chunks_exact_mut(512)) {
            let (lo, hi) = u.split_at_mut(256);
            for ((&q, l), h) in t[..256].iter().zip(lo).zip(hi) {
                (*l, *h) = (q & 0xF, q >> 4);
            }
        }
    }
    let b_operand = |b: usize| {
        if signed {
            tiles[b * tile..].as_ptr()
        } else {
            unpacked[b * 512..].as_ptr()
        }
    };
    let mut c = [[0i32; 16]; 16];
    // SAFETY: `available` said the tiles may be used (caller's contract); released on return.
    let _tiles = unsafe { TILES.load() };
    for i0 in (0..rows).step_by(AMX_GEMM_ROWS) {
        let mut acc = [_mm512_setzero_ps(); AMX_GEMM_ROWS];
        for b in 0..blocks {
            let a = x.qs[i0 * k + QK * b..].as_ptr();
            // SAFETY: the tiles are configured; A's 16 rows of 32 bytes at stride k are x's rows
            // i0..i0 + 16 (asserted), B's 512 bytes are tile b's quants or their unpacked copy.
            unsafe {
                if signed {
                    tile_product::<true>(a, k, b_operand(b), &mut c);
                } else {
                    tile_product::<false>(a, k, b_operand(b), &mut c);
                }
            }
            let t = &tiles[b * tile..(b + 1) * tile];
            // SAFETY: the scale words lie in the tile (16 f16 each, after its quants).
            let scales = |w: usize| unsafe {
                _mm512_cvtph_ps(_mm256_loadu_si256(t.as_ptr().add(quants + 32 * w) as *const __m256i))
            };
            let d = scales(0);
            let cw = match format {
                QuantFormat::Q4_1 => scales(1),
                QuantFormat::Q4_0 => _mm512_mul_ps(d, _mm512_set1_ps(-8.0)),
                _ => _mm512_setzero_ps(),
            };
            for (r, acc) in acc.iter_mut().enumerate() {
                let [xd, xdsum] = x.ds[(i0 + r) * blocks + b];
                // SAFETY: c's row r is 16 i32.
                let isum = unsafe { _mm512_loadu_si512(c[r].as_ptr() as *const __m512i) };
                *acc = _mm512_fmadd_ps(_mm512_mul_ps(d, _mm512_set1_ps(xd)), _mm512_cvtepi32_ps(isum), *acc);
                *acc = _mm512_fmadd_ps(cw, _mm512_set1_ps(xdsum), *acc);
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            // SAFETY: row i0 + r's 16 outputs lie in `out` (asserted above).
            unsafe { _mm512_storeu_ps(out.as_mut_ptr().cast::<f32>().add((i0 + r) * GROUP_ROWS), *acc) };
        }
    }
    UNPACKED.set(unpacked);
}

thread_local! {
    /// The nibble formats' unpacked B operands of the last [`group_gemm`] on this thread, for the
    /// next (its capacity the longest row seen, 16 bytes per element of a row).
    static UNPACKED: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
}
