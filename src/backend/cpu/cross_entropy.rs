//! Cross-entropy from logits, fused: per-row log-sum-exp, loss, and the gradient written
//! directly as (softmax − onehot)·scale, so no probability tensor is kept.
//! `logits` is contiguous `[n, c]`; ignored rows contribute nothing.

use super::{acc, dispatch_float, typed, CpuFloat};
use crate::backend::cpu::CpuStorage;
use crate::backend::op::exp::Exp;
use crate::Result;
use num_traits::{Float, ToPrimitive};
use rayon::prelude::*;

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
                let max = row
                    .iter()
                    .map(|v| v.up())
                    .fold(<T::Acc as Float>::neg_infinity(), Float::max);
                let sum: T::Acc = row.iter().map(|v| (v.up() - max).exp_fast()).sum();
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
    ) -> CpuStorage {
        let x = typed::<T>(logits);
        let mut dx = vec![T::from_f64(0.0); x.len()];
        dx.par_chunks_mut(c)
            .zip(x.par_chunks(c))
            .zip(targets.par_iter().zip(lse))
            .for_each(|((dr, xr), (&t, &lse))| {
                if Some(t) == ignore {
                    return;
                }
                let (lse, scale) = (acc::<T>(lse), acc::<T>(scale));
                for (j, (d, v)) in dr.iter_mut().zip(xr).enumerate() {
                    let p = (v.up() - lse).exp_fast();
                    let onehot = if j == t as usize { acc::<T>(1.0) } else { acc::<T>(0.0) };
                    *d = T::down((p - onehot) * scale);
                }
            });
        CpuStorage::from_vec(dx)
    }
    Ok(dispatch_float!(
        "cross_entropy",
        logits.dtype(),
        run(logits, targets, lse, c, ignore, scale)
    ))
}
