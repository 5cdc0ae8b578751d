//! LayerNorm over the last dim, forward and backward, one row at a time in the arithmetic
//! type (f32 for f32/bf16/f16, f64 for f64). x is contiguous `[rows, c]`.

use super::{acc, alloc, dispatch_float, lane_fold, lane_sum, typed, CpuFloat};
use crate::backend::cpu::CpuStorage;
use crate::Result;
use num_traits::{Float, ToPrimitive};
use rayon::prelude::*;

/// y = (x − mean)·rstd·w + b; returns y and the per-row mean and rstd (f64) for the backward.
pub fn layer_norm_forward(
    x: &CpuStorage,
    w: &CpuStorage,
    b: Option<&CpuStorage>,
    c: usize,
    eps: f64,
) -> Result<(CpuStorage, Vec<f64>, Vec<f64>)> {
    fn run<T: CpuFloat>(
        x: &CpuStorage,
        w: &CpuStorage,
        b: Option<&CpuStorage>,
        c: usize,
        eps: f64,
    ) -> Result<(CpuStorage, Vec<f64>, Vec<f64>)> {
        let (x, w, b) = (typed::<T>(x), typed::<T>(w), b.map(typed::<T>));
        let rows = x.len().checked_div(c).unwrap_or(0);
        // every row of y is written below, so it starts uninitialised
        let mut y = alloc::with_capacity("layer_norm", x.len())?;
        let mut stats = vec![(0.0, 0.0); rows];
        if c > 0 {
            x.par_chunks(c)
                .zip(y.spare_capacity_mut()[..x.len()].par_chunks_mut(c))
                .zip(stats.par_iter_mut())
                .for_each(|((xr, yr), st)| {
                    super::vectorised(
                        #[inline(always)]
                        || {
                            let (xr, w) = (&xr[..c], &w[..c]);
                            let n = acc::<T>(c as f64);
                            let mean = lane_sum(xr, |v| v.up()) / n;
                            // corrected two-pass (as the kernel): with d = x − mean, shift = Σd/n is
                            // the rounding error of the mean itself (large on rows with a large
                            // mean, where the f32 mean cannot hold it): y is centred as d − shift,
                            // and (Σd)²/n is taken out of Σd²
                            // (two sums over the row, each vectorised: one fold of (d, d²)
                            // pairs stored its pairs one by one)
                            let sum_d = lane_sum(xr, |v| v.up() - mean);
                            let sum_d2 = lane_sum(xr, |v| {
                                let d = v.up() - mean;
                                d * d
                            });
                            let var = ((sum_d2 - sum_d * sum_d / n) / n).max(acc::<T>(0.0));
                            let shift = sum_d / n;
                            let rstd = (var + acc::<T>(eps)).sqrt().recip();
                            match b {
                                Some(b) => {
                                    for (((xv, yv), wv), bv) in xr.iter().zip(yr.iter_mut()).zip(w).zip(b) {
                                        yv.write(T::down(((xv.up() - mean) - shift) * rstd * wv.up() + bv.up()));
                                    }
                                }
                                None => {
                                    for ((xv, yv), wv) in xr.iter().zip(yr.iter_mut()).zip(w) {
                                        yv.write(T::down(((xv.up() - mean) - shift) * rstd * wv.up()));
                                    }
                                }
                            }
                            let to_f64 = |v: T::Acc| v.to_f64().unwrap_or(f64::NAN);
                            *st = (to_f64(mean) + to_f64(shift), to_f64(rstd));
                        },
                    )
                });
        }
        // SAFETY: the capacity is x.len() = rows·c, and each of the rows wrote all c of its
        // elements of y (the chunks of c tile 0..x.len() as x's do; x is empty when c is 0).
        unsafe { y.set_len(x.len()) };
        let (mean, rstd) = stats.into_iter().unzip();
        Ok((CpuStorage::from_vec(y), mean, rstd))
    }
    dispatch_float!("layer_norm", x.dtype(), run(x, w, b, c, eps))
}

/// Columns of dw and db per parallel task of the backward's sums over the rows.
const COLUMNS: usize = 32;

