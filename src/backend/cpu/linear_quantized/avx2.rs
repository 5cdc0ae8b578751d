//! AVX2: one 32-element block per 256-bit step (`vpmaddubsw` u8 × i8 pair sums, then `vpmaddwd`
//! with ones to 8 i32 lanes), for Q4_0, Q4_1 and Q8_0.

use super::portable::block32;
use super::q8::{Q8Row, QK};
use crate::backend::op::QuantFormat;
use std::arch::x86_64::*;

/// The 32 nibbles of a Q4 block's 16 bytes at `p` as bytes 0..16 (low nibbles, elements 0..16)
/// and 16..32 (high nibbles, elements 16..32).
///
/// # Safety
/// `p` is valid for 16 reads.
#[inline]
#[target_feature(enable = "avx2")]
pub(super) unsafe fn nibbles(p: *const u8) -> __m256i {
    // SAFETY: 16 bytes at p (caller).
    let v = unsafe { _mm_loadu_si128(p as *const __m128i) };
    let mask = _mm_set1_epi8(0xF);
    _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(v, 4), mask), _mm_and_si128(v, mask))
}

/// Σ of the 8 lanes.
#[inline]
#[target_feature(enable = "avx2")]
pub(super) fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
}

/// One row of Q4_0, Q4_1 or Q8_0 blocks `w` dotted with `x`.
///
/// # Safety
/// The CPU has AVX2, FMA and F16C; `w` holds whole blocks, `x` one block of 32 per block of `w`.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot(format: QuantFormat, w: &[u8], x: &Q8Row) -> f32 {
    let bytes = format.block_bytes();
    let n = w.len() / bytes;
    assert!(x.qs.len() >= n * QK && x.d.len() >= n && x.dsum.len() >= n);
    let ones = _mm256_set1_epi16(1);
    let (mut acc, mut offset) = (_mm256_setzero_ps(), 0f32);
    for b in 0..n {
        let wb = &w[b * bytes..(b + 1) * bytes];
        let (a, c, at) = block32(format, wb);
        // SAFETY: block b of x has 32 bytes (asserted above).
        let xv = unsafe { _mm256_loadu_si256(x.qs.as_ptr().add(QK * b) as *const __m256i) };
        let pairs = if format == QuantFormat::Q8_0 {
            // SAFETY: a Q8_0 block has 32 quant bytes at `at`.
            let wv = unsafe { _mm256_loadu_si256(wb.as_ptr().add(at) as *const __m256i) };
            // |w| (unsigned) times x with w's sign: the same products, as u8 × i8
            _mm256_maddubs_epi16(_mm256_sign_epi8(wv, wv), _mm256_sign_epi8(xv, wv))
        } else {
            // SAFETY: a Q4 block has 16 quant bytes at `at`.
            _mm256_maddubs_epi16(unsafe { nibbles(wb.as_ptr().add(at)) }, xv)
        };
        let lanes = _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, ones));
        acc = _mm256_fmadd_ps(_mm256_set1_ps(a * x.d[b]), lanes, acc);
        offset += c * x.dsum[b];
    }
    hsum(acc) + offset
}
