//! The fused AdamW step on the CPU: one pass over each parameter, updating it and its moments in
//! place, in the parameter's precision (as PyTorch), parallel over tensors and over chunks of each.
//! Elements are independent, so the split never changes a bit: runs and resumed runs repeat exactly.

use super::CpuStorage;
use super::PARALLEL_MIN;
use crate::backend::op::{AdamWHyper, AdamWParam};
use crate::Result;
use half::bf16;
use num_traits::Float;
use rayon::prelude::*;

/// Updates every parameter of `params` (all on the CPU, checked by the caller).
pub fn adamw_step(params: &mut [AdamWParam<CpuStorage>], h: &AdamWHyper) -> Result<()> {
    params.par_iter_mut().for_each(|item| {
        match (&mut *item.param, item.grad, &mut *item.m, &mut *item.v) {
            (CpuStorage::F32(p), CpuStorage::F32(g), CpuStorage::F32(m), CpuStorage::F32(v)) => {
                update(p, g, m, v, h, item.decay)
            }
            (CpuStorage::F64(p), CpuStorage::F64(g), CpuStorage::F64(m), CpuStorage::F64(v)) => {
                update(p, g, m, v, h, item.decay)
            }
            _ => unreachable!("dtypes are checked by backend::adamw_step"),
        }
        if let Some(CpuStorage::BF16(copy)) = item.copy.as_deref_mut() {
            match &*item.param {
                CpuStorage::F32(p) => copy
                    .par_iter_mut()
                    .zip(p)
                    .for_each(|(c, &x)| *c = super::float::f32_to_bf16(x)),
                CpuStorage::F64(p) => copy.par_iter_mut().zip(p).for_each(|(c, &x)| *c = bf16::from_f64(x)),
                _ => unreachable!("dtypes are checked by backend::adamw_step"),
            }
        }
    });
    Ok(())
}

/// Σ g² over every gradient, in f64: each tensor's squares summed in a fixed order (see
/// `sq_sum`), then the tensors in order.
pub fn grad_sq_sum(grads: &[&CpuStorage]) -> f64 {
    let per_tensor: Vec<f64> = grads
        .par_iter()
        .map(|g| match g {
            CpuStorage::F64(g) => sq_sum(g),
            CpuStorage::F32(g) => sq_sum(g),
            _ => unreachable!("dtypes are checked by backend::grad_sq_sum"),
        })
        .collect();
    per_tensor.iter().sum()
}

/// Σ x² in f64, by [`super::lane_sum`] (a fixed order, vectorised).
fn sq_sum<T: Copy + Into<f64> + Send + Sync>(g: &[T]) -> f64 {
    super::vectorised(
        #[inline(always)]
        || {
            super::lane_sum(g, |x| {
                let x: f64 = x.into();
                x * x
            })
        },
    )
}

/// The update of one parameter, elementwise, in the parameter's precision.
fn update<T: Float + Send + Sync>(p: &mut [T], g: &[T], m: &mut [T], v: &mut [T], h: &AdamWHyper, decay: bool) {
    let c = |x: f64| T::from(x).expect("f32 and f64 hold every f64 (rounded)");
    let (decay_factor, b1, b2) = (c(h.decay_factor), c(h.b1), c(h.b2));
    let (one_b1, one_b2) = (c(1.0 - h.b1), c(1.0 - h.b2));
    let (step_size, bc2_sqrt, eps) = (c(h.step_size), c(h.bc2_sqrt), c(h.eps));
    // the clipping's g·coefficient, rounded as `mul_scalar` rounds it (one product in T)
    let grad_scale = c(h.grad_scale);
    p.par_chunks_mut(PARALLEL_MIN)
        .zip(g.par_chunks(PARALLEL_MIN))
        .zip(m.par_chunks_mut(PARALLEL_MIN))
        .zip(v.par_chunks_mut(PARALLEL_MIN))
        .for_each(|(((p, g), m), v)| {
            // zipped slices (no bounds checks) and the constants as values, so the loop vectorises
            let k = [
                decay_factor,
                b1,
                one_b1,
                b2,
                one_b2,
                step_size,
                bc2_sqrt,
                eps,
                grad_scale,
            ];
            super::vectorised(
                #[inline(always)]
                move || {
                    let [decay_factor, b1, one_b1, b2, one_b2, step_size, bc2_sqrt, eps, grad_scale] = k;
                    for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
                        let g = g * grad_scale;
                        let decayed = if decay { *p * decay_factor } else { *p };
                        *m = b1 * *m + one_b1 * g;
                        *v = b2 * *v + one_b2 * g * g;
                        *p = decayed - step_size * *m / (v.sqrt() / bc2_sqrt + eps);
                    }
                },
            )
        });
}
