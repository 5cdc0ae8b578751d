//! softmax and log_softmax over any dim. Forward and backward are fused row kernels over the last
//! dim (another dim is moved there and back):
//!   softmax:     dx = y ⊙ (g − Σ(g ⊙ y))
//!   log_softmax: dx = g − exp(y) ⊙ Σ g
//! (sums over the softmax dim).

use crate::backend::Storage;
use crate::tensor::layout::resolve_dim;
use crate::{Result, Tensor};

impl Tensor {
    /// exp(x) / Σ exp(x) along `dim`. A row that is entirely -inf gives zeros.
    pub fn softmax(&self, dim: isize) -> Result<Tensor> {
        self.softmax_impl("softmax", dim, false)
    }

    /// x − log Σ exp(x) along `dim`. A row that is entirely -inf gives -inf.
    pub fn log_softmax(&self, dim: isize) -> Result<Tensor> {
        self.softmax_impl("log_softmax", dim, true)
    }

    fn softmax_impl(&self, op: &'static str, dim: isize, log: bool) -> Result<Tensor> {
        let d = resolve_dim(op, dim, self.shape())? as isize;
        let y = along_rows(d, &[self], |x, width| x[0].storage().softmax_last_dim(width, log))?;
        Ok(y.record(op, &[self], move |g, _, y| {
            let dx = along_rows(d, &[y, g], |t, width| {
                t[0].storage().softmax_backward_last_dim(&t[1].storage(), width, log)
            })?;
            Ok(vec![Some(dx)])
        }))
    }
}

/// The result of a row kernel `f` over `dim` of tensors of one shape: each is moved so that `dim`
/// is last and made contiguous, `f` gets them and the row width, and its result is moved back.
fn along_rows(dim: isize, xs: &[&Tensor], f: impl FnOnce(&[Tensor], usize) -> Result<Storage>) -> Result<Tensor> {
    let _untracked = crate::no_grad();
    let last = xs[0].dims() as isize - 1;
    let rows = xs
        .iter()
        .map(|x| {
            if dim == last {
                x.dense()
            } else {
                x.transpose(dim, last)?.dense()
            }
        })
        .collect::<Result<Vec<Tensor>>>()?;
    let width = rows[0].shape().last().copied().unwrap_or(1);
    let y = Tensor::from_parts(f(&rows, width)?, rows[0].shape());
    if dim == last {
        Ok(y)
    } else {
        y.transpose(dim, last)
    }
}
