//! layer_norm over the last dim: y = (x − mean)/√(var + eps) · weight + bias, with the
//! biased variance (as PyTorch). Fused forward and backward (see backend/cpu/layer_norm.rs).
//!
//! Backward, with x̂ = (x − mean)·rstd and rstd = 1/√(var + eps), per row (derived in
//! docs/layer_norm.md):  dx = rstd·(g ⊙ w − mean(g ⊙ w) − x̂ ⊙ mean(g ⊙ w ⊙ x̂)),
//! dw = Σ_rows g ⊙ x̂,  db = Σ_rows g.

use crate::{Error, Result, Tensor};

impl Tensor {
    /// Normalises the last dim of `self` (`[..., C]`) with `weight` `[C]` and `bias` `[C]`.
    pub fn layer_norm(&self, weight: &Tensor, bias: &Tensor, eps: f32) -> Result<Tensor> {
        self.layer_norm_impl(weight, Some(bias), eps)
    }

    /// LayerNorm without a bias (nanoGPT's `bias=False` models).
    pub fn layer_norm_no_bias(&self, weight: &Tensor, eps: f32) -> Result<Tensor> {
        self.layer_norm_impl(weight, None, eps)
    }

    fn layer_norm_impl(&self, weight: &Tensor, bias: Option<&Tensor>, eps: f32) -> Result<Tensor> {
        let c = *self
            .shape()
            .last()
            .ok_or_else(|| Error::shape("layer_norm", "the input must have at least one dimension, got a scalar"))?;
        for (name, p) in [("weight", Some(weight)), ("bias", bias)] {
            let Some(p) = p else { continue };
            self.same_device(p, "layer_norm")?;
            if p.shape() != [c] {
                return Err(Error::shape(
                    "layer_norm",
                    format!(
                        "input {:?} needs a {name} of shape [{c}], got {:?}",
                        self.shape(),
                        p.shape()
                    ),
                ));
            }
            if p.dtype() != self.dtype() {
                return Err(Error::dtype_mismatch("layer_norm", self.dtype(), p.dtype()));
            }
        }
        if !(eps >= 0.0 && eps.is_finite()) {
            return Err(Error::invalid(
                "layer_norm",
                format!("eps must be finite and non-negative, got {eps}"),
            ));
        }
        let x = self.dense()?;
        let w = weight.dense()?;
        let b = bias.map(|b| b.dense()).transpose()?;
        let (y, stats) = {
            let bias_storage = b.as_ref().map(|b| b.storage());
            let (y, stats) = x
                .storage()
                .layer_norm_forward(&w.storage(), bias_storage.as_deref(), c, eps as f64)?;
            (Tensor::from_parts(y, self.shape()), stats)
        };
        let mut inputs = vec![&x, &w];
        inputs.extend(b.as_ref());
        Ok(y.record("layer_norm", &inputs, move |g, inputs, _| {
            let (x, w, g) = (&inputs[0], &inputs[1], g.dense()?);
            let (dx, dw, db) = x.storage().layer_norm_backward(&w.storage(), &g.storage(), &stats, c)?;
            let (dx, dw, db) = (
                Tensor::from_parts(dx, x.shape()),
                Tensor::from_parts(dw, &[c]),
                Tensor::from_parts(db, &[c]),
            );
            let mut grads = vec![Some(dx), Some(dw)];
            if inputs.len() == 3 {
                grads.push(Some(db));
            }
            Ok(grads)
        }))
    }
}
