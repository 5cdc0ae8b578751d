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
/// order depends only on n), and the loops vectorise, where one running fold is a chain of
/// dependent adds that runs at one element per add latency: the row reductions (layer norm's
/// mean and variance, softmax's max and sum, the gradient norm) were the slowest loops of a
/// small model's step. `f` is mapped over a block of [`FOLD_BLOCK`] indices into a stack buffer
/// (a loop of its own, which the compiler vectorises where, inside the fold, it had left a
/// widening f, an exponential or a NaN-ignoring max scalar: softmax's bf16 backward took 0.72
/// times as long), which is then folded into the partials ([`fold_block`]). `f` indexes slices the caller has cut to exactly n
/// elements, so the compiler drops the bounds checks (`i` < the block's end ≤ n). For a fold
/// over several slices (a dot product); over one, [`lane_fold_of`].
#[inline(always)]
pub(crate) fn lane_fold<A: Copy>(n: usize, init: A, f: impl Fn(usize) -> A, combine: impl Fn(A, A) -> A) -> A {
    let mut acc = [init; FOLD_LANES];
    let mut buf = [init; FOLD_BLOCK];
    let mut start = 0;
    while start < n {
        let len = FOLD_BLOCK.min(n - start);
        // By index from the block's start, not `zip(start..end)`: so the compiler sees each
        // `f(i)` with `i < n` and drops the bounds checks of callers' `x[i]` (layer norm's
        // backward over 768 × 128 f32: 158 µs a call with the zip, 126 with the index, 134
        // with `enumerate`; one thread, Intel Xeon).
        #[allow(clippy::needless_range_loop)]
        for j in 0..len {
            buf[j] = f(start + j);
        }
        fold_block(&mut acc, &buf[..len], &combine);
        start += len;
    }
    acc.into_iter().reduce(&combine).unwrap_or(init)
}

/// [`lane_fold`] of `f(x)` over the elements of one slice, in its order, with the blocks cut from
/// the slice itself, so that no index is checked: through [`lane_fold`] with `|i| f(x[i])` the
/// checks stayed and kept the loops scalar (cross-entropy's max over 2048 rows of 50257 logits
/// 150 ms, 48 ms this way; the gradient norm of GPT-2 124M, f32 squares summed in f64, at 3.8
/// GB/s inside the old single-loop `lane_fold`, 12 through `lane_fold`, 19-21 this way; 2
/// threads, Intel Xeon, 2026-12-07).
#[inline(always)]
pub(crate) fn lane_fold_of<T: Copy, A: Copy>(x: &[T], init: A, f: impl Fn(T) -> A, combine: impl Fn(A, A) -> A) -> A {
    let mut acc = [init; FOLD_LANES];
    let mut buf = [init; FOLD_BLOCK];
    for block in x.chunks(FOLD_BLOCK) {
        let buf = &mut buf[..block.len()];
        for (b, &v) in buf.iter_mut().zip(block) {
            *b = f(v);
        }
        fold_block(&mut acc, buf, &combine);
    }
    acc.into_iter().reduce(&combine).unwrap_or(init)
}

/// Indices per block of [`lane_fold`] and [`lane_fold_of`]: a multiple of `FOLD_LANES`, a stack
/// buffer in L1.
const FOLD_BLOCK: usize = 64;

/// Folds a block of values into the partials, value j into partial j mod `FOLD_LANES`: blocks
/// are whole multiples of the lanes, so only the last may end in a partial group, whose values
/// go to partials 0.., as their indices say.
#[inline(always)]
fn fold_block<A: Copy>(acc: &mut [A; FOLD_LANES], buf: &[A], combine: impl Fn(A, A) -> A) {
    let mut groups = buf.chunks_exact(FOLD_LANES);
    for group in &mut groups {
        for (a, &b) in acc.iter_mut().zip(group) {
            *a = combine(*a, b);
        }
    }
    for (a, &b) in acc.iter_mut().zip(groups.remainder()) {
        *a = combine(*a, b);
    }
}

/// Σ f(x) over `x`, by [`lane_fold_of`].
#[inline(always)]
pub(crate) fn lane_sum<T: Copy, A: Copy + std::ops::Add<Output = A> + num_traits::Zero>(
    x: &[T],
    f: impl Fn(T) -> A,
) -> A {
    lane_fold_of(x, A::zero(), f, |p, q| p + q)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// lane_fold, lane_fold_of and lane_sum all put value i into partial i mod 8
    /// and combine the partials in order, as the plain loop below does: the same bits, over
    /// lengths around the block and lane sizes, with values whose sums round differently in
    /// other orders, for a sum, a sum of exponentials and a NaN-ignoring max.
    #[test]
    fn the_folds_keep_eight_partials_in_index_order() {
        fn naive(x: &[f32], init: f32, f: impl Fn(f32) -> f32, combine: impl Fn(f32, f32) -> f32) -> f32 {
            let mut partials = [init; 8];
            for (i, &v) in x.iter().enumerate() {
                partials[i % 8] = combine(partials[i % 8], f(v));
            }
            partials.into_iter().reduce(combine).unwrap()
        }
        let x: Vec<f32> = (0..1000)
            .map(|i| ((i * 7919) % 1013) as f32 * 1.37e-3 + (i % 3) as f32 * 1e4)
            .collect();
        let mut with_nan = x.clone();
        with_nan[77] = f32::NAN;
        let (exp, add) = (|v: f32| (v * 1e-4).exp(), |p: f32, q: f32| p + q);
        for n in [0, 1, 7, 8, 9, 63, 64, 65, 127, 128, 200, 1000] {
            let (x, xn) = (&x[..n], &with_nan[..n]);
            let sum = naive(x, 0.0, |v| v, add);
            let sum_exp = naive(x, 0.0, exp, add);
            let max = naive(xn, f32::NEG_INFINITY, |v| v, f32::max);
            assert_eq!(lane_sum(x, |v| v).to_bits(), sum.to_bits(), "lane_sum, n = {n}");
            assert_eq!(
                lane_sum(x, exp).to_bits(),
                sum_exp.to_bits(),
                "lane_sum of exp, n = {n}"
            );
            let folded = lane_fold(n, 0.0, |i| exp(x[i]), add);
            assert_eq!(folded.to_bits(), sum_exp.to_bits(), "lane_fold of exp, n = {n}");
            let folded = lane_fold(n, f32::NEG_INFINITY, |i| xn[i], f32::max);
            assert_eq!(folded.to_bits(), max.to_bits(), "lane_fold max, n = {n}");
            let folded = lane_fold_of(xn, f32::NEG_INFINITY, |v| v, f32::max);
            assert_eq!(folded.to_bits(), max.to_bits(), "lane_fold_of max, n = {n}");
        }
        // the order matters for these values: a running sum rounds differently
        assert_ne!(
            lane_sum(&x[..200], |v| v).to_bits(),
            x[..200].iter().sum::<f32>().to_bits()
        );
    }
}
