//! Gathering and scattering along one dim by U32 indices (index_select, its adjoint
//! index_add). Inputs are contiguous and indices already checked against the dim size.

use super::{dispatch_float, typed, CpuFloat};
use crate::tensor::storage::{with_cpu_storage, CpuStorage};
use crate::Result;

/// `[outer, size, inner]` → `[outer, ids.len(), inner]`, picking `ids` along the middle dim.
pub fn index_select(s: &CpuStorage, outer: usize, size: usize, inner: usize, ids: &[u32]) -> CpuStorage {
    with_cpu_storage!(s, v => {
        let mut out = Vec::with_capacity(outer * ids.len() * inner);
        for o in 0..outer {
            for &id in ids {
                let start = (o * size + id as usize) * inner;
                out.extend_from_slice(&v[start..start + inner]);
            }
        }
        CpuStorage::from_vec(out)
    })
}

/// The adjoint of index_select: zeros `[outer, size, inner]` with `src` `[outer, ids.len(), inner]`
/// added at the rows `ids` (repeated ids accumulate, in index order: deterministic).
pub fn index_add(src: &CpuStorage, outer: usize, size: usize, inner: usize, ids: &[u32]) -> Result<CpuStorage> {
    fn run<T: CpuFloat>(src: &CpuStorage, outer: usize, size: usize, inner: usize, ids: &[u32]) -> CpuStorage {
        let src = typed::<T>(src);
        let mut acc = vec![0f64; outer * size * inner];
        for o in 0..outer {
            for (j, &id) in ids.iter().enumerate() {
                let from = (o * ids.len() + j) * inner;
                let to = (o * size + id as usize) * inner;
                for (a, s) in acc[to..to + inner].iter_mut().zip(&src[from..from + inner]) {
                    *a += s.to_f64();
                }
            }
        }
        CpuStorage::from_vec(acc.into_iter().map(T::from_f64).collect::<Vec<T>>())
    }
    Ok(dispatch_float!(
        "index_add",
        src.dtype(),
        run(src, outer, size, inner, ids)
    ))
}
