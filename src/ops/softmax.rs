//! softmax and log_softmax over any dim. The forward is fused per row; the backward rules
//! are written with tensor ops:
//!   softmax:     dx = y ⊙ (g − Σ(g ⊙ y))
//!   log_softmax: dx = g − exp(y) ⊙ Σ g
//! (sums over the softmax dim, kept for broadcasting).

use crate::tensor::layout::resolve_dim;
use crate::{Result, Tensor};

impl Tensor {
    /// exp(x) / Σ exp(x) along `dim`. A row that is entirely -inf gives zeros.
    pub fn softmax(&self, dim: isize) -> Result<Tensor> {
        let d = resolve_dim("softmax", dim, self.shape())? as isize;
        let y = self.softmax_forward(d, false)?;
        Ok(y.record("softmax", &[self], move |g, _, y| {
            let gy = g.mul(y)?;
            Ok(vec![Some(gy.sub(&y.mul(&gy.sum(&[d], true)?)?)?)])
        }))
    }

    /// x − log Σ exp(x) along `dim`. A row that is entirely -inf gives -inf.
    pub fn log_softmax(&self, dim: isize) -> Result<Tensor> {
        let d = resolve_dim("log_softmax", dim, self.shape())? as isize;
        let y = self.softmax_forward(d, true)?;
        Ok(y.record("log_softmax", &[self], move |g, _, y| {
            Ok(vec![Some(g.sub(&y.exp()?.mul(&g.sum(&[d], true)?)?)?)])
        }))
    }

    /// The fused row kernel runs on the last dim; another dim is moved there and back.
    fn softmax_forward(&self, dim: isize, log: bool) -> Result<Tensor> {
        let _untracked = crate::no_grad();
        let last = self.dims() as isize - 1;
        let x = if dim == last {
            self.dense()?
        } else {
            self.transpose(dim, last)?.dense()?
        };
        let width = x.shape().last().copied().unwrap_or(1);
        let y = Tensor::from_parts(x.storage().softmax_last_dim(width, log)?, x.shape());
        if dim == last {
            Ok(y)
        } else {
            y.transpose(dim, last)
        }
    }
}
