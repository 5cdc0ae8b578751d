//! Softmax and log-softmax over the last dim of a contiguous tensor, one row at a time
//! (max-subtracted, accumulated in the arithmetic type), and their backward.

use super::{
    dispatch_float, inlined, lane_fold, lane_fold_of, lane_sum, map_float_storage, typed, vectorised, CpuFloat,
    PARALLEL_MIN,
};
use crate::backend::cpu::CpuStorage;
use crate::backend::op::exp::Exp;
use crate::Result;
use num_traits::Float;
use rayon::prelude::*;

/// `log` selects log-softmax. `s` is contiguous with rows of `width` elements.
pub fn softmax_last_dim(s: &CpuStorage, width: usize, log: bool) -> Result<CpuStorage> {
    fn run<T: CpuFloat>(x: &[T], width: usize, log: bool) -> Vec<T> {
        let mut out = vec![T::from_f64(0.0); x.len()];
        if width == 0 {
            return out;
        }
        let row = inlined(
            #[inline(always)]
            |(xr, yr): (&[T], &mut [T])| {
                let max = lane_fold_of(xr, <T::Acc as Float>::neg_infinity(), |v| v.up(), Float::max);
                if max == <T::Acc as Float>::neg_infinity() {
                    // A fully masked row has no probability mass: softmax 0, log-softmax -inf
                    // (PyTorch gives NaN here, which we never produce silently).
                    let fill = if log {
                        <T::Acc as Float>::neg_infinity()
                    } else {
                        <T::Acc as num_traits::Zero>::zero()
                    };
                    yr.iter_mut().for_each(|y| *y = T::down(fill));
                    return;
                }
                if log {
                    let sum = lane_sum(xr, |v| (v.up() - max).exp_fast());
                    let lse = sum.ln() + max;
                    xr.iter().zip(yr).for_each(|(v, y)| *y = T::down(v.up() - lse));
                } else {
                    // the exponentials are written to the output row first, a loop free of the
                    // (sequential) sum so that it vectorises, then summed and scaled in place
                    yr.iter_mut()
                        .zip(xr)
                        .for_each(|(y, v)| *y = T::down((v.up() - max).exp_fast()));
                    let inv = lane_sum(yr, |y| y.up()).recip();
                    yr.iter_mut().for_each(|y| *y = T::down(y.up() * inv));
                }
            },
        );
        if x.len() >= PARALLEL_MIN {
            x.par_chunks(width).zip(out.par_chunks_mut(width)).for_each(|r| {
                vectorised(
                    #[inline(always)]
                    || row(r),
                )
            });
        } else {
            vectorised(
                #[inline(always)]
                || x.chunks(width).zip(out.chunks_mut(width)).for_each(row),
            );
        }
        out
    }
    Ok(map_float_storage!(if log { "log_softmax" } else { "softmax" }, s, v => run(v, width, log)))
}

/// The gradient of [`softmax_last_dim`] from its output `y` and the incoming gradient `dy` (both
/// contiguous, rows of `width`), one fused pass per row in the arithmetic type:
///   softmax:     dx = y ⊙ (dy − Σ y ⊙ dy)        log_softmax: dx = dy − exp(y) · Σ dy
pub fn softmax_backward_last_dim(y: &CpuStorage, dy: &CpuStorage, width: usize, log: bool) -> Result<CpuStorage> {
    fn run<T: CpuFloat>(y: &CpuStorage, dy: &CpuStorage, width: usize, log: bool) -> CpuStorage {
        let (y, dy) = (typed::<T>(y), typed::<T>(dy));
        let mut dx = vec![T::from_f64(0.0); y.len()];
        if width == 0 {
            return CpuStorage::from_vec(dx);
        }
        let row = inlined(
            #[inline(always)]
            |((yr, gr), dr): ((&[T], &[T]), &mut [T])| {
                let sum = if log {
                    lane_sum(gr, |g| g.up())
                } else {
                    let (yr, gr) = (&yr[..gr.len()], gr);
                    lane_fold(
                        gr.len(),
                        <T::Acc as num_traits::Zero>::zero(),
                        |i| yr[i].up() * gr[i].up(),
                        |p, q| p + q,
                    )
                };
                for ((u, g), d) in yr.iter().zip(gr).zip(dr) {
                    let (u, g) = (u.up(), g.up());
                    *d = T::down(if log { g - u.exp() * sum } else { u * (g - sum) });
                }
            },
        );
        if y.len() >= PARALLEL_MIN {
            y.par_chunks(width)
                .zip(dy.par_chunks(width))
                .zip(dx.par_chunks_mut(width))
                .for_each(|r| {
                    vectorised(
                        #[inline(always)]
                        || row(r),
                    )
                });
        } else {
            vectorised(
                #[inline(always)]
                || {
                    y.chunks(width)
                        .zip(dy.chunks(width))
                        .zip(dx.chunks_mut(width))
                        .for_each(row)
                },
            );
        }
        CpuStorage::from_vec(dx)
    }
    let op = if log { "log_softmax" } else { "softmax" };
    Ok(dispatch_float!(op, y.dtype(), run(y, dy, width, log)))
}
