//! Copies between views on the CPU: a contiguous copy of a view, and writing one view into another.

use super::map::Rows;
use super::{gather, with_cpu_storage, CpuStorage};
use crate::tensor::dtype::WithDType;
use crate::tensor::layout::Layout;

/// A contiguous copy of the viewed elements, same dtype.
pub fn contiguous(s: &CpuStorage, layout: &Layout) -> crate::Result<CpuStorage> {
    Ok(with_cpu_storage!(s, v => CpuStorage::from_vec(gather("contiguous", v, layout)?)))
}

/// Writes `src` (viewed through `ls`) into the positions of `dst` viewed through `ld`.
pub fn assign(dst: &mut CpuStorage, ld: &Layout, src: &CpuStorage, ls: &Layout) -> crate::Result<()> {
    fn copy<T: WithDType>(dst: &mut [T], ld: &Layout, src: &[T], ls: &Layout) -> crate::Result<()> {
        if let (Some(rd), Some(rs)) = (ld.contiguous_range(), ls.contiguous_range()) {
            dst[rd].copy_from_slice(&src[rs]);
            return Ok(());
        }
        // row by row along the last dim: a KV cache's append writes (B, nh, t) rows of hs into a
        // strided buffer, one slice copy per row instead of an index walk per element
        let (rd, rs) = (Rows::of(ld), Rows::of(ls));
        let w = rd.width;
        for (d, s) in rd.starts().zip(rs.starts()) {
            if rd.stride == 1 && rs.stride == 1 {
                dst[d..d + w].copy_from_slice(&src[s..s + w]);
            } else {
                (0..w).for_each(|i| dst[d + i * rd.stride] = src[s + i * rs.stride]);
            }
        }
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    /// `assign` between strided views equals the element-by-element walk of both layouts:
    /// rows with unit stride on both sides (a permuted source into a narrowed buffer, as a KV
    /// cache's append), rows with a stride (a transposed source), and a rank-0 view.
    #[test]
    fn assign_between_views_equals_the_element_walk() {
        // dst buffer (2, 3, 8, 4), written at positions 5..7 of dim 2; src (2, 2, 3, 4) viewed
        // as (2, 3, 2, 4) by a permutation
        let dst_full = Layout::contiguous(&[2, 3, 8, 4]);
        let dst = Layout::new(vec![2, 3, 2, 4], dst_full.strides().to_vec(), 5 * 4);
        let src_permuted = Layout::new(vec![2, 3, 2, 4], vec![24, 4, 12, 1], 0);
        // src (4, 3) seen transposed as (3, 4): last stride 3
        let transposed = Layout::new(vec![3, 4], vec![1, 3], 0);
        let dst_2d = Layout::new(vec![3, 4], vec![8, 1], 2);
        let scalar = (Layout::new(vec![], vec![], 7), Layout::new(vec![], vec![], 3));
        for (ld, ls, dst_len, src_len) in [
            (dst, src_permuted, 2 * 3 * 8 * 4, 48),
            (dst_2d, transposed, 30, 12),
            (scalar.0, scalar.1, 10, 5),
        ] {
            let src: Vec<f32> = (0..src_len).map(|i| i as f32).collect();
            let mut want = vec![-1f32; dst_len];
            ld.offsets().zip(ls.offsets()).for_each(|(d, s)| want[d] = src[s]);
            let mut got = CpuStorage::F32(vec![-1f32; dst_len]);
            assign(&mut got, &ld, &CpuStorage::F32(src), &ls).unwrap();
            let CpuStorage::F32(got) = got else { unreachable!() };
            assert_eq!(got, want, "dst {ld:?} src {ls:?}");
        }
    }
}
