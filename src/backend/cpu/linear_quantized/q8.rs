//! The activations' side of the dot products: rows of x rounded per block of [`QK`] to signed
//! bytes, as ggml's Q8_1 (see mod.rs).

use crate::backend::cpu::alloc;
use crate::backend::cpu::vectorise::vectorised;
#[cfg(target_arch = "x86_64")]
use crate::backend::cpu::vectorise::{width, Width};
use crate::Result;
use rayon::prelude::*;
use std::cell::Cell;

/// The elements of one activation block.
pub const QK: usize = 32;

/// One row of x quantized per block of [`QK`]: `x[j] ≈ d · qs[j]` with `[d, dsum] = ds[j / QK]`,
/// `dsum = d · Σ qs over the block` (d NaN for a block holding a NaN or an infinity). The pair
/// sits together so that a SIMD kernel loads it at once.
pub struct Q8Row<'a> {
    pub qs: &'a [i8],
    pub ds: &'a [[f32; 2]],
}

/// The rows of x quantized per block (see [`Q8Row`]). Its buffers are this thread's spare ones
/// (taken when quantizing, handed back on drop), so a decode step's products allocate none.
pub struct Q8Rows {
    k: usize,
    qs: Vec<i8>,
    ds: Vec<[f32; 2]>,
}

thread_local! {
    /// The buffers of the last `Q8Rows` this thread dropped, for the next one.
    static SPARE: Cell<(Vec<i8>, Vec<[f32; 2]>)> = const { Cell::new((Vec::new(), Vec::new())) };
}

impl Drop for Q8Rows {
    fn drop(&mut self) {
        SPARE.set((std::mem::take(&mut self.qs), std::mem::take(&mut self.ds)));
    }
}

/// `v` rounded to the nearest integer, ties to even, for |v| < 2²²: adding 1.5·2²³ leaves no
/// fraction bits, so the addition rounds (in the default rounding mode), and the integer is then
/// the low bits of the sum's mantissa: the sum's bits minus those of 1.5·2²³. Plain arithmetic
/// on lanes, where `f32::round` is a call to libm's `roundf` on x86-64's baseline and an `as`
/// conversion a scalar saturating one (together 6% of a decode step).
#[inline(always)]
fn round_to_int(v: f32) -> i32 {
    const SHIFT: f32 = 12_582_912.0; // 1.5 · 2²³
    (v + SHIFT).to_bits() as i32 - SHIFT.to_bits() as i32
}

/// Lanes of the max |x| fold, one AVX2 vector of f32.
const LANES: usize = 8;

impl Q8Rows {
    /// x is (m, k) row-major, k a multiple of [`QK`].
    pub fn quantize(x: &[f32], k: usize) -> Result<Q8Rows> {
        Q8Rows::quantize_padded(x, k, 1)
    }

    /// As [`Q8Rows::quantize`], with zero rows (scale 0) appended up to a multiple of `multiple`
    /// rows: the register-blocked kernels take x rows `multiple` at a time. Rows are quantized in
    /// parallel.
    pub fn quantize_padded(x: &[f32], k: usize, multiple: usize) -> Result<Q8Rows> {
        debug_assert!(k.is_multiple_of(QK) && x.len().is_multiple_of(k) && multiple > 0);
        let rows = (x.len() / k).next_multiple_of(multiple);
        let (mut qs, mut ds) = SPARE.take();
        alloc::refill("linear_quantized", &mut qs, rows * k, 0i8)?;
        alloc::refill("linear_quantized", &mut ds, rows * k / QK, [0f32; 2])?;
        qs.par_chunks_mut(k)
            .zip(ds.par_chunks_mut(k / QK))
            .zip(x.par_chunks(k))
            .with_min_len(8)
            .for_each(|((qr, dr), xr)| quantize_row(xr, qr, dr));
        Ok(Q8Rows { k, qs, ds })
    }

    /// Row `i`.
    pub fn row(&self, i: usize) -> Q8Row<'_> {
        self.rows(i..i + 1)
    }

    /// Rows `rows`, one after the other: row i's quants at `qs[i·k..]`, its scales at
    /// `ds[i·k/QK..]` (relative to `rows.start`).
    pub fn rows(&self, rows: std::ops::Range<usize>) -> Q8Row<'_> {
        let (k, b) = (self.k, self.k / QK);
        Q8Row {
            qs: &self.qs[rows.start * k..rows.end * k],
            ds: &self.ds[rows.start * b..rows.end * b],
        }
    }
}

