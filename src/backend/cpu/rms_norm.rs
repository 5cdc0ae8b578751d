//! RMSNorm over the last dim (Llama's normalisation), forward and backward, one row at a time in
//! the arithmetic type (f32 for f32/bf16/f16, f64 for f64). x is contiguous `[rows, c]`.
//!
//!   forward:  rstd = 1/√(mean(x²) + eps),  y = x·rstd·w
//!   backward: x̂ = x·rstd,  dx = rstd·(dy·w − x̂·mean(dy·w·x̂)),  dw = Σ_rows dy·x̂

use super::{acc, alloc, dispatch_float, lane_fold, lane_sum, typed, CpuFloat};
use crate::backend::cpu::CpuStorage;
use crate::Result;
use num_traits::{Float, ToPrimitive};
use rayon::prelude::*;

/// y = x·rstd·w; returns y and the per-row rstd (f64) for the backward.
pub fn rms_norm_forward(x: &CpuStorage, w: &CpuStorage, c: usize, eps: f64) -> Result<(CpuStorage, Vec<f64>)> {
    fn run<T: CpuFloat>(x: &CpuStorage, w: &CpuStorage, c: usize, eps: f64) -> Result<(CpuStorage, Vec<f64>)> {
        let (x, w) = (typed::<T>(x), typed::<T>(w));
        let rows = x.len().checked_div(c).unwrap_or(0);
        let mut y = alloc::filled("rms_norm", x.len(), T::from_f64(0.0))?;
        let mut rstd = alloc::filled("rms_norm", rows, 0.0)?;
        if c > 0 {
            x.par_chunks(c)
                .zip(y.par_chunks_mut(c))
                .zip(rstd.par_iter_mut())
                .for_each(|((xr, yr), rs)| {
                    super::vectorised(
                        #[inline(always)]
                        || {
                            let (xr, w) = (&xr[..c], &w[..c]);
                            let mean_sq = lane_sum(xr, |v| v.up() * v.up()) / acc::<T>(c as f64);
                            let r = (mean_sq + acc::<T>(eps)).sqrt().recip();
                            for ((xv, yv), wv) in xr.iter().zip(yr.iter_mut()).zip(w) {
                                *yv = T::down(xv.up() * r * wv.up());
                            }
                            *rs = r.to_f64().unwrap_or(f64::NAN);
                        },
                    )
                });
        }
        Ok((CpuStorage::from_vec(y), rstd))
    }
    dispatch_float!("rms_norm", x.dtype(), run(x, w, c, eps))
}

/// Given dy and the forward's rstd, returns (dx, dw). dw is summed over rows in a fixed order in
/// f64, so it is deterministic.
pub fn rms_norm_backward(
    x: &CpuStorage,
    w: &CpuStorage,
    dy: &CpuStorage,
    rstd: &[f64],
    c: usize,
) -> Result<(CpuStorage, CpuStorage)> {
    fn run<T: CpuFloat>(
        x: &CpuStorage,
        w: &CpuStorage,
        dy: &CpuStorage,
        rstd: &[f64],
        c: usize,
    ) -> (CpuStorage, CpuStorage) {
        let (x, w, dy) = (typed::<T>(x), typed::<T>(w), typed::<T>(dy));
        let mut dx = vec![T::from_f64(0.0); x.len()];
        let mut dw = vec![0f64; c];
        if c > 0 {
            let n = acc::<T>(c as f64);
            x.par_chunks(c)
                .zip(dy.par_chunks(c))
                .zip(dx.par_chunks_mut(c))
                .zip(rstd.par_iter())
                .for_each(|(((xr, dyr), dxr), &r)| {
                    super::vectorised(
                        #[inline(always)]
                        || {
                            let r = acc::<T>(r);
                            let (dyr, xr, w) = (&dyr[..c], &xr[..c], &w[..c]);
                            let dyw_xhat = |i: usize| dyr[i].up() * w[i].up() * xr[i].up() * r;
                            let mean_dyw_xhat = lane_fold(c, acc::<T>(0.0), dyw_xhat, |p, q| p + q) / n;
                            for (((xv, g), wv), d) in xr.iter().zip(dyr).zip(w).zip(dxr.iter_mut()) {
                                let xhat = xv.up() * r;
                                *d = T::down(r * (g.up() * wv.up() - xhat * mean_dyw_xhat));
                            }
                        },
                    )
                });
            for ((xr, dyr), &r) in x.chunks(c).zip(dy.chunks(c)).zip(rstd) {
                for i in 0..c {
                    dw[i] += dyr[i].to_f64() * xr[i].to_f64() * r;
                }
            }
        }
        let dw = CpuStorage::from_vec(dw.into_iter().map(T::from_f64).collect::<Vec<T>>());
        (CpuStorage::from_vec(dx), dw)
    }
    Ok(dispatch_float!("rms_norm", x.dtype(), run(x, w, dy, rstd, c)))
}
