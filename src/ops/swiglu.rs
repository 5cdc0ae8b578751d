//! swiglu(gate, up) = silu(gate)·up, the gated activation of Llama's feed-forward block
//! (`down(swiglu(gate(x), up(x)))`), fused: one pass forward, one backward pass that writes both
//! gradients (see backend/cpu/swiglu.rs and kernels/swiglu.cu).

use crate::{Error, Result, Tensor};

impl Tensor {
    /// silu(self)·up elementwise, `self` being the gate; both of one shape, dtype and device (any
    /// views: e.g. the two halves of one `[..., 2F]` projection narrowed out of it).
    pub fn swiglu(&self, up: &Tensor) -> Result<Tensor> {
        const OP: &str = "swiglu";
        self.same_device(up, OP)?;
        if self.shape() != up.shape() {
            return Err(Error::shape(
                OP,
                format!(
                    "gate {:?} and up {:?}: expected the same shape",
                    self.shape(),
                    up.shape()
                ),
            ));
        }
        if self.dtype() != up.dtype() {
            return Err(Error::dtype_mismatch(OP, self.dtype(), up.dtype()));
        }
        if !self.dtype().is_float() {
            return Err(Error::not_float(OP, self.dtype()));
        }
        let y = self
            .storage()
            .swiglu_forward(self.layout(), &up.storage(), up.layout())?;
        Ok(
            Tensor::from_parts(y, self.shape()).record(OP, &[self, up], |g, inputs, _| {
                let (gate, up, g) = (inputs[0].dense()?, inputs[1].dense()?, g.dense()?);
                let (dgate, dup) = gate.storage().swiglu_backward(&up.storage(), &g.storage())?;
                Ok(vec![
                    Some(Tensor::from_parts(dgate, gate.shape())),
                    Some(Tensor::from_parts(dup, gate.shape())),
                ])
            }),
        )
    }
}
