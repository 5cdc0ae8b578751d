//! `where_cond` on the CPU: `cond ? on_true : on_false` elementwise.

use super::{alloc, map};
use crate::backend::cpu::CpuStorage;
use crate::tensor::dtype::WithDType;
use crate::tensor::layout::Layout;
use crate::{Error, Result};

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
    alloc::collect(
        OP,
        picked.len(),
        picked
            .iter()
            .zip(a.into_iter().zip(b))
            .map(|(&p, (x, y))| if p { x } else { y }),
    )
}
