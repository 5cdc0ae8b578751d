//! Elementwise kernels on the CPU: unary maps, binary maps over broadcast views, `where`, and
//! GELU's fused backward.

use super::{map, map_float_storage, zip_map, CpuFloat};
use crate::ops::binary::BinaryOp;
use crate::ops::unary::{gelu_derivative, UnaryOp};
use crate::tensor::dtype::{DType, WithDType};
use crate::tensor::layout::Layout;
use crate::tensor::storage::CpuStorage;
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
        }
    };
}

/// As `per_unary_op`, for the arithmetic binary ops.
macro_rules! per_binary_op {
    ($op:expr, $o:ident => $body:expr) => {
        match $op {
            BinaryOp::Add => {
                #[allow(non_upper_case_globals)]
                const $o: BinaryOp = BinaryOp::Add;
                $body
            }
            BinaryOp::Sub => {
                #[allow(non_upper_case_globals)]
                const $o: BinaryOp = BinaryOp::Sub;
                $body
            }
            BinaryOp::Mul => {
                #[allow(non_upper_case_globals)]
                const $o: BinaryOp = BinaryOp::Mul;
                $body
            }
            BinaryOp::Div => {
                #[allow(non_upper_case_globals)]
                const $o: BinaryOp = BinaryOp::Div;
                $body
            }
            BinaryOp::Maximum => {
                #[allow(non_upper_case_globals)]
                const $o: BinaryOp = BinaryOp::Maximum;
                $body
            }
            BinaryOp::Minimum => {
                #[allow(non_upper_case_globals)]
                const $o: BinaryOp = BinaryOp::Minimum;
                $body
            }
            other => {
                let $o = other;
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

/// `op` elementwise; both layouts already have the (broadcast) output shape.
/// Arithmetic keeps the dtype; comparisons return U32 0/1.
pub fn binary(op: BinaryOp, a: &CpuStorage, la: &Layout, b: &CpuStorage, lb: &Layout) -> Result<CpuStorage> {
    fn arith<T: CpuFloat>(op: BinaryOp, a: &[T], la: &Layout, b: &[T], lb: &Layout) -> Result<Vec<T>> {
        per_binary_op!(op, o => zip_map(op.name(), a, la, b, lb, #[inline(always)] move |x, y| T::down(o.apply(x.up(), y.up()))))
    }
    fn compare<T: WithDType>(op: BinaryOp, a: &[T], la: &Layout, b: &[T], lb: &Layout) -> Result<Vec<u32>> {
        zip_map(op.name(), a, la, b, lb, |x, y| op.compare(x, y) as u32)
    }
    if op.is_comparison() {
        return Ok(CpuStorage::U32(match (a, b) {
            (CpuStorage::F32(a), CpuStorage::F32(b)) => compare(op, a, la, b, lb)?,
            (CpuStorage::F64(a), CpuStorage::F64(b)) => compare(op, a, la, b, lb)?,
            (CpuStorage::BF16(a), CpuStorage::BF16(b)) => compare(op, a, la, b, lb)?,
            (CpuStorage::F16(a), CpuStorage::F16(b)) => compare(op, a, la, b, lb)?,
            (CpuStorage::U32(a), CpuStorage::U32(b)) => compare(op, a, la, b, lb)?,
            _ => return Err(Error::dtype_mismatch(op.name(), a.dtype(), b.dtype())),
        }));
    }
    Ok(match (a, b) {
        (CpuStorage::F32(a), CpuStorage::F32(b)) => CpuStorage::F32(arith(op, a, la, b, lb)?),
        (CpuStorage::F64(a), CpuStorage::F64(b)) => CpuStorage::F64(arith(op, a, la, b, lb)?),
        (CpuStorage::BF16(a), CpuStorage::BF16(b)) => CpuStorage::BF16(arith(op, a, la, b, lb)?),
        (CpuStorage::F16(a), CpuStorage::F16(b)) => CpuStorage::F16(arith(op, a, la, b, lb)?),
        (CpuStorage::U32(_), CpuStorage::U32(_)) => return Err(Error::not_float(op.name(), DType::U32)),
        _ => return Err(Error::dtype_mismatch(op.name(), a.dtype(), b.dtype())),
    })
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

/// `cond ? on_true : on_false` elementwise; all three layouts have the output shape.
pub fn where_cond(
    cond: &[u32],
    lc: &Layout,
    t: &CpuStorage,
    lt: &Layout,
    f: &CpuStorage,
    lf: &Layout,
) -> Result<CpuStorage> {
    let picked = map("where_cond", cond, lc, |c| c != 0)?;
    Ok(match (t, f) {
        (CpuStorage::F32(a), CpuStorage::F32(b)) => CpuStorage::F32(select(&picked, a, lt, b, lf)?),
        (CpuStorage::F64(a), CpuStorage::F64(b)) => CpuStorage::F64(select(&picked, a, lt, b, lf)?),
        (CpuStorage::BF16(a), CpuStorage::BF16(b)) => CpuStorage::BF16(select(&picked, a, lt, b, lf)?),
        (CpuStorage::F16(a), CpuStorage::F16(b)) => CpuStorage::F16(select(&picked, a, lt, b, lf)?),
        (CpuStorage::U32(a), CpuStorage::U32(b)) => CpuStorage::U32(select(&picked, a, lt, b, lf)?),
        _ => return Err(Error::dtype_mismatch("where_cond", t.dtype(), f.dtype())),
    })
}

fn select<T: WithDType>(picked: &[bool], a: &[T], la: &Layout, b: &[T], lb: &Layout) -> Result<Vec<T>> {
    const OP: &str = "where_cond";
    let (a, b) = (map(OP, a, la, |x| x)?, map(OP, b, lb, |x| x)?);
    super::alloc::collect(
        OP,
        picked.len(),
        picked
            .iter()
            .zip(a.into_iter().zip(b))
            .map(|(&p, (x, y))| if p { x } else { y }),
    )
}
