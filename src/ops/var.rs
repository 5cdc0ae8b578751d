//! Variance and standard deviation over dims, as PyTorch's `var` and `std` with `correction`.
//!
//! A composition: var = Σ(x − mean)² / (n − correction), with the mean over the same dims, so the
//! backward is that of sub, powf, sum and mean: 2(x − mean)·g / (n − correction) (the mean's own
//! term sums to zero). std = √var, whose gradient at var = 0 is NaN, as PyTorch's.

use crate::{Error, Result, Tensor};

impl Tensor {
    /// The variance over `dims`: Σ(x − mean)² / (n − correction), n the number of elements
    /// reduced into each result. `correction` 1 is the unbiased estimate (PyTorch's default,
    /// `unbiased=True`), 0 the population variance (`unbiased=False`). An n not above
    /// `correction` is an error (PyTorch returns NaN or inf).
    pub fn var(&self, dims: &[isize], correction: usize, keepdim: bool) -> Result<Tensor> {
        self.var_as("var", dims, correction, keepdim)
    }

    /// The standard deviation √var over `dims` (see [`Tensor::var`] for `correction`).
    pub fn std(&self, dims: &[isize], correction: usize, keepdim: bool) -> Result<Tensor> {
        self.var_as("std", dims, correction, keepdim)?.sqrt()
    }

    fn var_as(&self, op: &'static str, dims: &[isize], correction: usize, keepdim: bool) -> Result<Tensor> {
        let resolved = self.reduction_dims(op, dims)?;
        let n: usize = resolved.iter().map(|&d| self.shape()[d]).product();
        if n <= correction {
            return Err(Error::shape(
                op,
                format!(
                    "dims {dims:?} of shape {:?} hold {n} elements per result, not more than the correction {correction}",
                    self.shape()
                ),
            ));
        }
        let centred = self.sub(&self.mean(dims, true)?)?;
        centred
            .sqr()?
            .sum(dims, keepdim)?
            .mul_scalar(1.0 / (n - correction) as f64)
    }
}
