//! Optimizers and their helpers: [`AdamW`] (with an explicit [`WeightDecay`] policy), [`Sgd`],
//! gradient clipping by global norm, and the warmup + cosine learning-rate schedule.
//!
//! Optimizers hold the model's parameter tensors (clones share storage and id) and update
//! them in place with [`Tensor::assign`], so the model sees every step.

mod adamw;
mod sgd;

pub use adamw::{AdamW, AdamWConfig, DecayPredicate, WeightDecay};
pub use sgd::Sgd;

use crate::{Error, Gradients, Result, Tensor};

/// A parameter as the optimizer helpers take it: a plain [`Tensor`] or a named one.
impl AsRef<Tensor> for Tensor {
    fn as_ref(&self) -> &Tensor {
        self
    }
}

/// A named parameter, as `named_params()` lists them.
impl AsRef<Tensor> for (String, Tensor) {
    fn as_ref(&self) -> &Tensor {
        &self.1
    }
}

/// Scales the gradients of `params` so that their global L2 norm is at most `max_norm`, as
/// `torch.nn.utils.clip_grad_norm_` (coefficient `max_norm / (norm + 1e-6)`, applied only
/// when below 1). `params` are plain tensors (`&[Tensor]`) or named ones (`&[(String, Tensor)]`,
/// as `named_params()` returns); those without a gradient in `grads` are skipped. Returns the
/// norm before clipping, which may be NaN or infinite: callers should check it.
pub fn clip_grad_norm<P: AsRef<Tensor>>(params: &[P], grads: &mut Gradients, max_norm: f64) -> Result<f64> {
    clip_grad_norm_sharded(params, grads, max_norm, Ok)
}

/// [`clip_grad_norm`] when `params` are one shard of the parameters and the other shards are
/// elsewhere (ZeRO-sharded data-parallel training): `total` turns this shard's sum of squared
/// gradient values into the sum over every shard (an all-reduce), from which the global norm
/// and the clipping coefficient follow. Every shard then scales its own gradients.
pub fn clip_grad_norm_sharded<P: AsRef<Tensor>>(
    params: &[P],
    grads: &mut Gradients,
    max_norm: f64,
    total: impl FnOnce(f64) -> Result<f64>,
) -> Result<f64> {
    let (norm, coef) = norm_and_coefficient(params, grads, max_norm, total)?;
    if coef < 1.0 {
        let _no_grad = crate::no_grad();
        for p in params.iter().map(AsRef::as_ref) {
            if let Some(g) = grads.get(p) {
                let scaled = g.mul_scalar(coef)?;
                grads.insert(p, scaled);
            }
        }
    }
    Ok(norm)
}

/// What [`clip_grad_norm`] computes, without scaling the gradients: the global norm of the
/// gradients of `params` and the factor they are to be multiplied by, `max_norm / (norm + 1e-6)`
/// when that is below 1, else exactly 1. Give the factor to [`AdamW::step_scaled`], whose
/// fused update applies it on the CPU: one pass over the gradients less than clipping first
/// (`clip_grad_norm` then [`AdamW::step`] writes every gradient once more), the same values.
pub fn clip_coefficient<P: AsRef<Tensor>>(params: &[P], grads: &Gradients, max_norm: f64) -> Result<(f64, f64)> {
    let (norm, coef) = norm_and_coefficient(params, grads, max_norm, Ok)?;
    Ok((norm, if coef < 1.0 { coef } else { 1.0 }))
}

/// The global gradient norm (over every shard, through `total`) and the raw clipping coefficient.
fn norm_and_coefficient<P: AsRef<Tensor>>(
    params: &[P],
    grads: &Gradients,
    max_norm: f64,
    total: impl FnOnce(f64) -> Result<f64>,
) -> Result<(f64, f64)> {
    if max_norm.is_nan() || max_norm <= 0.0 {
        return Err(Error::invalid(
            "clip_grad_norm",
            format!("max_norm must be positive, got {max_norm}"),
        ));
    }
    let _no_grad = crate::no_grad();
    // f64 accumulation of the squares (deterministic, one launch on CUDA/Emu): the norm of many
    // small terms stays exact
    let present: Vec<Tensor> = params
        .iter()
        .filter_map(|p| grads.get(p.as_ref()))
        .map(|g| {
            let dtype = if g.dtype() == crate::DType::F64 {
                g.dtype()
            } else {
                crate::DType::F32
            };
            g.to_dtype(dtype)?.dense()
        })
        .collect::<Result<_>>()?;
    let storages: Vec<_> = present.iter().map(|g| g.storage()).collect();
    let refs: Vec<&crate::backend::Storage> = storages.iter().map(|s| &**s).collect();
    let sum_sq = total(crate::backend::grad_sq_sum(&refs)?)?;
    let norm = sum_sq.sqrt();
    Ok((norm, max_norm / (norm + 1e-6)))
}

