//! The position of the largest or smallest element along a dim: argmax and argmin (U32 results).
//!
//! A composition of existing kernels, on every device: m = max (or min) over the dim; the elements
//! equal to m, or NaN (a NaN is the extreme, as PyTorch, and makes m NaN, which equals nothing); their
//! positions along the dim (f32, or f64 for dims longer than 2²⁴, where f32 stops counting exactly),
//! with the dim's size where not picked; the min over the dim of those: the first pick, as PyTorch
//! returns the first of tied elements. About eight launches (two reductions, three comparisons and
//! selections, the positions and two casts) instead of one fused pass; no gradient (the result is
//! an index).

use crate::backend::op::{BinaryOp, ReduceOp};
use crate::tensor::layout::resolve_dim;
use crate::{DType, Error, Result, Tensor};

impl Tensor {
    /// The position (U32) of the largest element along `dim`, the first among ties; a NaN counts
    /// as the largest. The dim is removed, or kept as size 1 with `keepdim` (PyTorch's `argmax`;
    /// over every element: `x.flatten_all()?.argmax(0, false)`).
    pub fn argmax(&self, dim: isize, keepdim: bool) -> Result<Tensor> {
        self.arg_extremum("argmax", ReduceOp::Max, dim, keepdim)
    }

    /// The position (U32) of the smallest element along `dim`, the first among ties; a NaN counts
    /// as the smallest (PyTorch's `argmin`).
    pub fn argmin(&self, dim: isize, keepdim: bool) -> Result<Tensor> {
        self.arg_extremum("argmin", ReduceOp::Min, dim, keepdim)
    }

    fn arg_extremum(&self, op: &'static str, extremum: ReduceOp, dim: isize, keepdim: bool) -> Result<Tensor> {
        let d = resolve_dim(op, dim, self.shape())?;
        if !self.dtype().is_float() {
            return Err(Error::not_float(op, self.dtype()));
        }
        let size = self.shape()[d];
        if size == 0 {
            return Err(Error::shape(
                op,
                format!("dimension {dim} of shape {:?} is empty: it has no {op}", self.shape()),
            ));
        }
        if u32::try_from(size).is_err() {
            return Err(Error::invalid(
                op,
                format!("dimension {dim} has {size} elements, more than a u32 position counts"),
            ));
        }
        let m = self.reduce_keepdim(extremum, &[d])?;
        let hit = self.binary_map(&m, BinaryOp::Eq)?;
        let nan = self.binary_map(self, BinaryOp::Ne)?;
        let picked = hit.where_cond(&hit, &nan)?; // hit or NaN, u32 0/1
        let count_dtype = if size <= 1 << 24 { DType::F32 } else { DType::F64 };
        let mut along = vec![1; self.dims() - d];
        along[0] = size;
        let positions = Tensor::arange(0.0, size as f64, 1.0, count_dtype, self.device())?.reshape(&along)?;
        let none = Tensor::full(size as f64, &[], count_dtype, self.device())?;
        let first = picked
            .where_cond(&positions, &none)?
            .reduce_keepdim(ReduceOp::Min, &[d])?;
        let mut shape = self.shape().to_vec();
        if keepdim {
            shape[d] = 1;
        } else {
            shape.remove(d);
        }
        first.to_dtype(DType::U32)?.reshape(&shape)
    }
}
