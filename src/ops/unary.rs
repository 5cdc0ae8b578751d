//! Elementwise functions of one tensor, each with its derivative:
//! neg, exp, log, sqrt, tanh, gelu, gelu_erf, relu, silu, sigmoid, abs, clamp, powf, and the scalar
//! affine map; and GELU's backward, `gelu_backward(dy, z) = dy·gelu'(z)`, one fused primitive (one
//! read of each operand, one write).
//!
//! Backward: neg −g; exp g·y; log g/x; sqrt g/(2y); tanh g·(1 − y²); relu `g·[x > 0]`;
//! powf g·p·x^(p−1); recip −g·y²; affine (x·a + b) g·a; gelu gelu_backward(g, x), with
//! gelu(x) = ½x(1 + tanh u), u = √(2/π)(x + 0.044715x³); gelu_erf g·(Φ(x) + x·φ(x));
//! sigmoid g·y·(1 − y); abs g·sign(x); clamp g where min ≤ x ≤ max, else 0.

use crate::backend::UnaryOp;
use crate::{Error, Result, Tensor};

impl Tensor {
    /// Applies `op` to every element (no autograd: callers record their own rule).
    pub(crate) fn unary_map(&self, op: UnaryOp) -> Result<Tensor> {
        Ok(Tensor::from_parts(
            self.storage().unary(self.layout(), op)?,
            self.shape(),
        ))
    }

    /// `op` with the backward rule `dx = g · dydx(x, y)`.
    fn unary_with_grad(
        &self,
        op: UnaryOp,
        dydx: impl FnOnce(&Tensor, &Tensor) -> Result<Tensor> + Send + Sync + 'static,
    ) -> Result<Tensor> {
        let y = self.unary_map(op)?;
        Ok(y.record(op.name(), &[self], move |g, inputs, y| {
            Ok(vec![Some(g.mul(&dydx(&inputs[0], y)?)?)])
        }))
    }

    /// −x, elementwise.
    pub fn neg(&self) -> Result<Tensor> {
        let y = self.unary_map(UnaryOp::Neg)?;
        Ok(y.record("neg", &[self], |g, _, _| Ok(vec![Some(g.neg()?)])))
    }

    /// eˣ, elementwise.
    pub fn exp(&self) -> Result<Tensor> {
        self.unary_with_grad(UnaryOp::Exp, |_, y| Ok(y.clone()))
    }

    /// The natural logarithm, elementwise (−inf at 0 and NaN below, as in PyTorch).
    pub fn log(&self) -> Result<Tensor> {
        self.unary_with_grad(UnaryOp::Log, |x, _| x.unary_map(UnaryOp::Recip))
    }

    /// √x, elementwise (NaN below 0).
    pub fn sqrt(&self) -> Result<Tensor> {
        // d√x = 1 / (2√x)
        self.unary_with_grad(UnaryOp::Sqrt, |_, y| {
            y.unary_map(UnaryOp::Recip)?
                .unary_map(UnaryOp::Affine { mul: 0.5, add: 0.0 })
        })
    }

    /// The hyperbolic tangent, elementwise.
    pub fn tanh(&self) -> Result<Tensor> {
        // d tanh = 1 - tanh²
        self.unary_with_grad(UnaryOp::Tanh, |_, y| {
            y.unary_map(UnaryOp::Powf(2.0))?
                .unary_map(UnaryOp::Affine { mul: -1.0, add: 1.0 })
        })
    }

    /// GELU, tanh approximation (as GPT-2).
    pub fn gelu(&self) -> Result<Tensor> {
        let y = self.unary_map(UnaryOp::Gelu)?;
        Ok(y.record("gelu", &[self], |g, inputs, _| {
            Ok(vec![Some(g.gelu_backward(&inputs[0])?)])
        }))
    }

    /// GELU's backward: `self·gelu'(z)` for the incoming gradient `self` and GELU's input `z`
    /// (same shape, dtype and device; any views), as PyTorch's `gelu_backward(grad, z,
    /// approximate="tanh")`. One fused pass; the backward rule of [`Tensor::gelu`] and of
    /// [`Tensor::linear_gelu`]. It has no derivative of its own: a backward through it is an error.
    pub fn gelu_backward(&self, z: &Tensor) -> Result<Tensor> {
        const OP: &str = "gelu_backward";
        self.same_device(z, OP)?;
        if self.shape() != z.shape() {
            return Err(Error::shape(
                OP,
                format!(
                    "gradient {:?} and input {:?}: expected the same shape",
                    self.shape(),
                    z.shape()
                ),
            ));
        }
        if self.dtype() != z.dtype() {
            return Err(Error::dtype_mismatch(OP, self.dtype(), z.dtype()));
        }
        let dx = self.storage().gelu_backward(self.layout(), &z.storage(), z.layout())?;
        Ok(Tensor::from_parts(dx, self.shape()).record(OP, &[self, z], |_, _, _| {
            Err(Error::invalid(
                OP,
                "has no derivative (GELU's second derivative is not implemented)",
            ))
        }))
    }

