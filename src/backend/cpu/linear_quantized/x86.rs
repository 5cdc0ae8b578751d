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
use std::mem::MaybeUninit;

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

/// Rows of x per AVX-512 micro-kernel: 8 f32 accumulators, 8 unpacked weight words and a few
/// temporaries fill about 22 of the 32 zmm registers.
pub(super) const VNNI_GEMM_ROWS: usize = 8;

/// Rows of x per AVX2 micro-kernel: AVX2 has 16 ymm registers, 8 of them the unpacked half-tile.
pub(super) const AVX2_GEMM_ROWS: usize = 4;

/// (blocks per row, rows of x) of a GEMM micro-kernel's call: `tiles` whole tiles of `tile` bytes,
/// `x` rows padded to a multiple of `mr`, `out` 16 outputs per row of x; a panic otherwise (the
/// caller's sizes, never the user's).
fn gemm_dims(tile: usize, mr: usize, tiles: &[u8], x: &Q8Row, out: &[MaybeUninit<f32>]) -> (usize, usize) {
    let blocks = tiles.len() / tile;
    let rows = x.ds.len() / blocks;
    assert!(
        tiles.len() == blocks * tile
            && rows.is_multiple_of(mr)
            && x.qs.len() == rows * blocks * QK
            && out.len() == rows * GROUP_ROWS
    );
    (blocks, rows)
}

/// The AVX-512 micro-kernel's body for one format (a constant): for each block of
/// [`VNNI_GEMM_ROWS`] rows of x, for each tile, the tile's 16 rows unpacked once into 8 zmm words
/// (a word: 4 quants of each of the 16 rows, one per i32 lane) and multiplied with the 8 rows of
/// x, `vpdpbusd` per word and row; each row's 16 sums scaled as in [`group_kernel`]. Q8_0's
/// signed weights take x + 128 as the unsigned side, `Σ (x + 128)·w - 128·Σ w`, the second term
/// once per tile.
macro_rules! gemm_vnni_kernel {
    ($format:expr, $tiles:ident, $x:ident, $out:ident) => {{
        const FORMAT: QuantFormat = $format;
        const TILE: usize = GROUP_ROWS * FORMAT.block_bytes();
        const QUANTS: usize = FORMAT.tile_quant_bytes();
        const MR: usize = VNNI_GEMM_ROWS;
        let (blocks, rows) = gemm_dims(TILE, MR, $tiles, &$x, $out);
        let nibble = _mm512_set1_epi8(0xF);
        for i0 in (0..rows).step_by(MR) {
            let mut acc = [_mm512_setzero_ps(); MR];
            for b in 0..blocks {
                // SAFETY: tile b, and block b of x's rows i0..i0 + MR, lie in the slices (asserted
                // above); the loads are unaligned.
                unsafe {
                    let t = $tiles.as_ptr().add(b * TILE);
                    let word = |s: usize| _mm512_loadu_si512(t.add(64 * s) as *const __m512i);
                    let mut w = [_mm512_setzero_si512(); 8];
                    let mut bias = _mm512_setzero_si512();
                    if matches!(FORMAT, QuantFormat::Q8_0) {
                        for (s, w) in w.iter_mut().enumerate() {
                            *w = word(s);
                            bias = _mm512_dpbusd_epi32(bias, _mm512_set1_epi8(-128), *w);
                        }
                    } else {
                        // low nibbles: elements 4s..4s + 4, high nibbles: 16 + 4s..
                        for s in 0..4 {
                            let v = word(s);
                            w[s] = _mm512_and_si512(v, nibble);
                            w[4 + s] = _mm512_and_si512(_mm512_srli_epi16(v, 4), nibble);
                        }
                    }
                    let scales =
                        |w: usize| _mm512_cvtph_ps(_mm256_loadu_si256(t.add(QUANTS + 32 * w) as *const __m256i));
                    let d = scales(0);
                    let c = match FORMAT {
                        QuantFormat::Q4_1 => scales(1),
                        QuantFormat::Q4_0 => _mm512_mul_ps(d, _mm512_set1_ps(-8.0)),
                        _ => _mm512_setzero_ps(),
                    };
                    for (r, acc) in acc.iter_mut().enumerate() {
                        let row = i0 + r;
                        let xw = $x.qs.as_ptr().add(row * blocks * QK + QK * b) as *const i32;
                        let mut isum = _mm512_setzero_si512();
                        for (s, &w) in w.iter().enumerate() {
                            let x4 = xw.add(s).read_unaligned();
                            isum = if matches!(FORMAT, QuantFormat::Q8_0) {
                                _mm512_dpbusd_epi32(isum, _mm512_set1_epi32(x4 ^ 0x8080_8080u32 as i32), w)
                            } else {
                                _mm512_dpbusd_epi32(isum, w, _mm512_set1_epi32(x4))
                            };
                        }
                        if matches!(FORMAT, QuantFormat::Q8_0) {
                            isum = _mm512_sub_epi32(isum, bias);
                        }
                        let [xd, xdsum] = *$x.ds.as_ptr().add(row * blocks + b);
                        *acc = _mm512_fmadd_ps(_mm512_mul_ps(d, _mm512_set1_ps(xd)), _mm512_cvtepi32_ps(isum), *acc);
                        if !matches!(FORMAT, QuantFormat::Q8_0) {
                            *acc = _mm512_fmadd_ps(c, _mm512_set1_ps(xdsum), *acc);
                        }
                    }
                }
            }
            for (r, acc) in acc.iter().enumerate() {
                // SAFETY: row i0 + r's 16 outputs lie in `$out` (asserted above).
                unsafe { _mm512_storeu_ps($out.as_mut_ptr().cast::<f32>().add((i0 + r) * GROUP_ROWS), *acc) };
            }
        }
    }};
}

