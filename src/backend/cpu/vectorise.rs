//! Helpers that let the CPU loops vectorise: AVX2 code generation where the CPU has it, and
//! row reductions folded over eight interleaved lanes.

/// Runs `f` compiled with AVX2 and FMA enabled where the CPU has them (x86-64), else as it is.
/// The crate is built for plain x86-64, whose vectors are SSE2's four f32 lanes; inlined into
/// the wrapper below, a loop over slices gets eight. Results are the same bits either way:
/// Rust never fuses a multiply and an add on its own, so enabling FMA changes no arithmetic,
/// only the width of the vectors the same operations run on. `f` must be a leaf loop (work it
/// hands to rayon runs elsewhere, without the features), marked `#[inline(always)]` so that it
/// is compiled inside the wrapper.
#[inline(always)]
pub(crate) fn vectorised<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    if super::gemm::avx2_fma() {
        #[target_feature(enable = "avx2,fma")]
        unsafe fn wide<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        // SAFETY: the CPU has AVX2 and FMA (checked just above).
        return unsafe { wide(f) };
    }
    f()
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
