//! rms_norm over the last dim, Llama's normalisation: y = x / √(mean(x²) + eps) · weight (no mean
//! subtracted, no bias; PyTorch's `F.rms_norm`, Hugging Face's `LlamaRMSNorm`). Fused forward and
//! backward; the forward saves 1/√(mean(x²) + eps) per row for the backward, as layer_norm saves
//! its statistics (see backend/cpu/rms_norm.rs and kernels/rms_norm.cu).

use crate::{Error, Result, Tensor};

impl Tensor {
    /// Normalises the last dim of `self` (`[..., C]`) by its root mean square and scales it by
    /// `weight` `[C]`.
    pub fn rms_norm(&self, weight: &Tensor, eps: f32) -> Result<Tensor> {
        const OP: &str = "rms_norm";
        let c = *self
            .shape()
            .last()
            .ok_or_else(|| Error::shape(OP, "the input must have at least one dimension, got a scalar"))?;
        self.same_device(weight, OP)?;
        if weight.shape() != [c] {
            return Err(Error::shape(
                OP,
                format!(
                    "input {:?} needs a weight of shape [{c}], got {:?}",
                    self.shape(),
                    weight.shape()
                ),
            ));
        }
        if weight.dtype() != self.dtype() {
            return Err(Error::dtype_mismatch(OP, self.dtype(), weight.dtype()));
        }
        if !(eps >= 0.0 && eps.is_finite()) {
            return Err(Error::invalid(
                OP,
                format!("eps must be finite and non-negative, got {eps}"),
            ));
        }
        let (x, w) = (self.dense()?, weight.dense()?);
        let (y, rstd) = x.storage().rms_norm_forward(&w.storage(), c, eps as f64)?;
        let y = Tensor::from_parts(y, self.shape());
        Ok(y.record(OP, &[&x, &w], move |g, inputs, _| {
            let (x, w, g) = (&inputs[0], &inputs[1], g.dense()?);
            let (dx, dw) = x.storage().rms_norm_backward(&w.storage(), &g.storage(), &rstd, c)?;
            Ok(vec![
                Some(Tensor::from_parts(dx, x.shape())),
                Some(Tensor::from_parts(dw, &[c])),
            ])
        }))
    }
}
