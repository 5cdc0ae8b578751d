//! Helpers that let the CPU loops vectorise: AVX-512 or AVX2 code generation where the CPU has
//! it, and row reductions folded over eight interleaved lanes.

use std::sync::atomic::{AtomicU8, Ordering};

/// The instruction sets [`vectorised`] compiles its loop for, widest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Width {
    /// The crate's baseline (x86-64: SSE2, four f32 lanes).
    Base = 0,
    /// AVX2 + FMA: eight f32 lanes.
    Avx2 = 1,
    /// AVX-512 F/BW/DQ/VL (with AVX2 + FMA): sixteen f32 lanes.
    Avx512 = 2,
}

/// The widest [`Width`] [`vectorised`] may use (tests lower it to compare widths); `Avx512` by
/// default, so the CPU's own features decide.
static WIDTH_CAP: AtomicU8 = AtomicU8::new(Width::Avx512 as u8);

/// Caps the vectors [`vectorised`] uses from now on, process-wide; returns the previous cap. For
/// tests that check every width gives the same bits.
#[cfg(test)]
pub(crate) fn cap_width(w: Width) -> Width {
    match WIDTH_CAP.swap(w as u8, Ordering::Relaxed) {
        0 => Width::Base,
        1 => Width::Avx2,
        _ => Width::Avx512,
    }
}

/// The widest [`Width`] this CPU has, within the cap (`is_x86_feature_detected!` caches its
/// answers: a few loads per call).
#[inline(always)]
pub(crate) fn width() -> Width {
    let cap = WIDTH_CAP.load(Ordering::Relaxed);
    #[cfg(target_arch = "x86_64")]
    {
        if cap >= Width::Avx512 as u8
            && super::gemm::avx2_fma()
            && std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512dq")
            && std::arch::is_x86_feature_detected!("avx512vl")
        {
            return Width::Avx512;
        }
        if cap >= Width::Avx2 as u8 && super::gemm::avx2_fma() {
            return Width::Avx2;
        }
    }
    let _ = cap;
    Width::Base
}

/// Runs `f` compiled with AVX-512 (F, BW, DQ, VL) or else AVX2 and FMA enabled where the CPU has
/// them (x86-64), else as it is. The crate is built for plain x86-64, whose vectors are SSE2's
/// four f32 lanes; inlined into the wrappers below, a loop over slices gets sixteen or eight.
/// Results are the same bits at every width: Rust never fuses a multiply and an add on its own,
/// nor reorders a floating-point sum, so enabling FMA or wider vectors changes no arithmetic,
/// only the number of elements each instruction works on (reductions keep their order through
/// [`lane_fold`]'s eight explicit partials). `f` must be a leaf loop (work it hands to rayon runs
/// elsewhere, without the features), marked `#[inline(always)]` so that it is compiled inside the
/// wrapper; a closure it calls must be inlined too, or it is compiled apart at the baseline
/// (give a `let`-bound one `#[inline(always)]` through [`inlined`]).
///
/// AVX-512 halves the time of the memory-light loops (the GELU epilogue of a 768 × 512 product, in
/// L2: 0.98 → 0.49 ns per element on a Zen 5 core, one thread, best of 200, 2026-12-06).
#[inline(always)]
pub(crate) fn vectorised<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    match width() {
        Width::Avx512 => {
            #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
            unsafe fn wide512<R>(f: impl FnOnce() -> R) -> R {
                f()
            }
            // SAFETY: the CPU has these features (width() checked them).
            return unsafe { wide512(f) };
        }
        Width::Avx2 => {
            #[target_feature(enable = "avx2,fma")]
            unsafe fn wide<R>(f: impl FnOnce() -> R) -> R {
                f()
            }
            // SAFETY: the CPU has AVX2 and FMA (width() checked them).
            return unsafe { wide(f) };
        }
        Width::Base => {}
    }
    f()
}

/// `f` itself. A closure bound by `let` cannot carry `#[inline(always)]` in stable Rust (attributes
/// on expressions), but a call argument can: `let body = inlined(#[inline(always)] |..| ..);` makes
/// sure a loop body that [`vectorised`] calls is compiled inside it, with its features, rather than
/// apart at the baseline where the compiler finds it too large to inline.
#[inline(always)]
pub(crate) fn inlined<F>(f: F) -> F {
    f
}

