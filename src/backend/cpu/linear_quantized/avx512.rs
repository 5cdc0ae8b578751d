//! AVX-512BW: two 32-element blocks per 512-bit step, their integer dots by `vpdpbusd` (VNNI) or
//! `vpmaddubsw` + `vpmaddwd`, for Q4_0, Q4_1 and Q8_0. Lanes 0..8 of a step belong to the first
//! block, 8..16 to the second, so their scales are blended into one vector.

use super::avx2::nibbles;
use super::portable::block32;
use super::q8::{Q8Row, QK};
use crate::backend::op::QuantFormat;
use std::arch::x86_64::*;

/// Σ over each group of 4 u8 × i8 products, 16 i32 lanes, without VNNI.
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
fn dot4_bw(u: __m512i, s: __m512i) -> __m512i {
    _mm512_madd_epi16(_mm512_maddubs_epi16(u, s), _mm512_set1_epi16(1))
}

/// Σ over each group of 4 u8 × i8 products, 16 i32 lanes, with VNNI.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
fn dot4_vnni(u: __m512i, s: __m512i) -> __m512i {
    _mm512_dpbusd_epi32(_mm512_setzero_si512(), u, s)
}

/// The body of both kernels; `$dot4` is the u8 × i8 step.
macro_rules! dot_kernel {
    ($format:ident, $w:ident, $x:ident, $dot4:ident) => {{
        let bytes = $format.block_bytes();
        let n = $w.len() / bytes;
        assert!($x.qs.len() >= n * QK && $x.d.len() >= n && $x.dsum.len() >= n);
        // The quants of block b as 32 unsigned bytes, and x's 32 bytes with the sign they
        // multiply with (Q8_0: |w| and x·sign(w)); a missing block (b == n) is all zeros. Inlined:
        // as a call, its two vectors came back through the stack, and reloading them as halves
        // of one 512-bit register stalled on store forwarding (a third of the kernel's time).
        // (An attribute on a closure is stable only as a call's argument, hence `identity`.)
        let block = std::convert::identity(
            #[inline(always)]
            |b: usize| -> (__m256i, __m256i) {
                if b == n {
                    return (_mm256_setzero_si256(), _mm256_setzero_si256());
                }
                let wb = &$w[b * bytes..(b + 1) * bytes];
                let at = block32($format, wb).2;
                // SAFETY: block b of x has 32 bytes (asserted above).
                let xv = unsafe { _mm256_loadu_si256($x.qs.as_ptr().add(QK * b) as *const __m256i) };
                if $format == QuantFormat::Q8_0 {
                    // SAFETY: a Q8_0 block has 32 quant bytes at `at`.
                    let wv = unsafe { _mm256_loadu_si256(wb.as_ptr().add(at) as *const __m256i) };
                    (_mm256_sign_epi8(wv, wv), _mm256_sign_epi8(xv, wv))
                } else {
                    // SAFETY: a Q4 block has 16 quant bytes at `at`.
                    (unsafe { nibbles(wb.as_ptr().add(at)) }, xv)
                }
            },
        );
        let (mut acc, mut offset) = (_mm512_setzero_ps(), 0f32);
        for b in (0..n).step_by(2) {
            let ((u0, s0), (u1, s1)) = (block(b), block(b + 1));
            let u = _mm512_inserti64x4(_mm512_castsi256_si512(u0), u1, 1);
            let s = _mm512_inserti64x4(_mm512_castsi256_si512(s0), s1, 1);
            let lanes = _mm512_cvtepi32_ps($dot4(u, s));
            let (a0, c0, _) = block32($format, &$w[b * bytes..]);
            let mut scale = _mm512_set1_ps(a0 * $x.d[b]);
            offset += c0 * $x.dsum[b];
            if b + 1 < n {
                let (a1, c1, _) = block32($format, &$w[(b + 1) * bytes..]);
                scale = _mm512_mask_blend_ps(0xFF00, scale, _mm512_set1_ps(a1 * $x.d[b + 1]));
                offset += c1 * $x.dsum[b + 1];
            }
            acc = _mm512_fmadd_ps(scale, lanes, acc);
        }
        _mm512_reduce_add_ps(acc) + offset
    }};
}

/// One row of Q4_0, Q4_1 or Q8_0 blocks `w` dotted with `x`, with `vpmaddubsw`.
///
/// # Safety
/// The CPU has AVX-512F, AVX-512BW, AVX2 and F16C; `w` holds whole blocks, `x` one block of 32
/// per block of `w`.
#[target_feature(enable = "avx512f,avx512bw,avx2,fma,f16c")]
pub(super) unsafe fn dot_bw(format: QuantFormat, w: &[u8], x: &Q8Row) -> f32 {
    dot_kernel!(format, w, x, dot4_bw)
}

/// As [`dot_bw`], with AVX-512 VNNI's `vpdpbusd`.
///
/// # Safety
/// As [`dot_bw`], and the CPU has AVX-512 VNNI.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
pub(super) unsafe fn dot_vnni(format: QuantFormat, w: &[u8], x: &Q8Row) -> f32 {
    dot_kernel!(format, w, x, dot4_vnni)
}
