//! `linear_quantized`: `x·Wᵀ` with W a [`QuantizedMatrix`] kept in its ggml block format (the
//! projections of a quantized GGUF model). The CPU kernels are in
//! src/backend/cpu/linear_quantized/: x is rounded to 8 bits per block of 32 on the way in, so
//! the result differs from the dequantize-then-f32 product by at most `max|x_block|/254 · Σ|w|`
//! per block.
//!
//! Backward: none yet. The weights are frozen (they are not tensors), and the input's gradient
//! `dx = g·W` is not implemented: a backward through this op is an error naming it.

pub use crate::backend::op::{QuantFormat, QuantizedMatrix};
use crate::tensor::layout::checked_numel;
use crate::{DType, Error, Result, Tensor};

impl Tensor {
    /// `self · wᵀ`: `self` is `[..., in]` f32 or bf16 (computed in f32), `w` is `[out, in]`;
    /// the result is `[..., out]` in `self`'s dtype. CPU only.
    pub fn linear_quantized(&self, w: &QuantizedMatrix) -> Result<Tensor> {
        const OP: &str = "linear_quantized";
        let (xs, [n_out, n_in]) = (self.shape(), w.shape());
        if xs.last() != Some(&n_in) {
            return Err(Error::shape(
                OP,
                format!(
                    "input {xs:?} and {} weight [{n_out}, {n_in}]: expected input [..., {n_in}]",
                    w.format()
                ),
            ));
        }
        if !matches!(self.dtype(), DType::F32 | DType::BF16) {
            return Err(Error::DType {
                op: OP,
                msg: format!("the input must be f32 or bf16, got {}", self.dtype()),
            });
        }
        let out_shape = [&xs[..xs.len() - 1], &[n_out]].concat();
        checked_numel(OP, &out_shape)?;
        let x = self.detach().to_dtype(DType::F32)?;
        let y = x.storage().linear_quantized(x.layout(), w)?;
        let y = Tensor::from_parts(y, &out_shape).to_dtype(self.dtype())?;
        let format = w.format();
        Ok(y.record(OP, &[self], move |_, _, _| {
            Err(Error::invalid(
                OP,
                format!(
                    "no backward through {format} weights yet (dx = g·W is not implemented); load the model as f32 or bf16 to train through it"
                ),
            ))
        }))
    }
}
