//! AVX-512 BF16: a 12×32 tile of f32 accumulators fed by `vdpbf16ps`, for bf16 A and B
//! ([`super::bgemm`]).
//!
//! `vdpbf16ps acc, a, b` treats each 32-bit lane of `a` and `b` as a pair of bf16 and adds both
//! products to the f32 lane of `acc`: `acc[j] += a[2j]·b[2j] + a[2j+1]·b[2j+1]`. So the kernel
//! takes the shared dimension two steps at a time, and packing interleaves pairs of k:
//!
//! ```text
//! Ã (one micro-panel):  ã[(q·MR + i)·2 + h] = A[i, 2q + h]        (kc/2, MR, 2)
//! B̃ (each micro-panel): b̃[(q·NR + j)·2 + h] = B[2q + h, j]        (kc/2, NR, 2)
//! ```
//!
//! with an odd kc padded by a zero step. Each pair step loads 2 zmm of B̃ (32 columns × 2),
//! broadcasts each row's 32-bit pair of Ã and issues 24 independent `vdpbf16ps`: the f32
//! kernel's loop (`simd::tile`) with twice the work per instruction, and the same write-back.
//!
//! Packing is a transpose or an interleave of 32-bit pairs, by the operand's layout (`pack_pairs`):
//! an operand contiguous along k (a row-major A such as activations, a column-major B such as a
//! Linear's `Wᵀ`) has each pair contiguous already, so packing it is a 16×16 transpose of 32-bit
//! pairs (`avx512::transpose_16x16`); an operand contiguous along the panel's other dimension
//! (a column-major A, as in `dW = dYᵀ·X`, or a row-major B) interleaves two of its lines.
//!
//! Numerics (Intel SDM, VDPBF16PS): the product of two bf16 (8-bit significands) is exact in
//! f32, and each of the two accumulations is rounded to nearest even, so the result is an f32
//! sum of the exact products, in another order than the f32 kernel's. Unlike it, the
//! instruction ignores MXCSR: bf16 inputs below 2⁻¹²⁶ count as zero and a product or sum that
//! falls below 2⁻¹²⁶ is flushed to zero, which for values of a model's scale changes nothing.

use super::avx512::{first_lanes, transpose_16x16, Zmm};
use super::kernel::Kernel;
use super::matrix::{Epilogue, MatMut, MatRef};
use super::simd::{prefetch_tile, write_back, PREFETCH_STEPS};
use half::bf16;
use std::arch::x86_64::*;

/// The `vdpbf16ps` micro-kernel.
pub(super) struct Bf16Dot;

/// Rows of the register tile.
const MR: usize = 12;
/// Columns of the register tile: two zmm of f32.
const NR: usize = 32;

impl Kernel for Bf16Dot {
    type T = f32;
    type In = bf16;
    const MR: usize = MR;
    const NR: usize = NR;
    /// Ã micro-panel 12·512·2 B = 12 KiB of the 48 KiB L1 (the f32 kernel's bytes, twice the k).
    const KC: usize = 512;
    /// B̃ block 512·1024·2 B = 1 MiB of the 2 MiB L2.
    const NC: usize = 1024;
    const K_STEP: usize = 2;

    unsafe fn tile(
        kc: usize,
        a: *const bf16,
        b: *const bf16,
        c: MatMut<f32>,
        mr: usize,
        nr: usize,
        ep: &Epilogue<f32>,
    ) {
        // SAFETY: forwarded contract, which includes the target features.
        unsafe { tile(kc, a, b, c, mr, nr, ep) }
    }

    unsafe fn pack_a(mr: usize, kc: usize, a: MatRef<bf16>, dst: &mut [bf16]) {
        // A's rows are the panel's lanes: lane stride rs, k stride cs.
        // SAFETY: forwarded contract (rows 0..mr, columns 0..kc of `a` are readable), and dst
        // holds round_up(kc, 2)·MR elements.
        unsafe { pack_pairs(a.ptr, a.rs, a.cs, mr, MR, kc, dst) }
    }

    unsafe fn pack_b(kc: usize, nc: usize, b: MatRef<bf16>, dst: &mut [bf16]) {
        let panel_len = kc.next_multiple_of(2) * NR;
        for (j0, panel) in (0..nc).step_by(NR).zip(dst.chunks_exact_mut(panel_len)) {
            // B's columns are the panel's lanes: lane stride cs, k stride rs.
            // SAFETY: columns j0..j0 + nr, rows 0..kc of `b` are readable (forwarded
            // contract), and the panel holds round_up(kc, 2)·NR elements.
            unsafe { pack_pairs(b.at(0, j0).ptr, b.cs, b.rs, NR.min(nc - j0), NR, kc, panel) }
        }
    }
}

/// Whether this CPU runs [`Bf16Dot`]: AVX-512 BF16, and the AVX-512 F/BW/VL its packing uses.
pub(super) fn supported() -> bool {
    std::arch::is_x86_feature_detected!("avx512bf16")
        && std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bw")
        && std::arch::is_x86_feature_detected!("avx512vl")
}

