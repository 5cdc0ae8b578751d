//! Unary maps on the CPU (exp, log, tanh, GELU, ...), and GELU's fused backward.

use super::{map, map_float_storage, zip_map, CpuFloat};
use crate::backend::cpu::CpuStorage;
use crate::backend::op::{gelu_derivative, UnaryOp};
use crate::tensor::dtype::DType;
use crate::tensor::layout::Layout;
use crate::{Error, Result};

/// Expands `$body` once per variant with `$o` bound to that variant, so each loop is
/// compiled for one op and the `match` inside `apply` folds away instead of running per element.
/// Variants without data are bound as consts: a closure that captured the op as a value would
/// carry it into `map`'s loop as data, and the match would run per element after all.
macro_rules! per_unary_op {
    ($op:expr, $o:ident => $body:expr) => {
        match $op {
            UnaryOp::Neg => {
                #[allow(non_upper_case_globals)]
                const $o: UnaryOp = UnaryOp::Neg;
                $body
            }
            UnaryOp::Exp => {
                #[allow(non_upper_case_globals)]
                const $o: UnaryOp = UnaryOp::Exp;
                $body
            }
            UnaryOp::Log => {
                #[allow(non_upper_case_globals)]
                const $o: UnaryOp = UnaryOp::Log;
                $body
            }
            UnaryOp::Sqrt => {
                #[allow(non_upper_case_globals)]
                const $o: UnaryOp = UnaryOp::Sqrt;
                $body
            }
            UnaryOp::Tanh => {
                #[allow(non_upper_case_globals)]
                const $o: UnaryOp = UnaryOp::Tanh;
                $body
            }
            UnaryOp::Gelu => {
                #[allow(non_upper_case_globals)]
                const $o: UnaryOp = UnaryOp::Gelu;
                $body
            }
            UnaryOp::Relu => {
                #[allow(non_upper_case_globals)]
                const $o: UnaryOp = UnaryOp::Relu;
                $body
            }
            UnaryOp::Step => {
                #[allow(non_upper_case_globals)]
                const $o: UnaryOp = UnaryOp::Step;
                $body
            }
            UnaryOp::Silu => {
                #[allow(non_upper_case_globals)]
                const $o: UnaryOp = UnaryOp::Silu;
                $body
            }
            UnaryOp::SiluDerivative => {
                #[allow(non_upper_case_globals)]
                const $o: UnaryOp = UnaryOp::SiluDerivative;
                $body
            }
            UnaryOp::Recip => {
                #[allow(non_upper_case_globals)]
                const $o: UnaryOp = UnaryOp::Recip;
                $body
            }
            UnaryOp::Powf(p) => {
                let $o = UnaryOp::Powf(p);
                $body
            }
            UnaryOp::Affine { mul, add } => {
                let $o = UnaryOp::Affine { mul, add };
                $body
            }
            UnaryOp::Abs => {
                #[allow(non_upper_case_globals)]
                const $o: UnaryOp = UnaryOp::Abs;
                $body
            }
            UnaryOp::Sign => {
                #[allow(non_upper_case_globals)]
                const $o: UnaryOp = UnaryOp::Sign;
                $body
            }
            UnaryOp::Sigmoid => {
                #[allow(non_upper_case_globals)]
                const $o: UnaryOp = UnaryOp::Sigmoid;
                $body
            }
            UnaryOp::GeluErf => {
                #[allow(non_upper_case_globals)]
                const $o: UnaryOp = UnaryOp::GeluErf;
                $body
            }
            UnaryOp::GeluErfDerivative => {
                #[allow(non_upper_case_globals)]
                const $o: UnaryOp = UnaryOp::GeluErfDerivative;
                $body
            }
            UnaryOp::Clamp { min, max } => {
                let $o = UnaryOp::Clamp { min, max };
                $body
            }
        }
    };
}
pub fn unary(op: UnaryOp, s: &CpuStorage, layout: &Layout) -> Result<CpuStorage> {
    fn run<T: CpuFloat>(op: UnaryOp, v: &[T], layout: &Layout) -> Result<Vec<T>> {
        // inline(always): inlined into `map`'s loop, the op vectorises; called per element, it cannot
        per_unary_op!(op, o => map(op.name(), v, layout, #[inline(always)] move |x| T::down(o.apply(x.up()))))
    }
    Ok(map_float_storage!(op.name(), s, v => run(op, v, layout)?))
}
/// `g·gelu'(z)` elementwise (GELU's backward, one pass instead of a derivative map and a multiply);
/// both layouts have one shape.
pub fn gelu_backward(g: &CpuStorage, lg: &Layout, z: &CpuStorage, lz: &Layout) -> Result<CpuStorage> {
    fn run<T: CpuFloat>(g: &[T], lg: &Layout, z: &[T], lz: &Layout) -> Result<Vec<T>> {
        zip_map(
            "gelu_backward",
            g,
            lg,
            z,
            lz,
            #[inline(always)]
            |g, z| T::down(g.up() * gelu_derivative(z.up())),
        )
    }
    const OP: &str = "gelu_backward";
    Ok(match (g, z) {
        (CpuStorage::F32(g), CpuStorage::F32(z)) => CpuStorage::F32(run(g, lg, z, lz)?),
        (CpuStorage::F64(g), CpuStorage::F64(z)) => CpuStorage::F64(run(g, lg, z, lz)?),
        (CpuStorage::BF16(g), CpuStorage::BF16(z)) => CpuStorage::BF16(run(g, lg, z, lz)?),
        (CpuStorage::F16(g), CpuStorage::F16(z)) => CpuStorage::F16(run(g, lg, z, lz)?),
        (CpuStorage::U32(_), CpuStorage::U32(_)) => return Err(Error::not_float(OP, DType::U32)),
        _ => return Err(Error::dtype_mismatch(OP, g.dtype(), z.dtype())),
    })
}