/// One row `x` quantized per block into `qs` and `ds` (see [`Q8Row`]): with AVX-512,
/// [`quantize_row_avx512`]; else [`quantize_row_lanes`]. Both give the same bits.
fn quantize_row(x: &[f32], qs: &mut [i8], ds: &mut [[f32; 2]]) {
    #[cfg(target_arch = "x86_64")]
    if width() == Width::Avx512 {
        // SAFETY: width() found AVX-512 F, BW, DQ and VL.
        return unsafe { quantize_row_avx512(x, qs, ds) };
    }
    quantize_row_lanes(x, qs, ds)
}

/// [`quantize_row`] as plain loops, one pass per block, its 32 elements in registers, compiled
/// with AVX2 where the CPU has it (decode quantizes x serially before every product, 6% of a step
/// when scalar).
fn quantize_row_lanes(x: &[f32], qs: &mut [i8], ds: &mut [[f32; 2]]) {
    vectorised(
        #[inline(always)]
        || {
            for ((xb, qb), pair) in x.chunks_exact(QK).zip(qs.chunks_exact_mut(QK)).zip(ds) {
                *pair = quantize_block(xb.try_into().expect("chunks of QK"), qb);
            }
        },
    )
}

/// One block `xb` rounded into `qb`; returns its `[d, dsum]`.
#[inline(always)]
fn quantize_block(xb: &[f32; QK], qb: &mut [i8]) -> [f32; 2] {
    // max |x| over LANES interleaved lanes, as compares (f32::max's NaN rule keeps a fold from
    // vectorising)
    let mut lanes = [0f32; LANES];
    for part in xb.chunks_exact(LANES) {
        for (m, v) in lanes.iter_mut().zip(part) {
            *m = if v.abs() > *m { v.abs() } else { *m };
        }
    }
    let amax = lanes.iter().fold(0f32, |a, &m| if m > a { m } else { a });
    // a NaN or infinity makes the block's scale NaN, so that every product with this row is NaN
    // rather than a number that hides it
    let finite = xb.iter().fold(true, |f, v| f & (v.abs() <= f32::MAX));
    let d = if finite { amax / 127.0 } else { f32::NAN };
    let inv = if amax > 0.0 { 127.0 / amax } else { 0.0 };
    let mut sum = 0i32;
    for (q, &v) in qb.iter_mut().zip(xb) {
        // |v·inv| ≤ 127: the integer is an i8's value
        let r = round_to_int(v * inv);
        *q = r as i8;
        sum += r;
    }
    [d, d * sum as f32]
}