/// Given dy, returns (dx, dw, db). With x̂ = (x − mean)·rstd:
///   dx = rstd · (dy·w − mean(dy·w) − x̂ · mean(dy·w·x̂)),  dw = Σ_rows dy·x̂,  db = Σ_rows dy.
/// dw and db are summed over rows in a fixed order in f64, so they are deterministic.
pub fn layer_norm_backward(
    x: &CpuStorage,
    w: &CpuStorage,
    dy: &CpuStorage,
    mean: &[f64],
    rstd: &[f64],
    c: usize,
) -> Result<(CpuStorage, CpuStorage, CpuStorage)> {
    fn run<T: CpuFloat>(
        x: &CpuStorage,
        w: &CpuStorage,
        dy: &CpuStorage,
        mean: &[f64],
        rstd: &[f64],
        c: usize,
    ) -> Result<(CpuStorage, CpuStorage, CpuStorage)>
    where
        T::Acc: Into<f64>,
    {
        let (x, w, dy) = (typed::<T>(x), typed::<T>(w), typed::<T>(dy));
        // every row of dx is written below, so it starts uninitialised
        let mut dx = alloc::with_capacity("layer_norm", x.len())?;
        let (mut dw, mut db) = (vec![0f64; c], vec![0f64; c]);
        if c > 0 {
            let n = acc::<T>(c as f64);
            let rows = mean.par_iter().zip(rstd);
            x.par_chunks(c)
                .zip(dy.par_chunks(c))
                .zip(dx.spare_capacity_mut()[..x.len()].par_chunks_mut(c))
                .zip(rows)
                .for_each(|(((xr, dyr), dxr), (&m, &r))| {
                    super::vectorised(
                        #[inline(always)]
                        || {
                            let (m, r) = (acc::<T>(m), acc::<T>(r));
                            let (dyr, xr, w) = (&dyr[..c], &xr[..c], &w[..c]);
                            let add = |p, q| p + q;
                            let sum_dyw = lane_fold(c, acc::<T>(0.0), |i| dyr[i].up() * w[i].up(), add);
                            let dyw_xhat = |i: usize| dyr[i].up() * w[i].up() * (xr[i].up() - m) * r;
                            let sum_dyw_xhat = lane_fold(c, acc::<T>(0.0), dyw_xhat, add);
                            let (mean_dyw, mean_dyw_xhat) = (sum_dyw / n, sum_dyw_xhat / n);
                            for (((xv, g), wv), d) in xr.iter().zip(dyr).zip(w).zip(dxr.iter_mut()) {
                                let xhat = (xv.up() - m) * r;
                                d.write(T::down(r * (g.up() * wv.up() - mean_dyw - xhat * mean_dyw_xhat)));
                            }
                        },
                    )
                });
            // dw and db: every column summed over the rows in order, blocks of columns in parallel
            // (the split changes no column's order, so neither the bits), vectorised
            #[inline(always)]
            fn columns<T: CpuFloat>(
                x: &[T],
                dy: &[T],
                stats: (&[f64], &[f64]),
                c: usize,
                c0: usize,
                dw: &mut [f64],
                db: &mut [f64],
            ) where
                T::Acc: Into<f64>,
            {
                for ((xr, dyr), (&m, &r)) in x.chunks(c).zip(dy.chunks(c)).zip(stats.0.iter().zip(stats.1)) {
                    let (xr, dyr) = (&xr[c0..c0 + dw.len()], &dyr[c0..c0 + dw.len()]);
                    for (((w, b), xv), g) in dw.iter_mut().zip(db.iter_mut()).zip(xr).zip(dyr) {
                        // widened through the arithmetic type (exact, and a vector op for bf16,
                        // where `to_f64` branches per element)
                        let g: f64 = g.up().into();
                        *w += g * (Into::<f64>::into(xv.up()) - m) * r;
                        *b += g;
                    }
                }
            }
            if x.len() >= super::PARALLEL_MIN {
                dw.par_chunks_mut(COLUMNS)
                    .zip(db.par_chunks_mut(COLUMNS))
                    .enumerate()
                    .for_each(|(j, (dw, db))| {
                        super::vectorised(
                            #[inline(always)]
                            || columns(x, dy, (mean, rstd), c, j * COLUMNS, dw, db),
                        )
                    });
            } else {
                super::vectorised(
                    #[inline(always)]
                    || columns(x, dy, (mean, rstd), c, 0, &mut dw, &mut db),
                );
            }
        }
        let narrow = |v: Vec<f64>| CpuStorage::from_vec(v.into_iter().map(T::from_f64).collect::<Vec<T>>());
        // SAFETY: the capacity is x.len(), tiled by the rows of c elements, each written in full
        // above (x is empty when c is 0)
        unsafe { dx.set_len(x.len()) };
        Ok((CpuStorage::from_vec(dx), narrow(dw), narrow(db)))
    }
    dispatch_float!("layer_norm", x.dtype(), run(x, w, dy, mean, rstd, c))
}
