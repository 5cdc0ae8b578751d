//! Copies between views on the CPU: a contiguous copy of a view, and writing one view into another.

use super::{gather, with_cpu_storage, CpuStorage};
use crate::tensor::dtype::WithDType;
use crate::tensor::layout::Layout;

/// A contiguous copy of the viewed elements, same dtype.
pub fn contiguous(s: &CpuStorage, layout: &Layout) -> crate::Result<CpuStorage> {
    Ok(with_cpu_storage!(s, v => CpuStorage::from_vec(gather("contiguous", v, layout)?)))
}

/// Writes `src` (viewed through `ls`) into the positions of `dst` viewed through `ld`.
pub fn assign(dst: &mut CpuStorage, ld: &Layout, src: &CpuStorage, ls: &Layout) {
    fn copy<T: WithDType>(dst: &mut [T], ld: &Layout, src: &[T], ls: &Layout) {
        match (ld.contiguous_range(), ls.contiguous_range()) {
            (Some(rd), Some(rs)) => dst[rd].copy_from_slice(&src[rs]),
            _ => ld.offsets().zip(ls.offsets()).for_each(|(d, s)| dst[d] = src[s]),
        }
    }
    match (dst, src) {
        (CpuStorage::F32(d), CpuStorage::F32(s)) => copy(d, ld, s, ls),
        (CpuStorage::F64(d), CpuStorage::F64(s)) => copy(d, ld, s, ls),
        (CpuStorage::BF16(d), CpuStorage::BF16(s)) => copy(d, ld, s, ls),
        (CpuStorage::F16(d), CpuStorage::F16(s)) => copy(d, ld, s, ls),
        (CpuStorage::U32(d), CpuStorage::U32(s)) => copy(d, ld, s, ls),
        _ => unreachable!("assign: dtypes are checked by the caller"),
    }
}
