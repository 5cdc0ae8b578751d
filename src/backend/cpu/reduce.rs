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

fn run<T: CpuFloat>(op: ReduceOp, v: &[T], outer: &Layout, inner: &Layout) -> Vec<T>
where
    T::Acc: Into<f64>,
{
    if op == ReduceOp::Sum {
        if let Some(columns) = leading_sum(v, outer, inner) {
            return columns;
        }
    }
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

/// Columns of the reduced block per task in [`leading_sum`]: 2 KiB of f64 sums, in L1.
const COLUMNS: usize = 256;

/// The sum over the leading dims of a contiguous tensor (a bias's gradient: `[rows, n]` summed
/// over the rows; wpe's: `[B, T, C]` over B), as column sums: each output is the same f64 sum
/// in the same order (row after row, from -0.0 as `Iterator::sum`) as [`fold`] over its strided
/// column, so the same bits, but read row by row, one block of [`COLUMNS`] outputs per task, the
/// adds vectorised across columns. The strided walk per output took 8% of a bf16 GPT-2 step on
/// one thread (docs/perf.md). `None` when the layout is not of that form.
fn leading_sum<T: CpuFloat>(v: &[T], outer: &Layout, inner: &Layout) -> Option<Vec<T>>
where
    T::Acc: Into<f64>,
{
    // the kept dims: one contiguous run of `width` elements; the reduced ones: the rows of that
    // run, `width` apart, in order
    let width = outer.numel();
    if width < 2 || !outer.is_contiguous() {
        return None;
    }
    let mut expected = width;
    for (&d, &s) in inner.shape().iter().zip(inner.strides()).rev() {
        if d != 1 && s != expected {
            return None;
        }
        expected *= d;
    }
    let (rows, start) = (inner.numel(), outer.offset());
    let v = &v[start..start + rows * width];
    let mut out = vec![T::from_f64(0.0); width];
    let block = |c0: usize, dst: &mut [T]| {
        super::vectorised(
            #[inline(always)]
            || {
                let mut acc = [-0.0f64; COLUMNS];
                let acc = &mut acc[..dst.len()];
                for r in 0..rows {
                    let row = &v[r * width + c0..][..acc.len()];
                    for (a, &x) in acc.iter_mut().zip(row) {
                        *a += x.up().into();
                    }
                }
                for (d, &a) in dst.iter_mut().zip(acc.iter()) {
                    *d = T::from_f64(a);
                }
            },
        )
    };
    if rows * width >= PARALLEL_MIN {
        out.par_chunks_mut(COLUMNS)
            .enumerate()
            .for_each(|(i, dst)| block(i * COLUMNS, dst));
    } else {
        out.chunks_mut(COLUMNS)
            .enumerate()
            .for_each(|(i, dst)| block(i * COLUMNS, dst));
    }
    Some(out)
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