/// Linear warmup, then cosine decay to `min_lr` at `max_steps`, then constant: nanoGPT's
/// `get_lr`.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CosineSchedule {
    /// Steps of linear warmup.
    pub warmup: usize,
    /// The step at which the decay reaches `min_lr` (nanoGPT's `lr_decay_iters`).
    pub max_steps: usize,
    /// The learning rate at the end of the warmup.
    pub max_lr: f64,
    /// The learning rate from `max_steps` on.
    pub min_lr: f64,
}

impl CosineSchedule {
    /// The learning rate at step `step` (counting from 0).
    pub fn lr(&self, step: usize) -> f64 {
        if step < self.warmup {
            // in f64: `warmup + 1` overflows for --warmup usize::MAX
            return self.max_lr * (step as f64 + 1.0) / (self.warmup as f64 + 1.0);
        }
        if step > self.max_steps || self.max_steps <= self.warmup {
            return self.min_lr;
        }
        let ratio = (step - self.warmup) as f64 / (self.max_steps - self.warmup) as f64;
        let coeff = 0.5 * (1.0 + (std::f64::consts::PI * ratio).cos());
        self.min_lr + coeff * (self.max_lr - self.min_lr)
    }
}

/// Refuses a parameter that is not a leaf requiring a gradient: backward never gives it one, so
/// `op` would silently never update it.
pub(crate) fn check_trainable(op: &'static str, name: &str, param: &Tensor) -> Result<()> {
    if param.is_leaf_requiring_grad() {
        return Ok(());
    }
    Err(Error::invalid(
        op,
        format!(
            "parameter {name} {:?} does not require a gradient, so backward never gives it one and {op} \
             would never update it: create it with .requires_grad() (as kiln::nn's layers do) or leave it out",
            param.shape()
        ),
    ))
}

/// A parameter's gradient in `grads`, if any, checked to have the parameter's shape.
pub(crate) fn checked_grad<'a>(
    op: &'static str,
    name: &str,
    p: &Tensor,
    grads: &'a Gradients,
) -> Result<Option<&'a Tensor>> {
    let Some(g) = grads.get(p) else { return Ok(None) };
    if g.shape() != p.shape() {
        return Err(Error::shape(
            op,
            format!(
                "gradient of {name} has shape {:?}, the parameter {:?}",
                g.shape(),
                p.shape()
            ),
        ));
    }
    Ok(Some(g))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosine_schedule_matches_nanogpt() {
        let s = CosineSchedule {
            warmup: 100,
            max_steps: 2000,
            max_lr: 1e-3,
            min_lr: 1e-4,
        };
        assert!((s.lr(0) - 1e-3 / 101.0).abs() < 1e-15);
        assert!((s.lr(99) - 1e-3 * 100.0 / 101.0).abs() < 1e-15);
        assert!((s.lr(100) - 1e-3).abs() < 1e-15);
        assert!((s.lr(1050) - 5.5e-4).abs() < 1e-12);
        assert!((s.lr(2000) - 1e-4).abs() < 1e-15);
        assert_eq!(s.lr(5000), 1e-4);
    }

    #[test]
    fn the_longest_warmup_stays_finite() {
        let s = CosineSchedule {
            warmup: usize::MAX,
            max_steps: 10,
            max_lr: 1e-3,
            min_lr: 1e-4,
        };
        // step + 1 over 2^64: about 1e-3 / 2^64 at the first step, rising linearly
        assert!((s.lr(0) - 1e-3 / 2f64.powi(64)).abs() < 1e-30, "{}", s.lr(0));
        assert!((s.lr(1 << 40) - 1e-3 * 2f64.powi(40) / 2f64.powi(64)).abs() < 1e-20);
    }
}
