//! Elementwise functions of one tensor, each with its derivative:
//! neg, exp, log, sqrt, tanh, gelu, relu, silu, powf, and the scalar affine map; and GELU's backward,
//! `gelu_backward(dy, z) = dy·gelu'(z)`, one fused primitive (one read of each operand, one write).

use crate::backend::cpu::exp::Exp;
use crate::{Error, Result, Tensor};

/// √(2/π), GPT-2's GELU constant.
const SQRT_2_OVER_PI: f64 = 0.797_884_560_802_865_4;
const GELU_CUBIC: f64 = 0.044_715;

/// One elementwise function. `apply` is its definition for every float type.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum UnaryOp {
    Neg,
    Exp,
    Log,
    Sqrt,
    Tanh,
    /// GPT-2's tanh approximation: 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))).
    Gelu,
    Relu,
    /// 1 where x > 0, else 0 (relu's derivative).
    Step,
    /// x·σ(x) (SiLU, Llama's activation; PyTorch's `silu`).
    Silu,
    /// d silu / dx = σ(x)·(1 + x·(1 − σ(x))) (silu's derivative).
    SiluDerivative,
    Recip,
    Powf(f64),
    /// x·mul + add.
    Affine {
        mul: f64,
        add: f64,
    },
}

impl UnaryOp {
    pub fn name(self) -> &'static str {
        match self {
            UnaryOp::Neg => "neg",
            UnaryOp::Exp => "exp",
            UnaryOp::Log => "log",
            UnaryOp::Sqrt => "sqrt",
            UnaryOp::Tanh => "tanh",
            UnaryOp::Gelu => "gelu",
            UnaryOp::Relu => "relu",
            UnaryOp::Step => "step",
            UnaryOp::Silu => "silu",
            UnaryOp::SiluDerivative => "silu_derivative",
            UnaryOp::Recip => "recip",
            UnaryOp::Powf(_) => "powf",
            UnaryOp::Affine { .. } => "affine",
        }
    }

    #[inline(always)]
    pub fn apply<T: Exp>(self, x: T) -> T {
        let c = |v: f64| T::from(v).expect("every float type holds these constants");
        match self {
            UnaryOp::Neg => -x,
            UnaryOp::Exp => x.exp_fast(),
            UnaryOp::Log => x.ln(),
            UnaryOp::Sqrt => x.sqrt(),
            UnaryOp::Tanh => x.tanh(),
            // ½·(1 + tanh(u)) = σ(2u): one exp instead of a (much slower) tanh, and no
            // cancellation in 1 + tanh(u) for large negative u. exp(−2u) = inf gives σ = 0.
            UnaryOp::Gelu => {
                let u = c(SQRT_2_OVER_PI) * (x + c(GELU_CUBIC) * x * x * x);
                x / (T::one() + (c(-2.0) * u).exp_fast())
            }
            UnaryOp::Relu => {
                // NaN stays NaN (as PyTorch): a NaN must not be hidden
                if x.is_nan() || x > T::zero() {
                    x
                } else {
                    T::zero()
                }
            }
            UnaryOp::Step => {
                if x > T::zero() {
                    T::one()
                } else {
                    T::zero()
                }
            }
            UnaryOp::Silu => silu(x),
            UnaryOp::SiluDerivative => silu_derivative(x),
            UnaryOp::Recip => x.recip(),
            // squaring is common (tanh', variance): one multiply, not a libm call
            UnaryOp::Powf(2.0) => x * x,
            UnaryOp::Powf(p) => x.powf(c(p)),
            UnaryOp::Affine { mul, add } => x * c(mul) + c(add),
        }
    }
}

/// d gelu / dx in the arithmetic type: with gelu(x) = x·σ(2u), u = √(2/π)·(x + 0.044715·x³),
/// d/dx x·σ(2u) = σ + x·2σ(1 − σ)·du/dx (the CPU's `gelu_backward`; the kernels' is in unary.cu).
#[inline(always)]
pub(crate) fn gelu_derivative<T: Exp>(x: T) -> T {
    let c = |v: f64| T::from(v).expect("every float type holds these constants");
    let u = c(SQRT_2_OVER_PI) * (x + c(GELU_CUBIC) * x * x * x);
    let s = T::one() / (T::one() + (c(-2.0) * u).exp_fast());
    let du = c(SQRT_2_OVER_PI) * (T::one() + c(3.0 * GELU_CUBIC) * x * x);
    s + c(2.0) * x * s * (T::one() - s) * du
}

/// silu(x) = x·σ(x) = x / (1 + e⁻ˣ) in the arithmetic type: e⁻ˣ = inf (x below about −88 in f32)
/// gives −0, never NaN. Shared by `UnaryOp::Silu` and the CPU's swiglu (backend/cpu/swiglu.rs).
#[inline(always)]
pub(crate) fn silu<T: Exp>(x: T) -> T {
    x / (T::one() + (-x).exp_fast())
}

/// silu'(x) = σ(x)·(1 + x·(1 − σ(x))) in the arithmetic type (σ = 0 where e⁻ˣ overflows: the
/// derivative is 0 there, as its limit).
#[inline(always)]
pub(crate) fn silu_derivative<T: Exp>(x: T) -> T {
    let s = T::one() / (T::one() + (-x).exp_fast());
    s * (T::one() + x * (T::one() - s))
}

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

    pub fn neg(&self) -> Result<Tensor> {
        let y = self.unary_map(UnaryOp::Neg)?;
        Ok(y.record("neg", &[self], |g, _, _| Ok(vec![Some(g.neg()?)])))
    }

    pub fn exp(&self) -> Result<Tensor> {
        self.unary_with_grad(UnaryOp::Exp, |_, y| Ok(y.clone()))
    }

    pub fn log(&self) -> Result<Tensor> {
        self.unary_with_grad(UnaryOp::Log, |x, _| x.unary_map(UnaryOp::Recip))
    }

    pub fn sqrt(&self) -> Result<Tensor> {
        // d√x = 1 / (2√x)
        self.unary_with_grad(UnaryOp::Sqrt, |_, y| {
            y.unary_map(UnaryOp::Recip)?
                .unary_map(UnaryOp::Affine { mul: 0.5, add: 0.0 })
        })
    }

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

    pub fn sqr(&self) -> Result<Tensor> {
        self.powf(2.0)
    }

    /// x·mul + add.
    pub fn affine(&self, mul: f64, add: f64) -> Result<Tensor> {
        let y = self.unary_map(UnaryOp::Affine { mul, add })?;
        Ok(y.record("affine", &[self], move |g, _, _| Ok(vec![Some(g.affine(mul, 0.0)?)])))
    }

    pub fn add_scalar(&self, v: f64) -> Result<Tensor> {
        self.affine(1.0, v)
    }

    pub fn sub_scalar(&self, v: f64) -> Result<Tensor> {
        self.affine(1.0, -v)
    }

    pub fn mul_scalar(&self, v: f64) -> Result<Tensor> {
        self.affine(v, 0.0)
    }

    pub fn div_scalar(&self, v: f64) -> Result<Tensor> {
        self.affine(1.0 / v, 0.0)
    }
}
