//! cross_entropy from logits (mean over the rows whose target is not ignored).
//!
//! Backward: dlogits = (softmax(logits) − onehot(target)) · g / count per row, 0 for ignored rows
//! (count: the rows not ignored). Fused: no probability tensor is kept.

use crate::{DType, Error, Result, Tensor};

impl Tensor {
    /// Mean cross-entropy of `self` (logits `[N, C]`) against `targets` (U32 `[N]`). The loss is in
    /// the accumulation type, f32 for f32, bf16 and f16 logits (f64 for f64): the per-row terms are
    /// f32 sums already, and a loss rounded to bf16's 8 bits would move by ~0.01 at ln(50257).
    pub fn cross_entropy(&self, targets: &Tensor) -> Result<Tensor> {
        self.cross_entropy_with_ignore(targets, None)
    }

    /// As [`Tensor::cross_entropy`], skipping rows whose target equals `ignore_index`
    /// (the mean is over the remaining rows). At least one row must remain.
    pub fn cross_entropy_with_ignore(&self, targets: &Tensor, ignore_index: Option<u32>) -> Result<Tensor> {
        const OP: &str = "cross_entropy";
        self.same_device(targets, OP)?;
        let (n, c) = match self.shape() {
            &[n, c] => (n, c),
            s => return Err(Error::shape(OP, format!("logits must be [N, C], got {s:?}"))),
        };
        if targets.dtype() != DType::U32 {
            return Err(Error::DType {
                op: OP,
                msg: format!("targets must be u32 class ids, got {}", targets.dtype()),
            });
        }
        if targets.shape() != [n] {
            return Err(Error::shape(
                OP,
                format!(
                    "logits {:?} need targets of shape [{n}], got {:?}",
                    self.shape(),
                    targets.shape()
                ),
            ));
        }
        if !self.dtype().is_float() {
            return Err(Error::not_float(OP, self.dtype()));
        }
        // The ids are checked on the host (one small read; a device-side check would need a read
        // back too); the kernels then take them from the device.
        let ids = targets.to_vec::<u32>()?;
        if let Some((row, &t)) = ids
            .iter()
            .enumerate()
            .find(|&(_, &t)| Some(t) != ignore_index && t as usize >= c)
        {
            return Err(Error::index(
                OP,
                format!("target {t} at row {row} is out of range for {c} classes"),
            ));
        }
        let count = ids.iter().filter(|&&t| Some(t) != ignore_index).count();
        if count == 0 {
            return Err(Error::invalid(
                OP,
                format!("all {n} targets equal the ignore index, so the mean loss is undefined"),
            ));
        }
        let logits = self.dense()?;
        let targets = targets.dense()?;
        let (loss, lse) = logits
            .storage()
            .cross_entropy_forward(&targets.storage(), c, ignore_index, count)?;
        let loss = Tensor::from_parts(loss, &[]);
        Ok(loss.record(OP, &[&logits], move |g, inputs, _| {
            let (logits, g) = (&inputs[0], g.dense()?);
            let dx = logits.storage().cross_entropy_backward(
                &targets.storage(),
                &lse,
                &g.storage(),
                c,
                ignore_index,
                count,
            )?;
            Ok(vec![Some(Tensor::from_parts(dx, &[n, c]))])
        }))
    }
}
