//! Cross-entropy from logits, fused: per-row log-sum-exp, loss, and the gradient written
//! directly as (softmax − onehot)·scale, so no probability tensor is kept.
//! `logits` is contiguous `[n, c]`; ignored rows contribute nothing. Each row's loops run
//! vectorised (AVX-512 or AVX2 where the CPU has it): the max and the sum of exponentials folded
//! over eight interleaved lanes a block at a time (`lane_fold_of`, `lane_sum`, which vectorise
//! the widening max and the exponentials), the gradient written once, with no branch per element.

use super::{acc, alloc, dispatch_float, lane_fold_of, lane_sum, typed, vectorised, CpuFloat};
use crate::backend::cpu::CpuStorage;
use crate::backend::op::exp::Exp;
use crate::Result;
use num_traits::{Float, ToPrimitive};
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// Returns (Σ loss over counted rows, per-row log-sum-exp). Targets are checked by the caller.
pub fn cross_entropy_forward(
    logits: &CpuStorage,
    targets: &[u32],
    c: usize,
    ignore: Option<u32>,
) -> Result<(f64, Vec<f64>)> {
    fn run<T: CpuFloat>(logits: &CpuStorage, targets: &[u32], c: usize, ignore: Option<u32>) -> (f64, Vec<f64>) {
        let x = typed::<T>(logits);
        let per_row: Vec<(f64, f64)> = x
            .par_chunks(c)
            .zip(targets.par_iter())
            .map(|(row, &t)| {
                let (max, sum) = vectorised(
                    #[inline(always)]
                    || {
                        let max = lane_fold_of(row, <T::Acc as Float>::neg_infinity(), |v| v.up(), Float::max);
                        (max, lane_sum(row, |v| (v.up() - max).exp_fast()))
                    },
                );
                let lse = (sum.ln() + max).to_f64().unwrap_or(f64::NAN);
                let loss = if Some(t) == ignore {
                    0.0
                } else {
                    lse - row[t as usize].to_f64()
                };
                (loss, lse)
            })
            .collect();
        let total = per_row.iter().map(|&(l, _)| l).sum();
        (total, per_row.into_iter().map(|(_, lse)| lse).collect())
    }
    Ok(dispatch_float!(
        "cross_entropy",
        logits.dtype(),
        run(logits, targets, c, ignore)
    ))
}

/// d logits = (softmax(row) − onehot(target))·scale, zero for ignored rows.
pub fn cross_entropy_backward(
    logits: &CpuStorage,
    targets: &[u32],
    lse: &[f64],
    c: usize,
    ignore: Option<u32>,
    scale: f64,
) -> Result<CpuStorage> {
    fn run<T: CpuFloat>(
        logits: &CpuStorage,
        targets: &[u32],
        lse: &[f64],
        c: usize,
        ignore: Option<u32>,
        scale: f64,
    ) -> Result<CpuStorage> {
        let x = typed::<T>(logits);
        // every row is written below (ignored rows as zeros), so the output starts uninitialised
        let mut dx = alloc::with_capacity("cross_entropy", x.len())?;
        if c > 0 {
            dx.spare_capacity_mut()[..x.len()]
                .par_chunks_mut(c)
                .zip(x.par_chunks(c))
                .zip(targets.par_iter().zip(lse))
                .for_each(|((dr, xr), (&t, &lse))| {
                    if Some(t) == ignore {
                        dr.fill(MaybeUninit::new(T::from_f64(0.0)));
                        return;
                    }
                    let (lse, scale) = (acc::<T>(lse), acc::<T>(scale));
                    // softmax·scale everywhere, then the target's (p − 1)·scale: the values
                    // (p − onehot)·scale gives (p − 0 is p), without a comparison per element
                    vectorised(
                        #[inline(always)]
                        || {
                            for (d, &v) in dr.iter_mut().zip(xr) {
                                d.write(T::down((v.up() - lse).exp_fast() * scale));
                            }
                        },
                    );
                    let t = t as usize;
                    dr[t].write(T::down(((xr[t].up() - lse).exp_fast() - acc::<T>(1.0)) * scale));
                });
        }
        // SAFETY: the capacity is x.len(), tiled by the rows of c elements, each written in full
        // above (x is empty when c is 0)
        unsafe { dx.set_len(x.len()) };
        Ok(CpuStorage::from_vec(dx))
    }
    dispatch_float!(
        "cross_entropy",
        logits.dtype(),
        run(logits, targets, lse, c, ignore, scale)
    )
}
