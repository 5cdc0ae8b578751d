//! Gathering and scattering along one dim by U32 indices (index_select, its adjoint
//! index_add). Inputs are contiguous and indices already checked against the dim size.

use super::{alloc, dispatch_float, typed, CpuFloat};
use crate::backend::cpu::{with_cpu_storage, CpuStorage};
use crate::Result;
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// `[outer, size, inner]` → `[outer, ids.len(), inner]`, picking `ids` along the middle dim.
pub fn index_select(s: &CpuStorage, outer: usize, size: usize, inner: usize, ids: &[u32]) -> Result<CpuStorage> {
    Ok(with_cpu_storage!(s, v => {
        let mut out = alloc::with_capacity("index_select", outer * ids.len() * inner)?;
        for o in 0..outer {
            for &id in ids {
                let start = (o * size + id as usize) * inner;
                out.extend_from_slice(&v[start..start + inner]);
            }
        }
        CpuStorage::from_vec(out)
    }))
}

/// The adjoint of index_select: zeros `[outer, size, inner]` with `src` `[outer, order.len(), inner]`
/// added at the rows of its ids, bucketed by [`crate::backend::op::bucket_ids`]. Each output row sums its bucket in
/// index order, in f64: deterministic, and parallel over the output rows.
pub fn index_add(
    src: &CpuStorage,
    outer: usize,
    size: usize,
    inner: usize,
    order: &[u32],
    starts: &[u32],
) -> Result<CpuStorage> {
    fn run<T: CpuFloat>(
        src: &CpuStorage,
        outer: usize,
        size: usize,
        inner: usize,
        order: &[u32],
        starts: &[u32],
    ) -> Result<CpuStorage> {
        let src = typed::<T>(src);
        let n = outer * size * inner;
        // every row is written below (zeros, or its bucket's sum), so the output starts uninitialised
        let mut out = alloc::with_capacity("index_add", n)?;
        if inner > 0 {
            let zero = T::from_f64(0.0);
            out.spare_capacity_mut()[..n]
                .par_chunks_mut(inner)
                .enumerate()
                .for_each(|(row, dst)| {
                    let (o, r) = (row / size, row % size);
                    let bucket = &order[starts[r] as usize..starts[r + 1] as usize];
                    if bucket.is_empty() {
                        // most rows of a token table's gradient: no accumulator, no conversion
                        dst.fill(MaybeUninit::new(zero));
                        return;
                    }
                    let mut acc = vec![0f64; inner];
                    for &j in bucket {
                        let from = (o * order.len() + j as usize) * inner;
                        for (a, s) in acc.iter_mut().zip(&src[from..from + inner]) {
                            *a += s.to_f64();
                        }
                    }
                    for (d, a) in dst.iter_mut().zip(acc) {
                        d.write(T::from_f64(a));
                    }
                });
        }
        // SAFETY: the capacity is n, and the rows of `inner` elements tile it, each written in full
        // above (n is 0 when inner is)
        unsafe { out.set_len(n) };
        Ok(CpuStorage::from_vec(out))
    }
    dispatch_float!("index_add", src.dtype(), run(src, outer, size, inner, order, starts))
}

/// `[n, c]` rows `wte[ids[p]] + wpe[p % t]` (GPT's input embedding), added in the arithmetic type.
pub fn token_position_embedding(
    ids: &[u32],
    wte: &CpuStorage,
    wpe: &CpuStorage,
    t: usize,
    c: usize,
) -> Result<CpuStorage> {
    fn run<T: CpuFloat>(ids: &[u32], wte: &CpuStorage, wpe: &CpuStorage, t: usize, c: usize) -> Result<CpuStorage> {
        let (wte, wpe) = (typed::<T>(wte), typed::<T>(wpe));
        let mut out = alloc::filled("token_position_embedding", ids.len() * c, T::from_f64(0.0))?;
        if c > 0 {
            out.par_chunks_mut(c).enumerate().for_each(|(p, row)| {
                let tok = &wte[ids[p] as usize * c..][..c];
                let pos = &wpe[(p % t) * c..][..c];
                for ((o, a), b) in row.iter_mut().zip(tok).zip(pos) {
                    *o = T::down(a.up() + b.up());
                }
            });
        }
        Ok(CpuStorage::from_vec(out))
    }
    dispatch_float!("token_position_embedding", wte.dtype(), run(ids, wte, wpe, t, c))
}
