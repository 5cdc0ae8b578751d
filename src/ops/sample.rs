//! sample: draws one token id from each row of logits, on the device that holds them (the sampler
//! of generation). On a GPU (or Emu) kernels/sample.cu does the whole draw, so a generated token
//! costs a copy of 4 bytes back instead of the vocabulary's logits; the CPU backend
//! (backend/cpu/sample.rs) gives the same id for the same logits and uniform number, bit for bit.
//! No gradient (the result is an index).

use crate::backend::{SampleParams, SampleScratch};
use crate::{DType, Error, Result, Tensor};

impl Tensor {
    /// One token id per row of logits `[..., vocab]` (any float dtype; the last dim is the
    /// vocabulary), row i drawn with `uniforms[i]` (uniform in [0, 1), e.g. [`crate::Rng::uniform`];
    /// ignored when greedy): with temperature 0 the first largest logit, else with probability
    /// ∝ exp((l − max)/T) among the tokens top-k and then top-p keep (the rules:
    /// [`SampleParams`]). The ids are returned on the host.
    ///
    /// Errors: invalid `params`, a tensor that is not float or has no dims, an empty vocabulary, a
    /// number of uniforms other than the number of rows or one outside [0, 1), a row with a NaN
    /// logit, a row whose logits are all −∞.
    pub fn sample(&self, params: &SampleParams, uniforms: &[f64]) -> Result<Vec<u32>> {
        let vocab = self.check_sample(params, uniforms)?;
        let _untracked = crate::no_grad();
        let x = self.f32_logits()?;
        let ids = x.storage().sample(vocab, params, uniforms);
        ids
    }

    /// As [`Tensor::sample`] for logits of one row (`[vocab]`, `[1, vocab]`, ...) and one uniform
    /// number: the same id, with the CPU sampler's buffers kept in `scratch` between calls (a
    /// generation loop's), so that a draw from f32 logits on the CPU allocates nothing once they
    /// have grown to the vocabulary. Errors as [`Tensor::sample`]'s.
    pub fn sample_with(&self, params: &SampleParams, uniform: f64, scratch: &mut SampleScratch) -> Result<u32> {
        let vocab = self.check_sample(params, &[uniform])?;
        let _untracked = crate::no_grad();
        let x = self.f32_logits()?;
        let id = x.storage().sample_one(vocab, params, uniform, scratch);
        id
    }

    /// The logits as dense f32 (themselves when they are).
    fn f32_logits(&self) -> Result<Tensor> {
        if self.dtype() == DType::F32 {
            self.dense()
        } else {
            self.to_dtype(DType::F32)?.dense()
        }
    }

    /// The vocabulary of logits `self` to sample one row per uniform number from, after checking
    /// `params`, the dtype and shape, and the uniform numbers.
    fn check_sample(&self, params: &SampleParams, uniforms: &[f64]) -> Result<usize> {
        params.validate()?;
        if !self.dtype().is_float() {
            return Err(Error::not_float("sample", self.dtype()));
        }
        let vocab = match self.shape().last() {
            Some(&v) if v > 0 => v,
            _ => {
                return Err(Error::shape(
                    "sample",
                    format!("logits of shape {:?} have no vocabulary (last) dimension", self.shape()),
                ))
            }
        };
        let rows = self.numel() / vocab;
        if uniforms.len() != rows {
            return Err(Error::invalid(
                "sample",
                format!(
                    "logits of shape {:?} have {rows} rows but {} uniform numbers were given",
                    self.shape(),
                    uniforms.len()
                ),
            ));
        }
        if let Some(u) = uniforms.iter().find(|u| !(0.0..1.0).contains(*u)) {
            return Err(Error::invalid(
                "sample",
                format!("uniform number {u} is outside [0, 1)"),
            ));
        }
        Ok(vocab)
    }
}