/// Partial results kept by [`lane_fold`]: eight, one AVX2 vector of f32.
const FOLD_LANES: usize = 8;

/// Folds `f(i)` over `i in 0..n` as `FOLD_LANES` interleaved partial folds, i into partial
/// i mod `FOLD_LANES`, which are combined in order at the end. The result is deterministic (the
/// order depends only on n), and the loop vectorises, where one running fold is a chain of
/// dependent adds that runs at one element per add latency: the row reductions (layer norm's
/// mean and variance, softmax's max and sum, the gradient norm) were the slowest loops of a
/// small model's step. `f` indexes slices the caller has cut to exactly n elements, so the
/// compiler drops the bounds checks.
#[inline(always)]
pub(crate) fn lane_fold<A: Copy>(n: usize, init: A, f: impl Fn(usize) -> A, combine: impl Fn(A, A) -> A) -> A {
    let mut acc = [init; FOLD_LANES];
    let full = n - n % FOLD_LANES;
    for chunk in 0..full / FOLD_LANES {
        for (j, a) in acc.iter_mut().enumerate() {
            *a = combine(*a, f(chunk * FOLD_LANES + j));
        }
    }
    for (a, i) in acc.iter_mut().zip(full..n) {
        *a = combine(*a, f(i));
    }
    acc.into_iter().reduce(&combine).unwrap_or(init)
}

/// Σ f(x) over `x`, by [`lane_fold`].
#[inline(always)]
pub(crate) fn lane_sum<T: Copy, A: Copy + std::ops::Add<Output = A> + num_traits::Zero>(
    x: &[T],
    f: impl Fn(T) -> A,
) -> A {
    lane_fold(x.len(), A::zero(), |i| f(x[i]), |p, q| p + q)
}

/// Elements per block of [`lane_sum_of`]: a multiple of `FOLD_LANES`, a stack buffer in L1.
const SUM_BLOCK: usize = 64;

/// Σ f(x) over `x` in exactly [`lane_sum`]'s order (element i into partial i mod `FOLD_LANES`,
/// the partials combined in order), for an `f` too long for the compiler to vectorise inside the
/// fold (an exponential): `f` is mapped over a block of [`SUM_BLOCK`] elements into a buffer (a
/// plain loop, which vectorises), then the buffer is added into the partials.
#[inline(always)]
pub(crate) fn lane_sum_of<T: Copy, A: Copy + std::ops::Add<Output = A> + num_traits::Zero>(
    x: &[T],
    f: impl Fn(T) -> A,
) -> A {
    let mut acc = [A::zero(); FOLD_LANES];
    let mut buf = [A::zero(); SUM_BLOCK];
    for block in x.chunks(SUM_BLOCK) {
        let buf = &mut buf[..block.len()];
        for (b, &v) in buf.iter_mut().zip(block) {
            *b = f(v);
        }
        // blocks are whole multiples of the lanes, so only the last may end in a partial group,
        // whose elements go to partials 0.. as lane_fold's tail does
        let mut groups = buf.chunks_exact(FOLD_LANES);
        for group in &mut groups {
            for (a, &b) in acc.iter_mut().zip(group) {
                *a = *a + b;
            }
        }
        for (a, &b) in acc.iter_mut().zip(groups.remainder()) {
            *a = *a + b;
        }
    }
    acc.into_iter().reduce(|p, q| p + q).unwrap_or(A::zero())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// lane_sum_of adds in lane_sum's order: the same bits, over lengths around the block and
    /// lane sizes, with values whose sums round differently in other orders.
    #[test]
    fn lane_sum_of_is_lane_sum_bit_for_bit() {
        let x: Vec<f32> = (0..1000)
            .map(|i| ((i * 7919) % 1013) as f32 * 1.37e-3 + (i % 3) as f32 * 1e4)
            .collect();
        for n in [0, 1, 7, 8, 9, 63, 64, 65, 127, 128, 200, 1000] {
            let f = |v: f32| (v * 0.5).exp();
            let want = lane_sum(&x[..n], f);
            assert_eq!(lane_sum_of(&x[..n], f).to_bits(), want.to_bits(), "n = {n}");
        }
    }
}
