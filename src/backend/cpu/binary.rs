//! Binary maps on the CPU over broadcast views: arithmetic (keeps the dtype) and comparisons
//! (U32 0/1).

use super::{zip_map, CpuFloat};
use crate::backend::cpu::CpuStorage;
use crate::backend::op::BinaryOp;
use crate::tensor::dtype::{DType, WithDType};
use crate::tensor::layout::Layout;
use crate::{Error, Result};

/// As `per_unary_op` (cpu/unary.rs), for the arithmetic binary ops: expands `$body` once per
/// variant with `$o` bound to that variant as a const, so the `match` in `apply` folds away.
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
