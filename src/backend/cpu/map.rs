//! Elementwise loops over strided views: `f` of every element ([`map`]) or of two views of one
//! shape ([`zip_map`]), contiguous runs vectorised and split over threads, strided ones walked
//! row by row.

use super::{alloc, vectorised, PARALLEL_MIN};
use crate::tensor::layout::Layout;
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// `f` of every element in row-major logical order (`op` names the caller in an out-of-memory error).
pub fn map<T: Copy + Send + Sync, U: Send + Copy + 'static>(
    op: &'static str,
    data: &[T],
    layout: &Layout,
    f: impl Fn(T) -> U + Send + Sync,
) -> crate::Result<Vec<U>> {
    if let Some(r) = layout.contiguous_range() {
        let data = &data[r];
        return build(
            op,
            data.len(),
            #[inline(always)]
            |out, start| {
                for (o, &x) in out.iter_mut().zip(&data[start..]) {
                    o.write(f(x));
                }
            },
        );
    }
    let rows = Rows::of(layout);
    let n = layout.numel();
    let mut out = alloc::with_capacity(op, n)?;
    rows.for_each(&mut out.spare_capacity_mut()[..n], |row, start| {
        if rows.stride == 1 {
            // rows of contiguous elements (a permuted view with its last dim in place): a
            // loop over slices, which vectorises
            let src = &data[start..start + row.len()];
            for (o, &x) in row.iter_mut().zip(src) {
                o.write(f(x));
            }
        } else {
            for (j, o) in row.iter_mut().enumerate() {
                o.write(f(data[start + j * rows.stride]));
            }
        }
    });
    // SAFETY: the capacity is n, and every row of the view wrote its `width` elements (see
    // `Rows::for_each`).
    unsafe { out.set_len(n) };
    Ok(out)
}

/// `f(a, b)` elementwise over two layouts of the same shape (broadcasts are stride-0 views).
pub fn zip_map<T: Copy + Send + Sync, U: Copy + Send + Sync, V: Send + Copy + 'static>(
    op: &'static str,
    a: &[T],
    la: &Layout,
    b: &[U],
    lb: &Layout,
    f: impl Fn(T, U) -> V + Send + Sync,
) -> crate::Result<Vec<V>> {
    debug_assert_eq!(la.shape(), lb.shape());
    if let (Some(ra), Some(rb)) = (la.contiguous_range(), lb.contiguous_range()) {
        let (a, b) = (&a[ra], &b[rb]);
        return build(
            op,
            a.len(),
            #[inline(always)]
            |out, start| {
                for ((o, &x), &y) in out.iter_mut().zip(&a[start..]).zip(&b[start..]) {
                    o.write(f(x, y));
                }
            },
        );
    }
    let (rows_a, rows_b) = (Rows::of(la), Rows::of(lb));
    let n = la.numel();
    let mut out = alloc::with_capacity(op, n)?;
    rows_a.zip_for_each(&rows_b, &mut out.spare_capacity_mut()[..n], |row, start_a, start_b| {
        if rows_a.stride == 1 && rows_b.stride == 1 {
            let (a, b) = (&a[start_a..start_a + row.len()], &b[start_b..start_b + row.len()]);
            for ((o, &x), &y) in row.iter_mut().zip(a).zip(b) {
                o.write(f(x, y));
            }
        } else {
            for (j, o) in row.iter_mut().enumerate() {
                o.write(f(a[start_a + j * rows_a.stride], b[start_b + j * rows_b.stride]));
            }
        }
    });
    // SAFETY: the capacity is n, and every row of the view wrote its `width` elements (see
    // `Rows::zip_for_each`).
    unsafe { out.set_len(n) };
    Ok(out)
}

/// Elements per task when a contiguous elementwise loop is split over threads.
const CHUNK: usize = 1 << 14;