/// The AVX2 micro-kernel's body for one format: as [`gemm_vnni_kernel`] on 256-bit registers,
/// each half of the tile (8 weight rows, the second 32 bytes of each word) in turn against
/// [`AVX2_GEMM_ROWS`] rows of x; the products as in [`group_kernel`] (`vpmaddubsw` +
/// `vpmaddwd`, Q8_0 as |w| times x with w's sign).
macro_rules! gemm_avx2_kernel {
    ($format:expr, $tiles:ident, $x:ident, $out:ident) => {{
        const FORMAT: QuantFormat = $format;
        const TILE: usize = GROUP_ROWS * FORMAT.block_bytes();
        const QUANTS: usize = FORMAT.tile_quant_bytes();
        const MR: usize = AVX2_GEMM_ROWS;
        let (blocks, rows) = gemm_dims(TILE, MR, $tiles, &$x, $out);
        let nibble = _mm256_set1_epi8(0xF);
        for i0 in (0..rows).step_by(MR) {
            for h in 0..2 {
                let mut acc = [_mm256_setzero_ps(); MR];
                for b in 0..blocks {
                    // SAFETY: as in gemm_vnni_kernel.
                    unsafe {
                        let t = $tiles.as_ptr().add(b * TILE);
                        let word = |s: usize| _mm256_loadu_si256(t.add(64 * s + 32 * h) as *const __m256i);
                        // Q4: the nibbles (unsigned side); Q8_0: the signed weights, |w| taken per use
                        let mut w = [_mm256_setzero_si256(); 8];
                        if matches!(FORMAT, QuantFormat::Q8_0) {
                            for (s, w) in w.iter_mut().enumerate() {
                                *w = word(s);
                            }
                        } else {
                            for s in 0..4 {
                                let v = word(s);
                                w[s] = _mm256_and_si256(v, nibble);
                                w[4 + s] = _mm256_and_si256(_mm256_srli_epi16(v, 4), nibble);
                            }
                        }
                        let scales = |w: usize| {
                            _mm256_cvtph_ps(_mm_loadu_si128(t.add(QUANTS + 32 * w + 16 * h) as *const __m128i))
                        };
                        let d = scales(0);
                        let c = match FORMAT {
                            QuantFormat::Q4_1 => scales(1),
                            QuantFormat::Q4_0 => _mm256_mul_ps(d, _mm256_set1_ps(-8.0)),
                            _ => _mm256_setzero_ps(),
                        };
                        for (r, acc) in acc.iter_mut().enumerate() {
                            let row = i0 + r;
                            let xw = $x.qs.as_ptr().add(row * blocks * QK + QK * b) as *const i32;
                            let mut isum = _mm256_setzero_si256();
                            for (s, &w) in w.iter().enumerate() {
                                let x4 = _mm256_set1_epi32(xw.add(s).read_unaligned());
                                isum = if matches!(FORMAT, QuantFormat::Q8_0) {
                                    dot4_avx2(isum, _mm256_sign_epi8(w, w), _mm256_sign_epi8(x4, w))
                                } else {
                                    dot4_avx2(isum, w, x4)
                                };
                            }
                            let [xd, xdsum] = *$x.ds.as_ptr().add(row * blocks + b);
                            *acc =
                                _mm256_fmadd_ps(_mm256_mul_ps(d, _mm256_set1_ps(xd)), _mm256_cvtepi32_ps(isum), *acc);
                            if !matches!(FORMAT, QuantFormat::Q8_0) {
                                *acc = _mm256_fmadd_ps(c, _mm256_set1_ps(xdsum), *acc);
                            }
                        }
                    }
                }
                for (r, acc) in acc.iter().enumerate() {
                    // SAFETY: row i0 + r's outputs 8h..8h + 8 lie in `$out` (asserted above).
                    unsafe {
                        _mm256_storeu_ps($out.as_mut_ptr().cast::<f32>().add((i0 + r) * GROUP_ROWS + 8 * h), *acc)
                    };
                }
            }
        }
    }};
}