    /// The exact GELU, x·Φ(x) = ½x(1 + erf(x/√2)) (PyTorch's `gelu` with `approximate="none"`,
    /// BERT's and most encoders'); [`Tensor::gelu`] is GPT-2's tanh approximation, which differs
    /// from it by up to about 5e-4.
    pub fn gelu_erf(&self) -> Result<Tensor> {
        self.unary_with_grad(UnaryOp::GeluErf, |x, _| x.unary_map(UnaryOp::GeluErfDerivative))
    }

    /// The logistic function σ(x) = 1 / (1 + e⁻ˣ), elementwise.
    pub fn sigmoid(&self) -> Result<Tensor> {
        // dσ = σ(1 − σ)
        self.unary_with_grad(UnaryOp::Sigmoid, |_, y| y.mul(&y.affine(-1.0, 1.0)?))
    }

    /// |x|, elementwise. The gradient at 0 is 0 (sign(0), as PyTorch).
    pub fn abs(&self) -> Result<Tensor> {
        self.unary_with_grad(UnaryOp::Abs, |x, _| x.unary_map(UnaryOp::Sign))
    }

    /// Every element limited to `[min, max]` (PyTorch's `clamp`; pass `f64::NEG_INFINITY` or
    /// `f64::INFINITY` for a one-sided clamp). NaN stays NaN. The gradient passes where
    /// `min ≤ x ≤ max` (bounds included, as PyTorch) and is 0 where the element was clamped.
    /// A NaN bound or `min > max` is an error.
    pub fn clamp(&self, min: f64, max: f64) -> Result<Tensor> {
        if min.is_nan() || max.is_nan() || min > max {
            return Err(Error::invalid(
                "clamp",
                format!("needs min <= max and neither NaN, got min {min} and max {max}"),
            ));
        }
        let y = self.unary_map(UnaryOp::Clamp { min, max })?;
        Ok(y.record("clamp", &[self], move |g, inputs, _| {
            let x = &inputs[0];
            let bound = |v: f64| Tensor::full(v, &[], x.dtype(), x.device());
            let zero = Tensor::zeros(&[], g.dtype(), g.device())?;
            let below = x.lt(&bound(min)?)?;
            let above = x.gt(&bound(max)?)?;
            let clamped = below.where_cond(&below, &above)?; // below or above, u32 0/1

            Ok(vec![Some(clamped.where_cond(&zero, g)?)])
        }))
    }

    /// max(x, 0), elementwise; the gradient at 0 is 0, as in PyTorch.
    pub fn relu(&self) -> Result<Tensor> {
        self.unary_with_grad(UnaryOp::Relu, |x, _| x.unary_map(UnaryOp::Step))
    }

    /// SiLU (swish): x·σ(x), elementwise (PyTorch's `silu`).
    pub fn silu(&self) -> Result<Tensor> {
        self.unary_with_grad(UnaryOp::Silu, |x, _| x.unary_map(UnaryOp::SiluDerivative))
    }

    /// 1 / x.
    pub fn recip(&self) -> Result<Tensor> {
        // d(1/x) = -1/x² = -y²
        self.unary_with_grad(UnaryOp::Recip, |_, y| {
            y.unary_map(UnaryOp::Powf(2.0))?.unary_map(UnaryOp::Neg)
        })
    }

    /// x raised to a constant power.
    pub fn powf(&self, p: f64) -> Result<Tensor> {
        self.unary_with_grad(UnaryOp::Powf(p), move |x, _| {
            x.unary_map(UnaryOp::Powf(p - 1.0))?
                .unary_map(UnaryOp::Affine { mul: p, add: 0.0 })
        })
    }

    /// x², elementwise.
    pub fn sqr(&self) -> Result<Tensor> {
        self.powf(2.0)
    }

    /// x·mul + add.
    pub fn affine(&self, mul: f64, add: f64) -> Result<Tensor> {
        let y = self.unary_map(UnaryOp::Affine { mul, add })?;
        Ok(y.record("affine", &[self], move |g, _, _| Ok(vec![Some(g.affine(mul, 0.0)?)])))
    }

    /// x + v, elementwise.
    pub fn add_scalar(&self, v: f64) -> Result<Tensor> {
        self.affine(1.0, v)
    }

    /// x − v, elementwise.
    pub fn sub_scalar(&self, v: f64) -> Result<Tensor> {
        self.affine(1.0, -v)
    }

    /// x · v, elementwise.
    pub fn mul_scalar(&self, v: f64) -> Result<Tensor> {
        self.affine(v, 0.0)
    }

    /// x / v, elementwise (computed as x · (1/v)).
    pub fn div_scalar(&self, v: f64) -> Result<Tensor> {
        self.affine(1.0 / v, 0.0)
    }
}
