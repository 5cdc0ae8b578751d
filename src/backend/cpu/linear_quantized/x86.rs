//! AVX2 and AVX-512 VNNI kernels for Q4_0, Q4_1 and Q8_0 in row groups: 16 weight rows against one
//! row of x, a tile (16 rows × one 32-element block, layout in src/backend/op/quantized.rs) at a
//! time, on 256-bit registers (8 rows each).
//!
//! Per tile and 8 rows: each 32-byte load holds 4 quant bytes of each of the 8 rows, multiplied
//! by the same 4 bytes of x broadcast to every lane, and summed into 8 i32 lanes: `vpdpbusd` (VNNI)
//! or `vpmaddubsw` + `vpmaddwd` + `vpaddd` (AVX2), 8 steps per block. Then, for the 8 rows at
//! once, `y += (d·xd)·isum + c·xdsum` with the rows' f16 `d` (and Q4_1's `m`) converted by one
//! `vcvtph2ps` (c = m, -8·d for Q4_0, 0 for Q8_0). About 40 instructions per 16 rows and 32
//! columns, where a row-at-a-time kernel takes about 20 per row; the loop is then bound by
//! memory, not by instructions.

use super::q8::{Q8Row, QK};
use crate::backend::op::{QuantFormat, GROUP_ROWS};
use std::arch::x86_64::*;

/// `acc + Σ` over each group of 4 u8 × i8 products, 8 i32 lanes, on AVX2. No saturation: the
/// unsigned side is at most 15 (a nibble) or 128 (|Q8_0 quant|) and x at most 127 in magnitude,
/// so a pair's sum stays within i16.
#[inline]
#[target_feature(enable = "avx2")]
fn dot4_avx2(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
    _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1)))
}

/// `acc + Σ` over each group of 4 u8 × i8 products, 8 i32 lanes, with VNNI.
#[inline]
#[target_feature(enable = "avx512vnni,avx512vl")]
fn dot4_vnni(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
    _mm256_dpbusd_epi32(acc, u, s)
}

/// The body of both kernels for one format (a constant, so that the format's branches fold
/// away); `$dot4` is the accumulating u8 × i8 step. Writes the group's 16 outputs to `$out`.
macro_rules! group_kernel {
    ($format:expr, $tiles:ident, $x:ident, $ahead:ident, $out:ident, $dot4:ident) => {{
        const FORMAT: QuantFormat = $format;
        const TILE: usize = GROUP_ROWS * FORMAT.block_bytes();
        const QUANTS: usize = FORMAT.tile_quant_bytes();
        let blocks = $tiles.len() / TILE;
        assert!($tiles.len() == blocks * TILE && $x.qs.len() >= blocks * QK && $x.ds.len() >= blocks);
        let nibble = _mm256_set1_epi8(0xF);
        let mut acc = [_mm256_setzero_ps(); 2];
        for b in 0..blocks {
            // SAFETY: tile b and x's block b lie in the slices (asserted above); the reads are
            // unaligned; a prefetch of any address is a hint that never faults.
            unsafe {
                let t = $tiles.as_ptr().add(b * TILE);
                for line in (0..TILE).step_by(64) {
                    _mm_prefetch(t.wrapping_add($ahead + line) as *const i8, _MM_HINT_T0);
                }
                let xw = $x.qs.as_ptr().add(QK * b) as *const i32;
                let x4 = |s: usize| _mm256_set1_epi32(xw.add(s).read_unaligned());
                let [xd, xdsum] = *$x.ds.as_ptr().add(b);
                for (h, acc) in acc.iter_mut().enumerate() {
                    // rows 8h..8h + 8: the second half of each 64-byte word
                    let word = |s: usize| _mm256_loadu_si256(t.add(64 * s + 32 * h) as *const __m256i);
                    let mut isum = _mm256_setzero_si256();
                    if matches!(FORMAT, QuantFormat::Q8_0) {
                        // |w| (unsigned) times x with w's sign: the same products, as u8 × i8
                        for s in 0..8 {
                            let w = word(s);
                            isum = $dot4(isum, _mm256_sign_epi8(w, w), _mm256_sign_epi8(x4(s), w));
                        }
                    } else {
                        // low nibbles: elements 4s..4s + 4, high nibbles: 16 + 4s..
                        for s in 0..4 {
                            let w = word(s);
                            isum = $dot4(isum, _mm256_and_si256(w, nibble), x4(s));
                            isum = $dot4(isum, _mm256_and_si256(_mm256_srli_epi16(w, 4), nibble), x4(4 + s));
                        }
                    }
                    let scales =
                        |w: usize| _mm256_cvtph_ps(_mm_loadu_si128(t.add(QUANTS + 32 * w + 16 * h) as *const __m128i));
                    let d = scales(0);
                    *acc = _mm256_fmadd_ps(_mm256_mul_ps(d, _mm256_set1_ps(xd)), _mm256_cvtepi32_ps(isum), *acc);
                    let c = match FORMAT {
                        QuantFormat::Q4_1 => Some(scales(1)),
                        QuantFormat::Q4_0 => Some(_mm256_mul_ps(d, _mm256_set1_ps(-8.0))),
                        _ => None,
                    };
                    if let Some(c) = c {
                        *acc = _mm256_fmadd_ps(c, _mm256_set1_ps(xdsum), *acc);
                    }
                }
            }
        }
        // SAFETY: `$out` has 16 elements.
        unsafe {
            _mm256_storeu_ps($out.as_mut_ptr(), acc[0]);
            _mm256_storeu_ps($out.as_mut_ptr().add(8), acc[1]);
        }
    }};
}

/// [`group_kernel`] for the format `$format` (a value), one instance per format.
macro_rules! group_by_format {
    ($format:ident, $tiles:ident, $x:ident, $ahead:ident, $out:ident, $dot4:ident) => {
        match $format {
            QuantFormat::Q4_0 => group_kernel!(QuantFormat::Q4_0, $tiles, $x, $ahead, $out, $dot4),
            QuantFormat::Q4_1 => group_kernel!(QuantFormat::Q4_1, $tiles, $x, $ahead, $out, $dot4),
            QuantFormat::Q8_0 => group_kernel!(QuantFormat::Q8_0, $tiles, $x, $ahead, $out, $dot4),
            QuantFormat::Q4_K | QuantFormat::Q6_K => unreachable!("{} is not kept in row groups", $format),
        }
    };
}

/// The 16 dot products of one row group's tiles (`tiles`, a group's bytes) with `x`, into `out`,
/// prefetching the bytes `ahead` bytes past each tile (the next group's).
///
/// # Safety
/// The CPU has AVX2, FMA and F16C; `format` is grouped; `tiles` holds whole tiles, `x` one block
/// of 32 per tile.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn group_dot(
    format: QuantFormat,
    tiles: &[u8],
    x: &Q8Row,
    ahead: usize,
    out: &mut [f32; GROUP_ROWS],
) {
    group_by_format!(format, tiles, x, ahead, out, dot4_avx2)
}

/// As [`group_dot`], with AVX-512 VNNI's `vpdpbusd` on 256-bit registers.
///
/// # Safety
/// As [`group_dot`], and the CPU has AVX-512 VNNI and VL.
#[target_feature(enable = "avx512vnni,avx512vl,avx2,fma,f16c")]
pub(super) unsafe fn group_dot_vnni(
    format: QuantFormat,
    tiles: &[u8],
    x: &Q8Row,
    ahead: usize,
    out: &mut [f32; GROUP_ROWS],
) {
    group_by_format!(format, tiles, x, ahead, out, dot4_vnni)
}