/// One instance of a GEMM kernel macro per grouped format.
macro_rules! gemm_by_format {
    ($kernel:ident, $format:ident, $tiles:ident, $x:ident, $out:ident) => {
        match $format {
            QuantFormat::Q4_0 => $kernel!(QuantFormat::Q4_0, $tiles, $x, $out),
            QuantFormat::Q4_1 => $kernel!(QuantFormat::Q4_1, $tiles, $x, $out),
            QuantFormat::Q8_0 => $kernel!(QuantFormat::Q8_0, $tiles, $x, $out),
            QuantFormat::Q4_K | QuantFormat::Q6_K => unreachable!("{} is not kept in row groups", $format),
        }
    };
}

/// The products of one row group's tiles (`tiles`) with the rows of x in `x` (consecutive rows,
/// see [`Q8Rows::rows`](super::Q8Rows::rows)), on AVX-512 VNNI: `out[16·i + r]` for x's row i and
/// the group's row r, every element of `out` written (it may be uninitialised).
///
/// # Safety
/// The CPU has AVX-512 F, BW, VNNI and VL, FMA and F16C; `format` is grouped; `tiles` holds whole
/// tiles, `x` a multiple of [`VNNI_GEMM_ROWS`] rows of one block per tile, `out` 16 per row.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx512vl,avx2,fma,f16c")]
pub(super) unsafe fn group_gemm_vnni(format: QuantFormat, tiles: &[u8], x: &Q8Row, out: &mut [MaybeUninit<f32>]) {
    gemm_by_format!(gemm_vnni_kernel, format, tiles, x, out)
}

/// As [`group_gemm_vnni`] on AVX2, x in multiples of [`AVX2_GEMM_ROWS`] rows.
///
/// # Safety
/// The CPU has AVX2, FMA and F16C; otherwise as [`group_gemm_vnni`].
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn group_gemm(format: QuantFormat, tiles: &[u8], x: &Q8Row, out: &mut [MaybeUninit<f32>]) {
    gemm_by_format!(gemm_avx2_kernel, format, tiles, x, out)
}
