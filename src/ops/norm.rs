//! layer_norm over the last dim: y = (x − mean)/√(var + eps) · weight + bias, with the
//! biased variance (as PyTorch). Fused forward and backward (see backend/cpu/norm.rs).

use crate::backend::cpu;
use crate::tensor::storage::Storage;
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
        let x = self.contiguous()?;
        let w = weight.contiguous()?;
        let b = bias.map(|b| b.contiguous()).transpose()?;
        let (y, stats) = {
            let (xs, ws, bs) = (x.storage(), w.storage(), b.as_ref().map(|b| b.storage()));
            match (&*xs, &*ws, bs.as_deref()) {
                (Storage::Cpu(xs), Storage::Cpu(ws), bs) => {
                    let bs = bs.map(|Storage::Cpu(s)| s);
                    let (y, stats) = cpu::norm::layer_norm_forward(xs, ws, bs, c, eps as f64)?;
                    (Tensor::from_cpu(y, self.shape()), stats)
                }
            }
        };
        let mut inputs = vec![&x, &w];
        inputs.extend(b.as_ref());
        Ok(y.record("layer_norm", &inputs, move |g, inputs, _| {
            let (x, w, g) = (&inputs[0], &inputs[1], g.contiguous()?);
            let (dx, dw, db) = match (&*x.storage(), &*w.storage(), &*g.storage()) {
                (Storage::Cpu(xs), Storage::Cpu(ws), Storage::Cpu(gs)) => {
                    let (dx, dw, db) = cpu::norm::layer_norm_backward(xs, ws, gs, &stats, c)?;
                    (
                        Tensor::from_cpu(dx, x.shape()),
                        Tensor::from_cpu(dw, &[c]),
                        Tensor::from_cpu(db, &[c]),
                    )
                }
            };
            let mut grads = vec![Some(dx), Some(dw)];
            if inputs.len() == 3 {
                grads.push(Some(db));
            }
            Ok(grads)
        }))
    }
}
