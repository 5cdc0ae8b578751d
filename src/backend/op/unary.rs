//! The elementwise functions of one value: their names and their definition for every float type
//! (`apply`), which the CPU backend runs and the kernels in unary.cu mirror.

use super::exp::Exp;

/// √(2/π), GPT-2's GELU constant.
const SQRT_2_OVER_PI: f64 = 0.797_884_560_802_865_4;
const GELU_CUBIC: f64 = 0.044_715;
/// 1/√2 and 1/√(2π), the exact GELU's constants.
const FRAC_1_SQRT_2: f64 = std::f64::consts::FRAC_1_SQRT_2;
const FRAC_1_SQRT_2PI: f64 = 0.398_942_280_401_432_7;

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
    /// |x|.
    Abs,
    /// −1, 0 or 1 by the sign of x (abs's derivative; NaN stays NaN).
    Sign,
    /// σ(x) = 1 / (1 + e⁻ˣ).
    Sigmoid,
    /// x limited to [min, max] (NaN stays NaN, as PyTorch's `clamp`).
    Clamp {
        min: f64,
        max: f64,
    },
    /// The exact GELU, x·Φ(x) = ½x(1 + erf(x/√2)) (PyTorch's `gelu(approximate="none")`).
    GeluErf,
    /// d gelu_erf / dx = Φ(x) + x·φ(x) (gelu_erf's derivative).
    GeluErfDerivative,
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
            UnaryOp::Abs => "abs",
            UnaryOp::Sign => "sign",
            UnaryOp::Sigmoid => "sigmoid",
            UnaryOp::Clamp { .. } => "clamp",
            UnaryOp::GeluErf => "gelu_erf",
            UnaryOp::GeluErfDerivative => "gelu_erf_derivative",
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
            UnaryOp::Abs => x.abs(),
            UnaryOp::Sign => {
                if x > T::zero() {
                    T::one()
                } else if x < T::zero() {
                    -T::one()
                } else {
                    x // ±0 and NaN
                }
            }
            // e⁻ˣ = inf gives 0, never NaN
            UnaryOp::Sigmoid => T::one() / (T::one() + (-x).exp_fast()),
            UnaryOp::Clamp { min, max } => {
                if x < c(min) {
                    c(min)
                } else if x > c(max) {
                    c(max)
                } else {
                    x
                }
            }
            UnaryOp::GeluErf => c(0.5) * x * (T::one() + (x * c(FRAC_1_SQRT_2)).erf()),
            UnaryOp::GeluErfDerivative => {
                let cdf = c(0.5) * (T::one() + (x * c(FRAC_1_SQRT_2)).erf());
                let pdf = c(FRAC_1_SQRT_2PI) * (c(-0.5) * x * x).exp_fast();
                cdf + x * pdf
            }
        }
    }
}

/// d gelu / dx in the arithmetic type: with gelu(x) = x·σ(2u), u = √(2/π)·(x + 0.044715·x³),
/// d/dx x·σ(2u) = σ + x·2σ(1 − σ)·du/dx (the CPU's `gelu_backward`; the kernels' is in unary.cu).
#[inline(always)]
pub fn gelu_derivative<T: Exp>(x: T) -> T {
    let c = |v: f64| T::from(v).expect("every float type holds these constants");
    let u = c(SQRT_2_OVER_PI) * (x + c(GELU_CUBIC) * x * x * x);
    let s = T::one() / (T::one() + (c(-2.0) * u).exp_fast());
    let du = c(SQRT_2_OVER_PI) * (T::one() + c(3.0 * GELU_CUBIC) * x * x);
    s + c(2.0) * x * s * (T::one() - s) * du
}

/// (gelu(x), gelu'(x)) from one exponential: the bits of `UnaryOp::Gelu.apply(x)` and of
/// [`gelu_derivative`]`(x)`, the same operations in the same order (the CPU's matmul epilogue keeps
/// the derivative for the backward while it computes the GELU).
#[inline(always)]
pub fn gelu_and_derivative<T: Exp>(x: T) -> (T, T) {
    let c = |v: f64| T::from(v).expect("every float type holds these constants");
    let u = c(SQRT_2_OVER_PI) * (x + c(GELU_CUBIC) * x * x * x);
    let denom = T::one() + (c(-2.0) * u).exp_fast();
    let s = T::one() / denom;
    let du = c(SQRT_2_OVER_PI) * (T::one() + c(3.0 * GELU_CUBIC) * x * x);
    (x / denom, s + c(2.0) * x * s * (T::one() - s) * du)
}

/// silu(x) = x·σ(x) = x / (1 + e⁻ˣ) in the arithmetic type: e⁻ˣ = inf (x below about −88 in f32)
/// gives −0, never NaN. Shared by `UnaryOp::Silu` and the CPU's swiglu (backend/cpu/swiglu.rs).
#[inline(always)]
pub fn silu<T: Exp>(x: T) -> T {
    x / (T::one() + (-x).exp_fast())
}

/// silu'(x) = σ(x)·(1 + x·(1 − σ(x))) in the arithmetic type (σ = 0 where e⁻ˣ overflows: the
/// derivative is 0 there, as its limit).
#[inline(always)]
pub fn silu_derivative<T: Exp>(x: T) -> T {
    let s = T::one() / (T::one() + (-x).exp_fast());
    s * (T::one() + x * (T::one() - s))
}
