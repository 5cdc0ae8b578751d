//! AVX-512F: a 12 × (2·LANES) tile, 12×32 for f32 and 12×16 for f64 (24 of the 32 zmm
//! registers accumulate).

use super::kernel::{InPlaceTile, Kernel, Panel};
use super::matrix::{Element, Epilogue, Format, MatMut, MatRef, Streamed};
use super::simd::{self, padded, Vector, Widen};
use std::arch::x86_64::*;
use std::marker::PhantomData;

/// The zmm vectors of `E`.
pub(super) struct Zmm<E>(PhantomData<E>);

simd_kernel!(Zmm, 12, "avx512f");

impl Vector for Zmm<f32> {
    type E = f32;
    type V = __m512;
    const LANES: usize = 16;
    /// Ã micro-panel 12·256·4 B = 12 KiB of the 48 KiB L1.
    const KC: usize = 256;
    /// B̃ block 256·1024·4 B = 1 MiB of the 2 MiB L2; a wide block means A is re-packed
    /// less often (once per block).
    const NC: usize = 1024;

    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn zero() -> __m512 {
        _mm512_setzero_ps()
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn splat(x: f32) -> __m512 {
        _mm512_set1_ps(x)
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn load(p: *const f32) -> __m512 {
        // SAFETY: p is valid for 16 reads (trait contract).
        unsafe { _mm512_loadu_ps(p) }
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn fmadd(a: __m512, b: __m512, c: __m512) -> __m512 {
        _mm512_fmadd_ps(a, b, c)
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn vmul(a: __m512, b: __m512) -> __m512 {
        _mm512_mul_ps(a, b)
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn load_first(p: *const f32, lanes: usize) -> __m512 {
        // SAFETY: the masked-off lanes are not accessed; the others are valid.
        unsafe { _mm512_maskz_loadu_ps(first_lanes(lanes), p) }
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn store_first(p: *mut f32, v: __m512, lanes: usize) {
        // SAFETY: the masked-off lanes are not accessed; the others are valid.
        unsafe { _mm512_mask_storeu_ps(p, first_lanes(lanes), v) }
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn store(p: *mut f32, v: __m512) {
        // SAFETY: p is valid for 16 writes (trait contract).
        unsafe { _mm512_storeu_ps(p, v) }
    }

    /// Four rounds of 16 shuffles.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn transpose_block(
        src: *const f32,
        src_stride: usize,
        rows: usize,
        dst: *mut f32,
        dst_stride: usize,
        width: usize,
    ) {
        let mut r = [_mm512_setzero_ps(); 16];
        for (i, row) in r.iter_mut().enumerate().take(rows) {
            // SAFETY: source row i < rows holds 16 elements (trait contract).
            *row = unsafe { _mm512_loadu_ps(src.add(i * src_stride)) };
        }
        // SAFETY: destination rows q < 16 hold `width` elements (trait contract).
        unsafe { transpose_16x16(r, dst, dst_stride, width) }
    }
}

impl Vector for Zmm<f64> {
    type E = f64;
    type V = __m512d;
    const LANES: usize = 8;
    /// Ã micro-panel 12·256·8 B = 24 KiB of the 48 KiB L1.
    const KC: usize = 256;
    /// B̃ block 256·512·8 B = 1 MiB of the 2 MiB L2.
    const NC: usize = 512;

    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn zero() -> __m512d {
        _mm512_setzero_pd()
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn splat(x: f64) -> __m512d {
        _mm512_set1_pd(x)
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn load(p: *const f64) -> __m512d {
        // SAFETY: p is valid for 8 reads (trait contract).
        unsafe { _mm512_loadu_pd(p) }
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn fmadd(a: __m512d, b: __m512d, c: __m512d) -> __m512d {
        _mm512_fmadd_pd(a, b, c)
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn vmul(a: __m512d, b: __m512d) -> __m512d {
        _mm512_mul_pd(a, b)
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn load_first(p: *const f64, lanes: usize) -> __m512d {
        // SAFETY: the masked-off lanes are not accessed; the others are valid.
        unsafe { _mm512_maskz_loadu_pd(first_lanes(lanes) as __mmask8, p) }
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn store_first(p: *mut f64, v: __m512d, lanes: usize) {
        // SAFETY: the masked-off lanes are not accessed; the others are valid.
        unsafe { _mm512_mask_storeu_pd(p, first_lanes(lanes) as __mmask8, v) }
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn store(p: *mut f64, v: __m512d) {
        // SAFETY: p is valid for 8 writes (trait contract).
        unsafe { _mm512_storeu_pd(p, v) }
    }

    /// Three rounds of 8 shuffles.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn transpose_block(
        src: *const f64,
        src_stride: usize,
        rows: usize,
        dst: *mut f64,
        dst_stride: usize,
        width: usize,
    ) {
        let mut r = [_mm512_setzero_pd(); 8];
        for (i, row) in r.iter_mut().enumerate().take(rows) {
            // SAFETY: source row i < rows holds 8 elements (trait contract).
            *row = unsafe { _mm512_loadu_pd(src.add(i * src_stride)) };
        }
        // t[2g + c] holds column 2L + c of rows 2g, 2g + 1 in 128-bit lane L.
        let mut t = r;
        for g in 0..4 {
            t[2 * g] = _mm512_unpacklo_pd(r[2 * g], r[2 * g + 1]);
            t[2 * g + 1] = _mm512_unpackhi_pd(r[2 * g], r[2 * g + 1]);
        }
        // Column 2L + c is lane L of t[c], t[2 + c], t[4 + c], t[6 + c]: transpose that
        // 4×4 grid of lanes.
        let mask = first_lanes(width) as __mmask8;
        for c in 0..2 {
            let even_lo = _mm512_shuffle_f64x2::<0x88>(t[c], t[2 + c]);
            let odd_lo = _mm512_shuffle_f64x2::<0xDD>(t[c], t[2 + c]);
            let even_hi = _mm512_shuffle_f64x2::<0x88>(t[4 + c], t[6 + c]);
            let odd_hi = _mm512_shuffle_f64x2::<0xDD>(t[4 + c], t[6 + c]);
            let columns = [
                _mm512_shuffle_f64x2::<0x88>(even_lo, even_hi),
                _mm512_shuffle_f64x2::<0x88>(odd_lo, odd_hi),
                _mm512_shuffle_f64x2::<0xDD>(even_lo, even_hi),
                _mm512_shuffle_f64x2::<0xDD>(odd_lo, odd_hi),
            ];
            for (lane, column) in columns.into_iter().enumerate() {
                let q = 2 * lane + c;
                // SAFETY: destination row q < 8 holds `width` elements.
                unsafe { _mm512_mask_storeu_pd(dst.add(q * dst_stride), mask, column) };
            }
        }
    }
}

/// Writes the transpose of the 16×16 f32 block `r` (row i in `r[i]`) to `dst`: column q of the
/// block to `dst[q·dst_stride..][..width]` (lanes past `width` of each row are not written).
///
/// # Safety
///
/// The CPU supports AVX-512F; the 16 destination rows are valid for `width` (<= 16) writes.
#[inline]
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn transpose_16x16(r: [__m512; 16], dst: *mut f32, dst_stride: usize, width: usize) {
    // t[2g + h] holds columns 4L + 2h and 4L + 2h + 1 of rows 2g, 2g + 1 in 128-bit
    // lane L.
    let mut t = r;
    for g in 0..8 {
        t[2 * g] = _mm512_unpacklo_ps(r[2 * g], r[2 * g + 1]);
        t[2 * g + 1] = _mm512_unpackhi_ps(r[2 * g], r[2 * g + 1]);
    }
    // u[4g + c] holds column 4L + c of rows 4g..4g + 4 in lane L.
    let mut u = t;
    for g in 0..4 {
        let [t0, t1, t2, t3] = [t[4 * g], t[4 * g + 1], t[4 * g + 2], t[4 * g + 3]];
        u[4 * g] = _mm512_shuffle_ps::<0x44>(t0, t2);
        u[4 * g + 1] = _mm512_shuffle_ps::<0xEE>(t0, t2);
        u[4 * g + 2] = _mm512_shuffle_ps::<0x44>(t1, t3);
        u[4 * g + 3] = _mm512_shuffle_ps::<0xEE>(t1, t3);
    }
    // Column 4L + c is lane L of u[c], u[4 + c], u[8 + c], u[12 + c]: transpose
    // that 4×4 grid of lanes.
    let mask = first_lanes(width);
    for c in 0..4 {
        let even_lo = _mm512_shuffle_f32x4::<0x88>(u[c], u[4 + c]);
        let odd_lo = _mm512_shuffle_f32x4::<0xDD>(u[c], u[4 + c]);
        let even_hi = _mm512_shuffle_f32x4::<0x88>(u[8 + c], u[12 + c]);
        let odd_hi = _mm512_shuffle_f32x4::<0xDD>(u[8 + c], u[12 + c]);
        let columns = [
            _mm512_shuffle_f32x4::<0x88>(even_lo, even_hi),
            _mm512_shuffle_f32x4::<0x88>(odd_lo, odd_hi),
            _mm512_shuffle_f32x4::<0xDD>(even_lo, even_hi),
            _mm512_shuffle_f32x4::<0xDD>(odd_lo, odd_hi),
        ];
        for (lane, column) in columns.into_iter().enumerate() {
            let q = 4 * lane + c;
            // SAFETY: destination row q < 16 holds `width` elements.
            unsafe { _mm512_mask_storeu_ps(dst.add(q * dst_stride), mask, column) };
        }
    }
}

/// A mask selecting the first `lanes` (0..=16) lanes.
pub(super) fn first_lanes(lanes: usize) -> __mmask16 {
    ((1u32 << lanes) - 1) as __mmask16
}

impl Widen for Zmm<f32> {
    /// bf16: zero-extended to 32 bits and shifted into the top half; f16: `vcvtph2ps`; the same
    /// f32 values either way.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn load_wide<W: Streamed>(p: *const W) -> __m512 {
        match W::FORMAT {
            // SAFETY: p is valid for 16 reads (trait contract).
            Format::F32 => unsafe { Self::load(p.cast()) },
            Format::Bf16 => {
                // SAFETY: p is valid for 16 bf16 reads, 32 bytes (trait contract).
                let half = unsafe { _mm256_loadu_si256(p.cast()) };
                _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(half)))
            }
            // SAFETY: p is valid for 16 f16 reads, 32 bytes (trait contract).
            Format::F16 => _mm512_cvtph_ps(unsafe { _mm256_loadu_si256(p.cast()) }),
        }
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn load_wide_first<W: Streamed>(p: *const W, lanes: usize) -> __m512 {
        match W::FORMAT {
            // SAFETY: forwarded contract.
            Format::F32 => unsafe { Self::load_first(p.cast(), lanes) },
            // SAFETY: forwarded contract.
            Format::Bf16 | Format::F16 => unsafe { Self::load_wide(padded(p, lanes).as_ptr()) },
        }
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn sums(v: [__m512; 4]) -> [f32; 4] {
        lane_sums(v)
    }
}

/// The sums of the 16 lanes of each of four vectors, each added in `_mm512_reduce_add_ps`'s
/// order (the 256-bit halves, then the 128-bit halves, then the 64-bit halves, then the pair),
/// so each sum has its bits; but the four are reduced side by side, two or four per instruction:
/// 14 shuffles and adds for the four instead of 32 (8 each). Half the work of the dot loop's end
/// when k is short (decode attention's scores: k = 64, two steps of 32 per column).
#[inline]
#[target_feature(enable = "avx512f")]
pub(super) fn lane_sums([a0, a1, a2, a3]: [__m512; 4]) -> [f32; 4] {
    // h = lo256 + hi256 of two vectors at once: [h(a0) | h(a1)], [h(a2) | h(a3)]
    let halves = |a, b| {
        _mm512_add_ps(
            _mm512_shuffle_f32x4::<0b01_00_01_00>(a, b),
            _mm512_shuffle_f32x4::<0b11_10_11_10>(a, b),
        )
    };
    let (h01, h23) = (halves(a0, a1), halves(a2, a3));
    // q = lo128 + hi128 of each h: one 128-bit block per vector, [q(a0) | q(a1) | q(a2) | q(a3)]
    let q = _mm512_add_ps(
        _mm512_shuffle_f32x4::<0b10_00_10_00>(h01, h23),
        _mm512_shuffle_f32x4::<0b11_01_11_01>(h01, h23),
    );
    // in each block: r = q[0..2] + q[2..4], then r[0] + r[1] in lane 0
    let r = _mm512_add_ps(q, _mm512_permute_ps::<0b01_00_11_10>(q));
    let s = _mm512_add_ps(r, _mm512_permute_ps::<0b10_11_00_01>(r));
    let lanes = _mm512_permutexvar_ps(_mm512_setr_epi32(0, 4, 8, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0), s);
    let mut out = [0f32; 4];
    // SAFETY: out holds 4 f32, the 128 bits stored.
    unsafe { _mm_storeu_ps(out.as_mut_ptr(), _mm512_castps512_ps128(lanes)) };
    out
}

/// [`simd::fma_loop`] on zmm vectors.
///
/// # Safety
///
/// The CPU supports AVX-512F.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn fma_loop(iters: usize, x: f32) -> f32 {
    // SAFETY: AVX-512F is enabled here and supported (caller's contract).
    unsafe { simd::fma_loop::<Zmm<f32>>(iters, x) }
}