/// A vector of `n` elements written by `fill(out, start)`, which must write every element of
/// `out`: the elements `start..start + out.len()`. The pieces are `CHUNK` long and run on
/// rayon's pool when `n` is large. `fill` is a plain loop over slices (`#[inline(always)]`),
/// so the compiler vectorises it (an iterator `collect` per element does not), with AVX2 where
/// the CPU has it ([`vectorised`]), and the output is written once, never zeroed first.
fn build<U: Send + 'static>(
    op: &'static str,
    n: usize,
    fill: impl Fn(&mut [MaybeUninit<U>], usize) + Send + Sync,
) -> crate::Result<Vec<U>> {
    let mut out = alloc::with_capacity(op, n)?;
    let spare = &mut out.spare_capacity_mut()[..n];
    if n >= PARALLEL_MIN {
        spare.par_chunks_mut(CHUNK).enumerate().for_each(|(i, piece)| {
            vectorised(
                #[inline(always)]
                || fill(piece, i * CHUNK),
            )
        });
    } else {
        vectorised(
            #[inline(always)]
            || fill(spare, 0),
        );
    }
    // SAFETY: `fill` wrote all n elements (its contract; every caller zips the whole output
    // with inputs at least as long), and the capacity is n.
    unsafe { out.set_len(n) };
    Ok(out)
}

/// A strided layout seen as rows along its last dim: where each row starts (the offsets of the
/// `outer` dims, computed as needed: no list of them is allocated), and the stride within a row.
/// Walking rows keeps the per-element cost of a view to one multiply-add.
pub(super) struct Rows {
    outer: Layout,
    pub(super) width: usize,
    pub(super) stride: usize,
}

impl Rows {
    pub(super) fn of(layout: &Layout) -> Rows {
        let Some(last) = layout.rank().checked_sub(1) else {
            // a scalar: one row of one element
            return Rows {
                outer: layout.clone(),
                width: 1,
                stride: 0,
            };
        };
        Rows {
            outer: Layout::new(&layout.shape()[..last], &layout.strides()[..last], layout.offset()),
            width: layout.shape()[last],
            stride: layout.strides()[last],
        }
    }

    /// The storage offset of the first element of row `r` (row-major over the outer dims).
    fn start(&self, mut r: usize) -> usize {
        let mut offset = self.outer.offset();
        for (&size, &stride) in self.outer.shape().iter().zip(self.outer.strides()).rev() {
            offset += (r % size) * stride;
            r /= size;
        }
        offset
    }

    /// The storage offsets of every row's first element, in order.
    pub(super) fn starts(&self) -> impl Iterator<Item = usize> + '_ {
        self.outer.offsets()
    }

    /// Calls `f(out_row, row_start)` for every row, in parallel when there is enough work. `out`
    /// holds the view's elements in row-major order (rows of `width`): every
    /// element is in exactly one `out_row`.
    fn for_each<V: Send>(&self, out: &mut [V], f: impl Fn(&mut [V], usize) + Send + Sync) {
        self.zip_for_each(self, out, |row, start, _| f(row, start));
    }

    /// As `for_each`, walking the rows of two layouts of one shape together.
    fn zip_for_each<V: Send>(&self, other: &Rows, out: &mut [V], f: impl Fn(&mut [V], usize, usize) + Send + Sync) {
        if self.width == 0 {
            return;
        }
        if out.len() >= PARALLEL_MIN {
            out.par_chunks_mut(self.width)
                .enumerate()
                .for_each(|(r, row)| f(row, self.start(r), other.start(r)));
        } else {
            out.chunks_mut(self.width)
                .zip(self.starts().zip(other.starts()))
                .for_each(|(row, (a, b))| f(row, a, b));
        }
    }
}

/// The elements in row-major logical order, copied into a new vector.
pub fn gather<T: Copy + Send + Sync + 'static>(op: &'static str, data: &[T], layout: &Layout) -> crate::Result<Vec<T>> {
    map(op, data, layout, |x| x)
}
