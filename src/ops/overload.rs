//! Arithmetic operators on tensors: `+ - * /` between two tensors (owned or borrowed, in any mix)
//! and between a tensor and an `f64`, and unary `-`. Each returns `Result<Tensor>`, as the methods
//! do (`(&a + &b)?` is `a.add(&b)?`), since shapes, dtypes and devices can disagree; candle made the
//! same choice. Borrow to keep an operand: `&a + &b` leaves both usable, `a + b` consumes them.
//!
//! Two tensors broadcast as NumPy and PyTorch do ([`Tensor::add`]): their shapes are aligned at the
//! last dim, and a dim of size 1 (or a missing leading dim) repeats to match the other side, so
//! `[4, 3] + [3]` adds a row to each row and `[4, 1] * [1, 3]` gives `[4, 3]`; other mismatches are
//! an `Error::Shape`. A scalar applies to every element (`&x * 2.0` is [`Tensor::mul_scalar`]).
//! Everything is differentiable, as the methods are.

use crate::{Result, Tensor};
use std::ops::{Add, Div, Mul, Neg, Sub};

/// `impl $trait` for each mix of owned and borrowed tensors, calling the method `$method`.
macro_rules! tensor_operator {
    ($trait:ident, $method:ident, $scalar:ident) => {
        impl $trait<&Tensor> for &Tensor {
            type Output = Result<Tensor>;
            fn $method(self, rhs: &Tensor) -> Result<Tensor> {
                Tensor::$method(self, rhs)
            }
        }
        impl $trait<Tensor> for &Tensor {
            type Output = Result<Tensor>;
            fn $method(self, rhs: Tensor) -> Result<Tensor> {
                Tensor::$method(self, &rhs)
            }
        }
        impl $trait<&Tensor> for Tensor {
            type Output = Result<Tensor>;
            fn $method(self, rhs: &Tensor) -> Result<Tensor> {
                Tensor::$method(&self, rhs)
            }
        }
        impl $trait<Tensor> for Tensor {
            type Output = Result<Tensor>;
            fn $method(self, rhs: Tensor) -> Result<Tensor> {
                Tensor::$method(&self, &rhs)
            }
        }
        impl $trait<f64> for &Tensor {
            type Output = Result<Tensor>;
            fn $method(self, rhs: f64) -> Result<Tensor> {
                Tensor::$scalar(self, rhs)
            }
        }
        impl $trait<f64> for Tensor {
            type Output = Result<Tensor>;
            fn $method(self, rhs: f64) -> Result<Tensor> {
                Tensor::$scalar(&self, rhs)
            }
        }
    };
}

tensor_operator!(Add, add, add_scalar);
tensor_operator!(Sub, sub, sub_scalar);
tensor_operator!(Mul, mul, mul_scalar);
tensor_operator!(Div, div, div_scalar);

impl Neg for &Tensor {
    type Output = Result<Tensor>;
    fn neg(self) -> Result<Tensor> {
        Tensor::neg(self)
    }
}

impl Neg for Tensor {
    type Output = Result<Tensor>;
    fn neg(self) -> Result<Tensor> {
        Tensor::neg(&self)
    }
}
