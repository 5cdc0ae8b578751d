//! `linear_quantized`: `x·Wᵀ` with W a [`QuantizedMatrix`] kept in its ggml block format (the
//! projections of a quantized GGUF model). The CPU kernels are in
//! src/backend/cpu/linear_quantized/: x is rounded to 8 bits per block of 32 on the way in, so
//! the result differs from the dequantize-then-f32 product by at most `max|x_block|/254 · Σ|w|`
//! per block.
//!
//! While autograd records (a training forward, QLoRA-style, or any forward outside `no_grad`), W
//! is instead decoded to f32 a block of rows at a time and multiplied by the f32 GEMM without
//! rounding x, so that the loss and the adapters' gradients are those of the dequantized f32
//! model. Under `no_grad` (generation: `Llama::forward_cached`'s prefill and decode) the integer
//! kernels run, x rounded as llama.cpp rounds it.
//!
//! Backward: the weights are frozen (they are not tensors: LoRA adapters train on top of them,
//! QLoRA-style); the input's gradient is `dx = g·W`, W decoded to f32 in blocks of rows as in the
//! forward's GEMM path.
//!
//! On CUDA and Emu (W moved there by [`QuantizedMatrix::to_device`]) the kernels of
//! kernels/linear_quantized.cu take the same two paths at the same row count, x rounded to the same
//! bytes: `__dp4a` dot products of 16-row groups for decode, W decoded to f32 for the matmul kernel
//! from 16 rows on, for the gradient, and for Q4_K/Q6_K (Emu-verified, not yet run on a GPU).

pub use crate::backend::op::{PerMatrix, QuantFormat, QuantizedMatrix};
use crate::tensor::layout::{checked_numel, Dims};
use crate::{DType, Error, Result, Tensor};

impl Tensor {
    /// `self · wᵀ`: `self` is `[..., in]` f32 or bf16 (computed in f32), `w` is `[out, in]`;
    /// the result is `[..., out]` in `self`'s dtype, on `w`'s device ([`QuantizedMatrix::to_device`];
    /// an input elsewhere is an error).
    pub fn linear_quantized(&self, w: &QuantizedMatrix) -> Result<Tensor> {
        let out_shape = self.check_linear_quantized(w)?;
        let x = self.f32_input()?;
        let y = if crate::autograd::is_grad_enabled() {
            x.storage().linear_dequantized(x.layout(), w)?
        } else {
            x.storage().linear_quantized(x.layout(), w)?
        };
        let y = Tensor::from_parts(y, &out_shape).to_dtype(self.dtype())?;
        let (w, dtype) = (w.clone(), self.dtype());
        Ok(y.record("linear_quantized", &[self], move |g, _, _| {
            // dx = g·W: g is [..., out], dx [..., in], in the input's dtype
            let g = g.to_dtype(DType::F32)?;
            let dx = g.storage().linear_quantized_input_grad(g.layout(), &w)?;
            let mut dx_shape = g.shape().to_vec();
            *dx_shape.last_mut().expect("g has the output's rank, at least 1") = w.shape()[1];
            Ok(vec![Some(Tensor::from_parts(dx, &dx_shape).to_dtype(dtype)?)])
        }))
    }

    /// `[self · wᵀ for w in ws]`: the products of one input with several matrices of the same
    /// columns (a Llama layer's q, k and v projections), each equal to
    /// [`Tensor::linear_quantized`]'s. Under `no_grad` on the CPU they run in one parallel region
    /// with the input rounded to 8 bits once (decode); while autograd records, or on CUDA, one
    /// product after the other.
    pub fn linear_quantized_many(&self, ws: &[&QuantizedMatrix]) -> Result<PerMatrix<Tensor>> {
        if crate::autograd::is_grad_enabled() || ws.len() < 2 {
            return ws.iter().map(|w| self.linear_quantized(w)).collect();
        }
        let shapes = ws
            .iter()
            .map(|w| self.check_linear_quantized(w))
            .collect::<Result<PerMatrix<_>>>()?;
        let x = self.f32_input()?;
        let ys = x.storage().linear_quantized_many(x.layout(), ws)?;
        ys.into_iter()
            .zip(&shapes)
            .map(|(y, shape)| Tensor::from_parts(y, shape).to_dtype(self.dtype()))
            .collect()
    }

    /// `self` in f32 and off the graph (this op records its own backward): `self` itself when it
    /// is f32 already, no copy and no new handle.
    fn f32_input(&self) -> Result<Tensor> {
        match self.dtype() {
            DType::F32 if !self.tracks_grad() => Ok(self.clone()),
            _ => self.detach().to_dtype(DType::F32),
        }
    }

    /// The output shape `[..., out]` of `self · wᵀ`, or an error if `self` is not `[..., in]`
    /// f32 or bf16.
    fn check_linear_quantized(&self, w: &QuantizedMatrix) -> Result<Dims> {
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
        let mut out_shape = Dims::from(&xs[..xs.len() - 1]);
        out_shape.push(n_out);
        checked_numel(OP, &out_shape)?;
        Ok(out_shape)
    }
}
