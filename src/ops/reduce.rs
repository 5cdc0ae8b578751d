//! Reductions: sum, mean, max, min over given dims (with keepdim), sum_all, mean_all.
//!
//! Backward: sum, g broadcast back over the reduced dims; mean, g/n; max and min, g to the
//! elements equal to the result, split evenly among ties.

use crate::backend::op::BinaryOp;
use crate::backend::op::ReduceOp;
use crate::tensor::layout::resolve_dim;
use crate::{Error, Result, Tensor};

impl Tensor {
    /// Resolves, checks and sorts reduction dims.
    pub(crate) fn reduction_dims(&self, op: &'static str, dims: &[isize]) -> Result<Vec<usize>> {
        let mut resolved = dims
            .iter()
            .map(|&d| resolve_dim(op, d, self.shape()))
            .collect::<Result<Vec<_>>>()?;
        resolved.sort_unstable();
        if resolved.windows(2).any(|w| w[0] == w[1]) {
            return Err(Error::invalid(
                op,
                format!("dims {dims:?} name a dimension twice (shape {:?})", self.shape()),
            ));
        }
        Ok(resolved)
    }

    /// The shape with `dims` set to 1 (keepdim) or removed.
    fn reduced_shape(&self, dims: &[usize], keepdim: bool) -> Vec<usize> {
        let mut shape = Vec::new();
        for (d, &size) in self.shape().iter().enumerate() {
            if !dims.contains(&d) {
                shape.push(size);
            } else if keepdim {
                shape.push(1);
            }
        }
        shape
    }

    /// Reduces sorted `dims` without autograd; the result has the keepdim shape.
    pub(crate) fn reduce_keepdim(&self, op: ReduceOp, dims: &[usize]) -> Result<Tensor> {
        if op != ReduceOp::Sum && dims.iter().any(|&d| self.shape()[d] == 0) {
            return Err(Error::shape(
                op.name(),
                format!(
                    "cannot take the {} over an empty dimension (shape {:?}, dims {dims:?})",
                    op.name(),
                    self.shape()
                ),
            ));
        }
        let shape = self.reduced_shape(dims, true);
        Ok(Tensor::from_parts(
            self.storage().reduce(self.layout(), op, dims)?,
            &shape,
        ))
    }

    /// Sum over `dims` (negative dims count from the end).
    pub fn sum(&self, dims: &[isize], keepdim: bool) -> Result<Tensor> {
        let dims = self.reduction_dims("sum", dims)?;
        let summed = self.reduce_keepdim(ReduceOp::Sum, &dims)?;
        let summed = summed.record("sum", &[self], |g, inputs, out| {
            // g has the keepdim shape of `out`; every input element received it once
            Ok(vec![Some(g.reshape(out.shape())?.broadcast_to(inputs[0].shape())?)])
        });
        summed.reshape(&self.reduced_shape(&dims, keepdim))
    }

    /// Mean over `dims`.
    pub fn mean(&self, dims: &[isize], keepdim: bool) -> Result<Tensor> {
        let resolved = self.reduction_dims("mean", dims)?;
        let count: usize = resolved.iter().map(|&d| self.shape()[d]).product();
        if count == 0 {
            return Err(Error::shape(
                "mean",
                format!(
                    "the mean over dims {dims:?} of shape {:?} has no elements",
                    self.shape()
                ),
            ));
        }
        self.sum(dims, keepdim)?.mul_scalar(1.0 / count as f64)
    }

    /// Maximum over `dims`; where several elements tie, the gradient is split evenly among them.
    pub fn max(&self, dims: &[isize], keepdim: bool) -> Result<Tensor> {
        self.extremum(ReduceOp::Max, dims, keepdim)
    }

    /// Minimum over `dims`; ties split the gradient evenly.
    pub fn min(&self, dims: &[isize], keepdim: bool) -> Result<Tensor> {
        self.extremum(ReduceOp::Min, dims, keepdim)
    }

    fn extremum(&self, op: ReduceOp, dims: &[isize], keepdim: bool) -> Result<Tensor> {
        let resolved = self.reduction_dims(op.name(), dims)?;
        let m = self.reduce_keepdim(op, &resolved)?;
        let dims_for_grad = resolved.clone();
        let m = m.record(op.name(), &[self], move |g, inputs, m| {
            let x = &inputs[0];
            let hits = x.binary_map(m, BinaryOp::Eq)?.to_dtype(x.dtype())?;
            let count = hits.reduce_keepdim(ReduceOp::Sum, &dims_for_grad)?;
            Ok(vec![Some(hits.mul(&g.reshape(m.shape())?.div(&count)?)?)])
        });
        m.reshape(&self.reduced_shape(&resolved, keepdim))
    }

    /// Sum of every element, shape [].
    pub fn sum_all(&self) -> Result<Tensor> {
        let all: Vec<isize> = (0..self.dims() as isize).collect();
        self.sum(&all, false)
    }

    /// Mean of every element, shape [].
    pub fn mean_all(&self) -> Result<Tensor> {
        let all: Vec<isize> = (0..self.dims() as isize).collect();
        self.mean(&all, false)
    }

    /// Maximum of every element, shape [].
    pub fn max_all(&self) -> Result<Tensor> {
        let all: Vec<isize> = (0..self.dims() as isize).collect();
        self.max(&all, false)
    }

    /// Sums broadcast dimensions away so the result has `shape` (the inverse of broadcast_to,
    /// used by backward rules).
    pub fn sum_to_shape(&self, shape: &[usize]) -> Result<Tensor> {
        if self.shape() == shape {
            return Ok(self.clone());
        }
        let extra = self.dims().checked_sub(shape.len()).ok_or_else(|| {
            Error::shape(
                "sum_to_shape",
                format!("cannot sum shape {:?} down to the higher-rank {shape:?}", self.shape()),
            )
        })?;
        let mut dims = Vec::new();
        for (d, &size) in self.shape().iter().enumerate() {
            if d < extra || (shape[d - extra] == 1 && size != 1) {
                dims.push(d as isize);
            } else if shape[d - extra] != size {
                return Err(Error::shape(
                    "sum_to_shape",
                    format!("shape {:?} was not broadcast from {shape:?}", self.shape()),
                ));
            }
        }
        self.sum(&dims, true)?.reshape(shape)
    }
}
