//! The activations' side of the dot products: rows of x rounded per block of [`QK`] to signed
//! bytes, as ggml's Q8_1 (see mod.rs).

use crate::backend::cpu::alloc;
use crate::backend::cpu::vectorise::vectorised;
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

/// One row `x` quantized per block into `qs` and `ds` (see [`Q8Row`]): one pass per block, its
/// 32 elements in registers, compiled with AVX2 where the CPU has it (decode quantizes x
/// serially before every product, 6% of a step when scalar).
fn quantize_row(x: &[f32], qs: &mut [i8], ds: &mut [[f32; 2]]) {
    vectorised(
        #[inline(always)]
        || {
            for ((xb, qb), [d, dsum]) in x.chunks_exact(QK).zip(qs.chunks_exact_mut(QK)).zip(ds) {
                let xb: &[f32; QK] = xb.try_into().expect("chunks of QK");
                // max |x| over LANES interleaved lanes, as compares (f32::max's NaN rule keeps a
                // fold from vectorising)
                let mut lanes = [0f32; LANES];
                for part in xb.chunks_exact(LANES) {
                    for (m, v) in lanes.iter_mut().zip(part) {
                        *m = if v.abs() > *m { v.abs() } else { *m };
                    }
                }
                let amax = lanes.iter().fold(0f32, |a, &m| if m > a { m } else { a });
                // a NaN or infinity makes the block's scale NaN, so that every product with
                // this row is NaN rather than a number that hides it
                let finite = xb.iter().fold(true, |f, v| f & (v.abs() <= f32::MAX));
                *d = if finite { amax / 127.0 } else { f32::NAN };
                let inv = if amax > 0.0 { 127.0 / amax } else { 0.0 };
                let mut sum = 0i32;
                for (q, &v) in qb.iter_mut().zip(xb) {
                    // |v·inv| ≤ 127: the integer is an i8's value
                    let r = round_to_int(v * inv);
                    *q = r as i8;
                    sum += r;
                }
                *dsum = *d * sum as f32;
            }
        },
    );
}

#[cfg(test)]
mod tests {
    use super::round_to_int;

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
}
