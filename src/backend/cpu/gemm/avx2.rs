//! AVX2 + FMA: a 6 × (2·LANES) tile, 6×16 for f32 and 6×8 for f64 (12 of the 16 ymm registers
//! accumulate, two hold B̃ and one the broadcast Ã value).

use super::kernel::{InPlaceTile, Kernel, Panel};
use super::matrix::{Element, Epilogue, Format, MatMut, MatRef, Streamed};
use super::simd::{self, padded, Vector, Widen};
use std::arch::x86_64::*;
use std::marker::PhantomData;

/// The ymm vectors of `E`.
pub(super) struct Ymm<E>(PhantomData<E>);

simd_kernel!(Ymm, 6, "avx2,fma");

impl Vector for Ymm<f32> {
    type E = f32;
    type V = __m256;
    const LANES: usize = 8;
    /// Ã micro-panel 6·256·4 B = 6 KiB of a 32 KiB L1.
    const KC: usize = 256;
    /// B̃ block 256·384·4 B = 384 KiB, inside the 512 KiB L2 of the smallest such cores.
    const NC: usize = 384;

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn zero() -> __m256 {
        _mm256_setzero_ps()
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn splat(x: f32) -> __m256 {
        _mm256_set1_ps(x)
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn load(p: *const f32) -> __m256 {
        // SAFETY: p is valid for 8 reads (trait contract).
        unsafe { _mm256_loadu_ps(p) }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn fmadd(a: __m256, b: __m256, c: __m256) -> __m256 {
        _mm256_fmadd_ps(a, b, c)
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn vmul(a: __m256, b: __m256) -> __m256 {
        _mm256_mul_ps(a, b)
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn load_first(p: *const f32, lanes: usize) -> __m256 {
        // SAFETY: masked-off lanes are not accessed (and cannot fault); the others are valid.
        unsafe { _mm256_maskload_ps(p, first_lanes32(lanes)) }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn store_first(p: *mut f32, v: __m256, lanes: usize) {
        // SAFETY: masked-off lanes are not accessed (and cannot fault); the others are valid.
        unsafe { _mm256_maskstore_ps(p, first_lanes32(lanes), v) }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn store(p: *mut f32, v: __m256) {
        // SAFETY: p is valid for 8 writes (trait contract).
        unsafe { _mm256_storeu_ps(p, v) }
    }

    /// Three rounds of 8 shuffles.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn transpose_block(
        src: *const f32,
        src_stride: usize,
        rows: usize,
        dst: *mut f32,
        dst_stride: usize,
        width: usize,
    ) {
        let mut r = [_mm256_setzero_ps(); 8];
        for (i, row) in r.iter_mut().enumerate().take(rows) {
            // SAFETY: source row i < rows holds 8 elements (trait contract).
            *row = unsafe { _mm256_loadu_ps(src.add(i * src_stride)) };
        }
        // t[2g] holds columns 4L, 4L + 1 and t[2g + 1] columns 4L + 2, 4L + 3 of rows 2g,
        // 2g + 1, interleaved, in 128-bit lane L.
        let mut t = r;
        for g in 0..4 {
            t[2 * g] = _mm256_unpacklo_ps(r[2 * g], r[2 * g + 1]);
            t[2 * g + 1] = _mm256_unpackhi_ps(r[2 * g], r[2 * g + 1]);
        }
        // u[4h + c] holds column 4L + c of rows 4h..4h + 4 in lane L.
        let mut u = t;
        for h in 0..2 {
            let [t0, t1, t2, t3] = [t[4 * h], t[4 * h + 1], t[4 * h + 2], t[4 * h + 3]];
            u[4 * h] = _mm256_shuffle_ps::<0x44>(t0, t2);
            u[4 * h + 1] = _mm256_shuffle_ps::<0xEE>(t0, t2);
            u[4 * h + 2] = _mm256_shuffle_ps::<0x44>(t1, t3);
            u[4 * h + 3] = _mm256_shuffle_ps::<0xEE>(t1, t3);
        }
        // Column c is lane 0 of u[c] and u[4 + c], column 4 + c their lane 1.
        let columns: [__m256; 8] = std::array::from_fn(|q| {
            let (c, half) = (q % 4, q / 4);
            if half == 0 {
                _mm256_permute2f128_ps::<0x20>(u[c], u[4 + c])
            } else {
                _mm256_permute2f128_ps::<0x31>(u[c], u[4 + c])
            }
        });
        // SAFETY: destination rows q < 8 hold `width` elements, contiguous when width < 8.
        unsafe { store_rows::<Self>(&columns, dst, dst_stride, width) }
    }
}

impl Vector for Ymm<f64> {
    type E = f64;
    type V = __m256d;
    const LANES: usize = 4;
    /// Ã micro-panel 6·256·8 B = 12 KiB of a 32 KiB L1.
    const KC: usize = 256;
    /// B̃ block 256·192·8 B = 384 KiB, inside a 512 KiB L2.
    const NC: usize = 192;

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn zero() -> __m256d {
        _mm256_setzero_pd()
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn splat(x: f64) -> __m256d {
        _mm256_set1_pd(x)
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn load(p: *const f64) -> __m256d {
        // SAFETY: p is valid for 4 reads (trait contract).
        unsafe { _mm256_loadu_pd(p) }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn fmadd(a: __m256d, b: __m256d, c: __m256d) -> __m256d {
        _mm256_fmadd_pd(a, b, c)
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn vmul(a: __m256d, b: __m256d) -> __m256d {
        _mm256_mul_pd(a, b)
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn load_first(p: *const f64, lanes: usize) -> __m256d {
        // SAFETY: masked-off lanes are not accessed (and cannot fault); the others are valid.
        unsafe { _mm256_maskload_pd(p, first_lanes64(lanes)) }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn store_first(p: *mut f64, v: __m256d, lanes: usize) {
        // SAFETY: masked-off lanes are not accessed (and cannot fault); the others are valid.
        unsafe { _mm256_maskstore_pd(p, first_lanes64(lanes), v) }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn store(p: *mut f64, v: __m256d) {
        // SAFETY: p is valid for 4 writes (trait contract).
        unsafe { _mm256_storeu_pd(p, v) }
    }

    /// Two rounds of 4 shuffles.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn transpose_block(
        src: *const f64,
        src_stride: usize,
        rows: usize,
        dst: *mut f64,
        dst_stride: usize,
        width: usize,
    ) {
        let mut r = [_mm256_setzero_pd(); 4];
        for (i, row) in r.iter_mut().enumerate().take(rows) {
            // SAFETY: source row i < rows holds 4 elements (trait contract).
            *row = unsafe { _mm256_loadu_pd(src.add(i * src_stride)) };
        }
        // t[2g + c] holds column 2L + c of rows 2g, 2g + 1 in 128-bit lane L.
        let t = [
            _mm256_unpacklo_pd(r[0], r[1]),
            _mm256_unpackhi_pd(r[0], r[1]),
            _mm256_unpacklo_pd(r[2], r[3]),
            _mm256_unpackhi_pd(r[2], r[3]),
        ];
        // Column c is lane 0 of t[c] and t[2 + c], column 2 + c their lane 1.
        let columns: [__m256d; 4] = std::array::from_fn(|q| {
            let (c, half) = (q % 2, q / 2);
            if half == 0 {
                _mm256_permute2f128_pd::<0x20>(t[c], t[2 + c])
            } else {
                _mm256_permute2f128_pd::<0x31>(t[c], t[2 + c])
            }
        });
        // SAFETY: destination rows q < 4 hold `width` elements, contiguous when width < 4.
        unsafe { store_rows::<Self>(&columns, dst, dst_stride, width) }
    }
}

/// Stores the first `width` lanes of each of the LANES vectors `rows` as row q of the
/// matrix at `dst` (rows `dst_stride` apart), as [`Vector::transpose_block`] needs. Narrow
/// rows that are contiguous (`dst_stride == width`: a whole A panel row of the 6-row tile)
/// are stored whole, in order, the extra lanes landing on the next row just before that
/// row's own store overwrites them; only the last row, or rows with gaps between them, are
/// masked. A masked store costs ~10 cycles on AMD Zen 2/3, a plain one 1.
///
/// # Safety
///
/// AVX2; `rows` holds LANES vectors and rows `0..LANES` at `dst` hold `width` writable
/// elements.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn store_rows<V: Vector>(rows: &[V::V], dst: *mut V::E, dst_stride: usize, width: usize) {
    let contiguous = dst_stride == width;
    for (q, &row) in rows.iter().enumerate() {
        let at = dst.wrapping_add(q * dst_stride);
        // SAFETY: row q holds `width` elements; a whole store past them (width < LANES,
        // contiguous rows, q not the last) lands inside row q + 1, which is written next.
        unsafe {
            if width == V::LANES || (contiguous && q + 1 < V::LANES) {
                V::store(at, row)
            } else {
                V::store_first(at, row, width)
            }
        }
    }
}

/// A mask selecting the first `lanes` (0..=8) 32-bit lanes.
#[inline]
#[target_feature(enable = "avx2")]
fn first_lanes32(lanes: usize) -> __m256i {
    _mm256_cmpgt_epi32(
        _mm256_set1_epi32(lanes as i32),
        _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
    )
}

/// A mask selecting the first `lanes` (0..=4) 64-bit lanes.
#[inline]
#[target_feature(enable = "avx2")]
fn first_lanes64(lanes: usize) -> __m256i {
    _mm256_cmpgt_epi64(_mm256_set1_epi64x(lanes as i64), _mm256_setr_epi64x(0, 1, 2, 3))
}

impl Widen for Ymm<f32> {
    /// bf16: zero-extended to 32 bits and shifted into the top half; f16: `vcvtph2ps` (F16C,
    /// which the streamed loops' AVX2 path requires); the same f32 values either way.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load_wide<W: Streamed>(p: *const W) -> __m256 {
        match W::FORMAT {
            // SAFETY: p is valid for 8 reads (trait contract).
            Format::F32 => unsafe { Self::load(p.cast()) },
            Format::Bf16 => {
                // SAFETY: p is valid for 8 bf16 reads, 16 bytes (trait contract).
                let half = unsafe { _mm_loadu_si128(p.cast()) };
                _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(half)))
            }
            // SAFETY: p is valid for 8 f16 reads, 16 bytes (trait contract).
            Format::F16 => _mm256_cvtph_ps(unsafe { _mm_loadu_si128(p.cast()) }),
        }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load_wide_first<W: Streamed>(p: *const W, lanes: usize) -> __m256 {
        match W::FORMAT {
            // SAFETY: forwarded contract.
            Format::F32 => unsafe { Self::load_first(p.cast(), lanes) },
            // SAFETY: forwarded contract.
            Format::Bf16 | Format::F16 => unsafe { Self::load_wide(padded(p, lanes).as_ptr()) },
        }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn sums(v: [__m256; 4]) -> [f32; 4] {
        [lane_sum(v[0]), lane_sum(v[1]), lane_sum(v[2]), lane_sum(v[3])]
    }
}

/// The sum of the 8 lanes: the two halves added, then pairs within the half.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn lane_sum(v: __m256) -> f32 {
    let half = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let pairs = _mm_add_ps(half, _mm_movehl_ps(half, half));
    _mm_cvtss_f32(_mm_add_ss(pairs, _mm_shuffle_ps::<1>(pairs, pairs)))
}

/// [`simd::fma_loop`] on ymm vectors.
///
/// # Safety
///
/// The CPU supports AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn fma_loop(iters: usize, x: f32) -> f32 {
    // SAFETY: AVX2 and FMA are enabled here and supported (caller's contract).
    unsafe { simd::fma_loop::<Ymm<f32>>(iters, x) }
}