/// The micro-kernel: [`Kernel::tile`]'s contract with round_up(kc, 2)/2 pair steps.
///
/// # Safety
///
/// As for [`Kernel::tile`], and the CPU supports AVX-512 F and BF16.
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn tile(kc: usize, a: *const bf16, b: *const bf16, c: MatMut<f32>, mr: usize, nr: usize, ep: &Epilogue<f32>) {
    prefetch_tile(c, mr, nr);
    let mut acc = [[_mm512_setzero_ps(); 2]; MR];
    for q in 0..kc.div_ceil(2) {
        // SAFETY: pair step q reads Ã[2q·MR..][..2·MR] and B̃[2q·NR..][..2·NR], inside the
        // round_up(kc, 2)·MR and ·NR elements of the panels (caller's contract); Ã's pairs are
        // 4-byte aligned (the panel is 64-byte aligned and a pair is 4 bytes). Prefetches never
        // fault and use wrapping arithmetic. __m512i and __m512bh are both 64 plain bytes.
        unsafe {
            let a_q = a.add(2 * q * MR).cast::<i32>();
            let b_q = b.add(2 * q * NR);
            // B̃ streams from L2 (a step spans two cache lines); Ã stays in L1.
            let ahead = b_q.wrapping_add(PREFETCH_STEPS * 2 * NR);
            _mm_prefetch::<_MM_HINT_T0>(ahead.cast());
            _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(NR).cast());
            let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(b_q.cast()));
            let b1: __m512bh = std::mem::transmute(_mm512_loadu_si512(b_q.add(NR).cast()));
            for (i, acc_i) in acc.iter_mut().enumerate() {
                let a_qi: __m512bh = std::mem::transmute(_mm512_set1_epi32(*a_q.add(i)));
                acc_i[0] = _mm512_dpbf16_ps(acc_i[0], a_qi, b0);
                acc_i[1] = _mm512_dpbf16_ps(acc_i[1], a_qi, b1);
            }
        }
    }
    // SAFETY: AVX-512F is supported; mr <= MR, nr <= NR = 2·16 and the C view is the caller's.
    unsafe { write_back::<Zmm<f32>, MR>(&acc, c, mr, nr, ep) }
}

/// Packs `lanes` (<= `width`) lines of `kc` bf16 into the pair layout of the module header:
/// `dst[(q·width + l)·2 + h] = src[l·lane_stride + (2q + h)·k_stride]`, zero for `l >= lanes` and
/// for `2q + h >= kc`. The lines are A's rows (width MR) or B's columns (width NR).
///
/// # Safety
///
/// Element `(l, p)` at `src + l·lane_stride + p·k_stride` is readable for `l < lanes`, `p < kc`;
/// `dst` holds at least `round_up(kc, 2)·width` elements; the CPU supports [`Bf16Dot`].
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub(super) unsafe fn pack_pairs(
    src: *const bf16,
    lane_stride: usize,
    k_stride: usize,
    lanes: usize,
    width: usize,
    kc: usize,
    dst: &mut [bf16],
) {
    let pairs = kc.div_ceil(2);
    let dst = &mut dst[..2 * pairs * width];
    // Pairs done by the vector loops; the rest go element by element below.
    let mut done = 0;
    if k_stride == 1 {
        // Each line holds its pairs contiguously: transpose 16 lines × 16 pairs (32-bit) at a time.
        done = kc / 32 * 16;
        for l0 in (0..width).step_by(16) {
            let block_lanes = lanes.saturating_sub(l0).min(16);
            for q0 in (0..done).step_by(16) {
                let mut rows = [_mm512_setzero_ps(); 16];
                for (l, row) in rows.iter_mut().enumerate().take(block_lanes) {
                    // SAFETY: line l0 + l < lanes holds elements 2·q0..2·q0 + 32 <= kc (an
                    // unaligned load; no alignment is assumed).
                    *row = unsafe { _mm512_loadu_ps(src.add((l0 + l) * lane_stride + 2 * q0).cast()) };
                }
                // SAFETY: rows q0..q0 + 16 of the (pairs, width) destination of 32-bit pairs hold
                // lanes l0..l0 + min(16, width - l0); dst is 64-byte aligned, so 4-byte aligned.
                unsafe {
                    let out = dst.as_mut_ptr().cast::<f32>().add(q0 * width + l0);
                    transpose_16x16(rows, out, width, (width - l0).min(16));
                }
            }
        }
    } else if lane_stride == 1 {
        // Each line of k is contiguous along the lanes: interleave lines 2q and 2q + 1,
        // 16 lanes at a time (low half of each 32-bit pair from line 2q).
        done = pairs;
        for q in 0..pairs {
            let (even, odd) = (
                src.wrapping_add(2 * q * k_stride),
                src.wrapping_add((2 * q + 1) * k_stride),
            );
            for l0 in (0..width).step_by(16) {
                let read = first_lanes(lanes.saturating_sub(l0).min(16));
                // SAFETY: the masks read only lanes l0.. < lanes of lines 2q and (when it exists)
                // 2q + 1 < kc; the store writes lanes l0..min(l0 + 16, width) of pair row q.
                unsafe {
                    let lo = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(read, even.wrapping_add(l0).cast()));
                    let hi = if 2 * q + 1 < kc {
                        _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(read, odd.wrapping_add(l0).cast()))
                    } else {
                        _mm512_setzero_si512()
                    };
                    let pair = _mm512_or_si512(lo, _mm512_slli_epi32::<16>(hi));
                    let out = dst.as_mut_ptr().add(2 * (q * width + l0));
                    _mm512_mask_storeu_epi32(out.cast(), first_lanes((width - l0).min(16)), pair);
                }
            }
        }
    }
    for q in done..pairs {
        for l in 0..width {
            for h in 0..2 {
                let p = 2 * q + h;
                dst[2 * (q * width + l) + h] = if l < lanes && p < kc {
                    // SAFETY: (l, p) is an element of the lines (caller's contract).
                    unsafe { *src.add(l * lane_stride + p * k_stride) }
                } else {
                    bf16::ZERO
                };
            }
        }
    }
}
