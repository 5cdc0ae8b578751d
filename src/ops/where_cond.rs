//! Selecting elementwise by a condition: where_cond and masked_fill.
//!
//! Backward: where_cond, (where(cond, g, 0), where(cond, 0, g)) summed to each input's shape
//! (masked_fill is a where_cond, so dx = where(mask, 0, g)); the condition gets none.

use crate::tensor::layout::broadcast_shapes;
use crate::{DType, Error, Result, Tensor};

impl Tensor {
    /// Elementwise `self != 0 ? on_true : on_false`; `self` is a U32 condition, all three
    /// broadcast together.
    pub fn where_cond(&self, on_true: &Tensor, on_false: &Tensor) -> Result<Tensor> {
        const OP: &str = "where_cond";
        if self.dtype() != DType::U32 {
            return Err(Error::DType {
                op: OP,
                msg: format!("the condition must be u32 (0 or non-zero), got {}", self.dtype()),
            });
        }
        if on_true.dtype() != on_false.dtype() {
            return Err(Error::dtype_mismatch(OP, on_true.dtype(), on_false.dtype()));
        }
        self.same_device(on_true, OP)?;
        self.same_device(on_false, OP)?;
        let shape = broadcast_shapes(
            OP,
            &broadcast_shapes(OP, self.shape(), on_true.shape())?,
            on_false.shape(),
        )?;
        let (lc, lt, lf) = (
            self.layout().broadcast_to(OP, &shape)?,
            on_true.layout().broadcast_to(OP, &shape)?,
            on_false.layout().broadcast_to(OP, &shape)?,
        );
        let out = self
            .storage()
            .where_cond(&lc, &on_true.storage(), &lt, &on_false.storage(), &lf)?;
        let out = Tensor::from_parts(out, &shape);
        Ok(out.record(OP, &[self, on_true, on_false], |g, inputs, _| {
            let (cond, t, f) = (&inputs[0], &inputs[1], &inputs[2]);
            let zero = Tensor::zeros(&[], g.dtype(), g.device())?;
            // a constant branch (masked_fill's fill value) gets no gradient: skip its full-size pass
            let grad = |on_true: bool, x: &Tensor| -> Result<Option<Tensor>> {
                if !x.tracks_grad() {
                    return Ok(None);
                }
                let routed = if on_true {
                    cond.where_cond(g, &zero)?
                } else {
                    cond.where_cond(&zero, g)?
                };
                Ok(Some(routed.sum_to_shape(x.shape())?))
            };
            Ok(vec![None, grad(true, t)?, grad(false, f)?])
        }))
    }

    /// `value` where `mask` (U32, broadcastable to `self`) is non-zero, `self` elsewhere.
    pub fn masked_fill(&self, mask: &Tensor, value: f64) -> Result<Tensor> {
        let fill = Tensor::full(value, &[], self.dtype(), self.device())?;
        mask.where_cond(&fill, self)
    }
}
