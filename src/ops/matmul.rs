//! Matrix product: 2-D, or batched `[..., M, K] x [..., K, N]` with broadcast batch dims.

use crate::tensor::layout::broadcast_shapes;
use crate::{Error, Result, Tensor};

impl Tensor {
    /// `self @ rhs`. Both operands need at least 2 dims; batch dims broadcast.
    /// Transposed or strided views are consumed in place.
    pub fn matmul(&self, rhs: &Tensor) -> Result<Tensor> {
        self.same_device(rhs, "matmul")?;
        let (ls, rs) = (self.shape(), rhs.shape());
        if ls.len() < 2 || rs.len() < 2 {
            return Err(Error::shape(
                "matmul",
                format!("lhs {ls:?} and rhs {rs:?}: both operands need at least 2 dimensions"),
            ));
        }
        let (m, k) = (ls[ls.len() - 2], ls[ls.len() - 1]);
        let (k2, n) = (rs[rs.len() - 2], rs[rs.len() - 1]);
        if k != k2 {
            return Err(Error::shape(
                "matmul",
                format!("lhs {ls:?} and rhs {rs:?}: inner dimensions {k} and {k2} differ"),
            ));
        }
        if self.dtype() != rhs.dtype() {
            return Err(Error::dtype_mismatch("matmul", self.dtype(), rhs.dtype()));
        }
        let (lb, rb) = (&ls[..ls.len() - 2], &rs[..rs.len() - 2]);
        let batch = broadcast_shapes("matmul", lb, rb).map_err(|_| {
            Error::shape(
                "matmul",
                format!("lhs {ls:?} and rhs {rs:?}: batch dimensions {lb:?} and {rb:?} do not broadcast"),
            )
        })?;
        let with = |a, b| [batch.as_slice(), &[a, b]].concat();
        let la = self.layout().broadcast_to("matmul", &with(m, k))?;
        let lb = rhs.layout().broadcast_to("matmul", &with(k, n))?;
        let out = Tensor::from_parts(self.storage().matmul(&la, &rhs.storage(), &lb)?, &with(m, n));
        Ok(out.record("matmul", &[self, rhs], |g, inputs, _| {
            // y = a·b  =>  da = g·bᵀ, db = aᵀ·g, summed over broadcast batch dims
            let (a, b) = (&inputs[0], &inputs[1]);
            let ga = g.matmul(&b.transpose(-2, -1)?)?.sum_to_shape(a.shape())?;
            let gb = a.transpose(-2, -1)?.matmul(g)?.sum_to_shape(b.shape())?;
            Ok(vec![Some(ga), Some(gb)])
        }))
    }
}
