//! Reductions (sum, max, min) over any set of dimensions. Sums accumulate in f64.

use super::{map_float_storage, CpuFloat, PARALLEL_MIN};
use crate::backend::cpu::CpuStorage;
use crate::backend::op::ReduceOp;
use crate::tensor::layout::Layout;
use crate::Result;
use rayon::prelude::*;

/// Reduces `dims` (sorted, distinct) of the viewed tensor; the result is contiguous with the
/// kept dims in order (the keepdim shape). Max/min over an empty dim is refused by the caller.
pub fn reduce(op: ReduceOp, s: &CpuStorage, layout: &Layout, dims: &[usize]) -> Result<CpuStorage> {
    let (outer, inner) = layout.split_reduced(dims);
    Ok(map_float_storage!(op.name(), s, v => run(op, v, &outer, &inner)))
}

fn run<T: CpuFloat>(op: ReduceOp, v: &[T], outer: &Layout, inner: &Layout) -> Vec<T> {
    // `inner` has offset 0: the block reduced into the output at storage offset `base` is
    // `base + o` for each offset `o` of `inner`, in the same order for every output, so its
    // contiguity is decided once and no output allocates (wpe's gradient sums 8192 outputs).
    let contiguous = inner.is_contiguous();
    let one = |base: usize| -> T {
        if contiguous {
            fold(op, v[base..base + inner.numel()].iter().copied())
        } else {
            fold(op, inner.offsets().map(|o| v[base + o]))
        }
    };
    let bases: Vec<usize> = outer.offsets().collect();
    if bases.len() > 1 && bases.len() * inner.numel() >= PARALLEL_MIN {
        bases.par_iter().map(|&b| one(b)).collect()
    } else {
        bases.iter().map(|&b| one(b)).collect()
    }
}

fn fold<T: CpuFloat>(op: ReduceOp, xs: impl Iterator<Item = T>) -> T {
    match op {
        ReduceOp::Sum => T::from_f64(xs.map(|x| x.to_f64()).sum()),
        // NaN wins, as in PyTorch: a NaN anywhere must not be hidden by the reduction.
        ReduceOp::Max => xs
            .reduce(|a, b| if a.to_f64().is_nan() || a > b { a } else { b })
            .expect("non-empty"),
        ReduceOp::Min => xs
            .reduce(|a, b| if a.to_f64().is_nan() || a < b { a } else { b })
            .expect("non-empty"),
    }
}