/// [`quantize_row_lanes`] on AVX-512, a block's 32 elements in two zmm registers: `vmaxps` and a
/// lane reduction for max |x|, [`round_to_int`]'s addition on 16 lanes, `vpmovdb` to bytes, an
/// integer lane sum. The same operations in the same order on every element (max and integer sums
/// are exact in any order), so the same bits; a block holding a NaN or an infinity, whose scale
/// is NaN, goes through [`quantize_block`] so that its bytes are the same too. Written out because
/// the plain loops, compiled for AVX-512, vectorise across 16 blocks with gathers instead (7.7% of a
/// 128-token SmolLM2 prefill's samples, perf, 2026-12-07).
///
/// # Safety
/// The CPU has AVX-512 F, BW, DQ and VL.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl")]
unsafe fn quantize_row_avx512(x: &[f32], qs: &mut [i8], ds: &mut [[f32; 2]]) {
    use std::arch::x86_64::*;
    const SHIFT: f32 = 12_582_912.0; // round_to_int's 1.5 · 2²³
    let (shift, shift_bits) = (_mm512_set1_ps(SHIFT), _mm512_set1_epi32(SHIFT.to_bits() as i32));
    let largest = _mm512_set1_ps(f32::MAX);
    for ((xb, qb), pair) in x.chunks_exact(QK).zip(qs.chunks_exact_mut(QK)).zip(ds) {
        // SAFETY: a block is 32 f32, two unaligned loads of 16.
        let (lo, hi) = unsafe { (_mm512_loadu_ps(xb.as_ptr()), _mm512_loadu_ps(xb.as_ptr().add(16))) };
        let (alo, ahi) = (_mm512_abs_ps(lo), _mm512_abs_ps(hi));
        // every |v| ≤ f32::MAX (false for a NaN)
        let finite = _mm512_cmp_ps_mask::<_CMP_LE_OQ>(alo, largest) & _mm512_cmp_ps_mask::<_CMP_LE_OQ>(ahi, largest);
        if finite != 0xFFFF {
            *pair = quantize_block(xb.try_into().expect("chunks of QK"), qb);
            continue;
        }
        let amax = _mm512_reduce_max_ps(_mm512_max_ps(alo, ahi));
        let d = amax / 127.0;
        let inv = _mm512_set1_ps(if amax > 0.0 { 127.0 / amax } else { 0.0 });
        let round = |v: __m512| {
            _mm512_sub_epi32(
                _mm512_castps_si512(_mm512_add_ps(_mm512_mul_ps(v, inv), shift)),
                shift_bits,
            )
        };
        let (rlo, rhi) = (round(lo), round(hi));
        // SAFETY: qb is the block's 32 bytes, two unaligned stores of 16.
        unsafe {
            _mm_storeu_si128(qb.as_mut_ptr() as *mut __m128i, _mm512_cvtepi32_epi8(rlo));
            _mm_storeu_si128(qb.as_mut_ptr().add(16) as *mut __m128i, _mm512_cvtepi32_epi8(rhi));
        }
        let sum = _mm512_reduce_add_epi32(_mm512_add_epi32(rlo, rhi));
        *pair = [d, d * sum as f32];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_to_int_is_round_ties_even() {
        // every quarter step over the range quantization uses, ties included, and values near
        // the ends of that range
        let mut values: Vec<f32> = (-4 * 130..=4 * 130).map(|i| i as f32 / 4.0).collect();
        values.extend([126.499_99, -126.500_01, 0.499_999_97, -0.0, 1e-30, 127.0, -127.0]);
        for v in values {
            let (got, want) = (round_to_int(v), v.round_ties_even() as i32);
            assert!(got == want, "{v}: {got} against {want}");
        }
    }

    /// The AVX-512 rows are the plain loops' bit for bit: random blocks at several scales, ties
    /// of the rounding (x·127/amax on a half), zeros, a single nonzero, subnormals, and blocks
    /// holding a NaN or an infinity.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn the_avx512_rows_are_the_plain_loops_bit_for_bit() {
        if width() != Width::Avx512 {
            eprintln!("no AVX-512 here: nothing to compare");
            return;
        }
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut unit = move || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        };
        let blocks = 64;
        let mut x: Vec<f32> = (0..blocks * QK)
            .map(|i| unit() * 10f32.powi((i / QK) as i32 % 9 - 4))
            .collect();
        // block 1: ties, amax 127 so x·inv is x itself
        for (j, v) in x[QK..2 * QK].iter_mut().enumerate() {
            *v = if j == 0 { 127.0 } else { (j as f32 - 16.0) + 0.5 };
        }
        x[2 * QK..3 * QK].fill(0.0);
        x[3 * QK..4 * QK].fill(0.0);
        x[3 * QK + 5] = -3.0;
        x[4 * QK..5 * QK].iter_mut().for_each(|v| *v = 1e-40 * unit());
        x[5 * QK + 7] = f32::NAN;
        x[6 * QK + 31] = f32::INFINITY;
        x[7 * QK] = f32::NEG_INFINITY;
        let (mut qs_wide, mut ds_wide) = (vec![0i8; x.len()], vec![[0f32; 2]; blocks]);
        let (mut qs_plain, mut ds_plain) = (qs_wide.clone(), ds_wide.clone());
        // SAFETY: width() found AVX-512 F, BW, DQ and VL.
        unsafe { quantize_row_avx512(&x, &mut qs_wide, &mut ds_wide) };
        quantize_row_lanes(&x, &mut qs_plain, &mut ds_plain);
        let bits = |ds: &[[f32; 2]]| ds.iter().map(|[d, s]| [d.to_bits(), s.to_bits()]).collect::<Vec<_>>();
        assert_eq!(qs_wide, qs_plain, "quants");
        assert_eq!(bits(&ds_wide), bits(&ds_plain), "scales");
        assert!(ds_wide[5][0].is_nan() && ds_wide[6][0].is_nan() && ds_wide[7][0].is_nan());
    }
}
