//! Elementwise functions of two tensors with NumPy broadcasting: add, sub, mul, div,
//! maximum, minimum, and comparisons. Gradients are summed back to each input's shape.
//!
//! Backward (each summed to its input's shape): add (g, g); sub (g, −g); mul (g·b, g·a);
//! div (g/b, −g·a/b²); maximum, minimum: g to the larger (smaller) input, split evenly on ties;
//! comparisons: none.

use crate::backend::BinaryOp;
use crate::tensor::layout::broadcast_shapes;
use crate::{Result, Tensor};

impl Tensor {
    /// `op` over the broadcast of both operands (no autograd).
    pub(crate) fn binary_map(&self, rhs: &Tensor, op: BinaryOp) -> Result<Tensor> {
        self.same_device(rhs, op.name())?;
        let shape = broadcast_shapes(op.name(), self.shape(), rhs.shape())?;
        let la = self.layout().broadcast_to(op.name(), &shape)?;
        let lb = rhs.layout().broadcast_to(op.name(), &shape)?;
        let out = self.storage().binary(&la, &rhs.storage(), &lb, op)?;
        Ok(Tensor::from_parts(out, &shape))
    }

    /// `op` with backward `(d lhs, d rhs) = grads(g, lhs, rhs)`, each summed back to its input's shape.
    fn binary_with_grad(
        &self,
        rhs: &Tensor,
        op: BinaryOp,
        grads: impl FnOnce(&Tensor, &Tensor, &Tensor) -> Result<(Tensor, Tensor)> + Send + Sync + 'static,
    ) -> Result<Tensor> {
        let y = self.binary_map(rhs, op)?;
        Ok(y.record(op.name(), &[self, rhs], move |g, inputs, _| {
            let (a, b) = (&inputs[0], &inputs[1]);
            let (ga, gb) = grads(g, a, b)?;
            Ok(vec![
                Some(ga.sum_to_shape(a.shape())?),
                Some(gb.sum_to_shape(b.shape())?),
            ])
        }))
    }

    /// `self + rhs`, elementwise with NumPy broadcasting: shapes are aligned from the last
    /// dimension, and each pair of sizes must be equal or one of them 1 (`[2, 3] + [3]` and
    /// `[2, 1] + [1, 3]` are `[2, 3]`). Both operands need the same dtype and device
    /// (`Error::DType`, `Error::DeviceMismatch` otherwise); shapes that do not broadcast are an
    /// `Error::Shape`. The gradient of each operand is summed back to its own shape.
    pub fn add(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary_with_grad(rhs, BinaryOp::Add, |g, _, _| Ok((g.clone(), g.clone())))
    }

    /// `self − rhs`, elementwise with broadcasting (see [`Tensor::add`] for the rules and errors).
    pub fn sub(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary_with_grad(rhs, BinaryOp::Sub, |g, _, _| Ok((g.clone(), g.neg()?)))
    }

    /// `self · rhs`, elementwise with broadcasting (see [`Tensor::add`]); not a matrix product
    /// (that is [`Tensor::matmul`]).
    pub fn mul(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary_with_grad(rhs, BinaryOp::Mul, |g, a, b| Ok((g.mul(b)?, g.mul(a)?)))
    }

    /// `self / rhs`, elementwise with broadcasting (see [`Tensor::add`]). Division by zero
    /// follows IEEE 754 (±inf or NaN), as in PyTorch.
    pub fn div(&self, rhs: &Tensor) -> Result<Tensor> {
        // d(a/b)/da = 1/b, d(a/b)/db = -a/b²
        self.binary_with_grad(rhs, BinaryOp::Div, |g, a, b| {
            let ga = g.div(b)?;
            let gb = ga.mul(a)?.div(b)?.neg()?;
            Ok((ga, gb))
        })
    }

    /// Elementwise maximum; where both are equal the gradient is split evenly.
    pub fn maximum(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary_with_grad(rhs, BinaryOp::Maximum, |g, a, b| split_by_winner(g, a, b, BinaryOp::Gt))
    }

    /// Elementwise minimum; where both are equal the gradient is split evenly.
    pub fn minimum(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary_with_grad(rhs, BinaryOp::Minimum, |g, a, b| split_by_winner(g, a, b, BinaryOp::Lt))
    }

    /// 1 (U32) where `self == rhs`, else 0. Not differentiable.
    pub fn eq(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary_map(rhs, BinaryOp::Eq)
    }

    /// 1 (U32) where `self != rhs`, else 0, with broadcasting. Not differentiable.
    pub fn ne(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary_map(rhs, BinaryOp::Ne)
    }

    /// 1 (U32) where `self < rhs`, else 0, with broadcasting. Not differentiable.
    pub fn lt(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary_map(rhs, BinaryOp::Lt)
    }

    /// 1 (U32) where `self <= rhs`, else 0, with broadcasting. Not differentiable.
    pub fn le(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary_map(rhs, BinaryOp::Le)
    }

    /// 1 (U32) where `self > rhs`, else 0, with broadcasting. Not differentiable.
    pub fn gt(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary_map(rhs, BinaryOp::Gt)
    }

    /// 1 (U32) where `self >= rhs`, else 0, with broadcasting. Not differentiable.
    pub fn ge(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary_map(rhs, BinaryOp::Ge)
    }
}

/// Gradient routing for maximum/minimum: `a` gets g where `a wins b`, `b` where `b wins a`,
/// and each gets g/2 on ties.
fn split_by_winner(g: &Tensor, a: &Tensor, b: &Tensor, wins: BinaryOp) -> Result<(Tensor, Tensor)> {
    let dtype = g.dtype();
    let a_wins = a.binary_map(b, wins)?.to_dtype(dtype)?;
    let b_wins = b.binary_map(a, wins)?.to_dtype(dtype)?;
    let tie = a.binary_map(b, BinaryOp::Eq)?.to_dtype(dtype)?.affine(0.5, 0.0)?;
    Ok((g.mul(&a_wins.add(&tie)?)?, g.mul(&b_wins.add(&tie)?)?))
}
