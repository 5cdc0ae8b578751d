//! The CPU backend. Functions here take storage plus layout and return fresh contiguous
//! storage; they know nothing of autograd. Large contiguous work is split over threads with
//! rayon; BF16/F16 are computed in f32. `reference` holds the naive f64 versions the fast
//! paths are tested against.

pub mod adamw;
pub mod alloc;
pub mod attention;
pub mod elementwise;
pub mod exp;
pub mod gemm;
pub mod index;
pub mod loss;
pub mod matmul;
pub mod norm;
pub mod reduce;
pub mod reference;
pub mod softmax;

use crate::tensor::dtype::{DType, WithDType};
use crate::tensor::layout::Layout;
use crate::tensor::storage::{with_cpu_storage, CpuStorage};
use half::{bf16, f16};
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// Below this many elements, threads cost more than they save.
pub(crate) const PARALLEL_MIN: usize = 1 << 15;

/// Runs `f` compiled with AVX2 and FMA enabled where the CPU has them (x86-64), else as it is.
/// The crate is built for plain x86-64, whose vectors are SSE2's four f32 lanes; inlined into
/// the wrapper below, a loop over slices gets eight. Results are the same bits either way:
/// Rust never fuses a multiply and an add on its own, so enabling FMA changes no arithmetic,
/// only the width of the vectors the same operations run on. `f` must be a leaf loop (work it
/// hands to rayon runs elsewhere, without the features), marked `#[inline(always)]` so that it
/// is compiled inside the wrapper.
#[inline(always)]
pub(crate) fn vectorised<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    if gemm::avx2_fma() {
        #[target_feature(enable = "avx2,fma")]
        unsafe fn wide<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        // SAFETY: the CPU has AVX2 and FMA (checked just above).
        return unsafe { wide(f) };
    }
    f()
}

/// Partial results kept by [`lane_fold`]: eight, one AVX2 vector of f32.
const FOLD_LANES: usize = 8;

/// Folds `f(i)` over `i in 0..n` as `FOLD_LANES` interleaved partial folds, i into partial
/// i mod `FOLD_LANES`, which are combined in order at the end. The result is deterministic (the
/// order depends only on n), and the loop vectorises, where one running fold is a chain of
/// dependent adds that runs at one element per add latency: the row reductions (layer norm's
/// mean and variance, softmax's max and sum, the gradient norm) were the slowest loops of a
/// small model's step. `f` indexes slices the caller has cut to exactly n elements, so the
/// compiler drops the bounds checks.
#[inline(always)]
pub(crate) fn lane_fold<A: Copy>(n: usize, init: A, f: impl Fn(usize) -> A, combine: impl Fn(A, A) -> A) -> A {
    let mut acc = [init; FOLD_LANES];
    let full = n - n % FOLD_LANES;
    for chunk in 0..full / FOLD_LANES {
        for (j, a) in acc.iter_mut().enumerate() {
            *a = combine(*a, f(chunk * FOLD_LANES + j));
        }
    }
    for (a, i) in acc.iter_mut().zip(full..n) {
        *a = combine(*a, f(i));
    }
    acc.into_iter().reduce(&combine).unwrap_or(init)
}

/// Σ f(x) over `x`, by [`lane_fold`].
#[inline(always)]
pub(crate) fn lane_sum<T: Copy, A: Copy + std::ops::Add<Output = A> + num_traits::Zero>(
    x: &[T],
    f: impl Fn(T) -> A,
) -> A {
    lane_fold(x.len(), A::zero(), |i| f(x[i]), |p, q| p + q)
}

/// Keeps freed memory in the process for the next allocation instead of handing it back to
/// the system (glibc's `mallopt`; elsewhere a no-op). A training step frees and reallocates
/// the same few hundred activation buffers every step; by default glibc returns large freed
/// blocks to the kernel, so every step faults their pages in again and zeroes them (measured
/// on the GPT step: 470k page faults in 33 steps, about a quarter of its CPU time). Called
/// by the training loop; idempotent. The cost: the process keeps its peak heap.
pub fn retain_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            // glibc's malloc.h: M_TRIM_THRESHOLD -1, M_TOP_PAD -2, M_MMAP_THRESHOLD -3.
            extern "C" {
                fn mallopt(param: std::ffi::c_int, value: std::ffi::c_int) -> std::ffi::c_int;
            }
            // SAFETY: mallopt only changes allocator tunables; glibc serialises it against
            // concurrent allocation with its own lock, and every value is in its valid range
            // (the mmap threshold at most HEAP_MAX_SIZE / 2 = 32 MiB on 64-bit).
            unsafe {
                mallopt(-1, 1 << 30); // trim the heap's top only past 1 GiB free
                mallopt(-2, 16 << 20); // grow the heap 16 MiB at a time
                mallopt(-3, 32 << 20); // serve blocks below 32 MiB from the heap, not fresh mmaps
            }
        });
    }
}

/// A float element type and its arithmetic type: f32 for f32, bf16 and f16; f64 for f64.
pub trait CpuFloat: WithDType {
    type Acc: exp::Exp + Send + Sync + std::iter::Sum + Copy + std::fmt::Debug;
    fn up(self) -> Self::Acc;
    fn down(v: Self::Acc) -> Self;
}

impl CpuFloat for f32 {
    type Acc = f32;
    fn up(self) -> f32 {
        self
    }
    fn down(v: f32) -> Self {
        v
    }
}

impl CpuFloat for f64 {
    type Acc = f64;
    fn up(self) -> f64 {
        self
    }
    fn down(v: f64) -> Self {
        v
    }
}

impl CpuFloat for bf16 {
    type Acc = f32;
    fn up(self) -> f32 {
        self.to_f32()
    }
    fn down(v: f32) -> Self {
        bf16::from_f32(v)
    }
}

impl CpuFloat for f16 {
    type Acc = f32;
    fn up(self) -> f32 {
        self.to_f32()
    }
    fn down(v: f32) -> Self {
        f16::from_f32(v)
    }
}

/// Runs `$body` with `$v` bound to the typed slice of a float storage and wraps the
/// resulting `Vec` in the same variant; U32 storage returns a dtype error for `$op`.
macro_rules! map_float_storage {
    ($op:expr, $storage:expr, $v:ident => $body:expr) => {
        match $storage {
            $crate::tensor::storage::CpuStorage::F32($v) => $crate::tensor::storage::CpuStorage::F32($body),
            $crate::tensor::storage::CpuStorage::F64($v) => $crate::tensor::storage::CpuStorage::F64($body),
            $crate::tensor::storage::CpuStorage::BF16($v) => $crate::tensor::storage::CpuStorage::BF16($body),
            $crate::tensor::storage::CpuStorage::F16($v) => $crate::tensor::storage::CpuStorage::F16($body),
            $crate::tensor::storage::CpuStorage::U32(_) => {
                return Err($crate::Error::not_float($op, $crate::tensor::dtype::DType::U32))
            }
        }
    };
}
pub(crate) use map_float_storage;

/// `f` of every element in row-major logical order (`op` names the caller in an out-of-memory error).
pub fn map<T: Copy + Send + Sync, U: Send + Copy + Default>(
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
    let rows = Rows::of(layout)?;
    let mut out = alloc::filled(op, layout.numel(), U::default())?;
    rows.for_each(&mut out, |row, start| {
        if rows.stride == 1 {
            // rows of contiguous elements (a permuted view with its last dim in place): a
            // loop over slices, which vectorises
            let src = &data[start..start + row.len()];
            for (o, &x) in row.iter_mut().zip(src) {
                *o = f(x);
            }
        } else {
            for (j, o) in row.iter_mut().enumerate() {
                *o = f(data[start + j * rows.stride]);
            }
        }
    });
    Ok(out)
}

/// `f(a, b)` elementwise over two layouts of the same shape (broadcasts are stride-0 views).
pub fn zip_map<T: Copy + Send + Sync, U: Copy + Send + Sync, V: Send + Copy + Default>(
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
    let (rows_a, rows_b) = (Rows::of(la)?, Rows::of(lb)?);
    let mut out = alloc::filled(op, la.numel(), V::default())?;
    rows_a.zip_for_each(&rows_b, &mut out, |row, start_a, start_b| {
        if rows_a.stride == 1 && rows_b.stride == 1 {
            let (a, b) = (&a[start_a..start_a + row.len()], &b[start_b..start_b + row.len()]);
            for ((o, &x), &y) in row.iter_mut().zip(a).zip(b) {
                *o = f(x, y);
            }
        } else {
            for (j, o) in row.iter_mut().enumerate() {
                *o = f(a[start_a + j * rows_a.stride], b[start_b + j * rows_b.stride]);
            }
        }
    });
    Ok(out)
}

/// Elements per task when a contiguous elementwise loop is split over threads.
const CHUNK: usize = 1 << 14;

/// A vector of `n` elements written by `fill(out, start)`, which must write every element of
/// `out`: the elements `start..start + out.len()`. The pieces are `CHUNK` long and run on
/// rayon's pool when `n` is large. `fill` is a plain loop over slices (`#[inline(always)]`),
/// so the compiler vectorises it (an iterator `collect` per element does not), with AVX2 where
/// the CPU has it ([`vectorised`]), and the output is written once, never zeroed first.
fn build<U: Send>(
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

/// A strided layout seen as rows along its last dim: where each row starts, and the stride
/// within a row. Walking rows keeps the per-element cost of a view to one multiply-add.
struct Rows {
    starts: Vec<usize>,
    width: usize,
    stride: usize,
}

impl Rows {
    fn of(layout: &Layout) -> crate::Result<Rows> {
        let rank = layout.rank();
        if rank == 0 {
            return Ok(Rows {
                starts: vec![layout.offset()],
                width: 1,
                stride: 0,
            });
        }
        let outer = Layout::new(
            layout.shape()[..rank - 1].to_vec(),
            layout.strides()[..rank - 1].to_vec(),
            layout.offset(),
        );
        Ok(Rows {
            starts: alloc::collect("strided copy", outer.numel(), outer.offsets())?,
            width: layout.shape()[rank - 1],
            stride: layout.strides()[rank - 1],
        })
    }

    /// Calls `f(out_row, row_start)` for every row, in parallel when there is enough work.
    fn for_each<V: Send>(&self, out: &mut [V], f: impl Fn(&mut [V], usize) + Send + Sync) {
        if self.width == 0 {
            return;
        }
        if out.len() >= PARALLEL_MIN {
            out.par_chunks_mut(self.width)
                .zip(self.starts.par_iter())
                .for_each(|(row, &s)| f(row, s));
        } else {
            out.chunks_mut(self.width)
                .zip(&self.starts)
                .for_each(|(row, &s)| f(row, s));
        }
    }

    /// As `for_each`, walking the rows of two layouts of one shape together.
    fn zip_for_each<V: Send>(&self, other: &Rows, out: &mut [V], f: impl Fn(&mut [V], usize, usize) + Send + Sync) {
        let starts: Vec<(usize, usize)> = self.starts.iter().copied().zip(other.starts.iter().copied()).collect();
        if self.width == 0 {
            return;
        }
        if out.len() >= PARALLEL_MIN {
            out.par_chunks_mut(self.width)
                .zip(starts.par_iter())
                .for_each(|(row, &(a, b))| f(row, a, b));
        } else {
            out.chunks_mut(self.width)
                .zip(&starts)
                .for_each(|(row, &(a, b))| f(row, a, b));
        }
    }
}

/// The elements in row-major logical order, copied into a new vector.
pub fn gather<T: Copy + Send + Sync + Default>(op: &'static str, data: &[T], layout: &Layout) -> crate::Result<Vec<T>> {
    map(op, data, layout, |x| x)
}

/// A contiguous copy of the viewed elements, same dtype.
pub fn contiguous(s: &CpuStorage, layout: &Layout) -> crate::Result<CpuStorage> {
    Ok(with_cpu_storage!(s, v => CpuStorage::from_vec(gather("contiguous", v, layout)?)))
}

/// Converts every element to `dtype` (through f64, which holds every kiln dtype exactly;
/// rounding to nearest-even when narrowing).
pub fn cast(s: &CpuStorage, layout: &Layout, dtype: DType) -> crate::Result<CpuStorage> {
    fn convert<T: WithDType, U: WithDType>(v: &[T], layout: &Layout) -> crate::Result<Vec<U>> {
        map("to_dtype", v, layout, |x| U::from_f64(x.to_f64()))
    }
    Ok(with_cpu_storage!(s, v => match dtype {
        DType::F32 => CpuStorage::F32(convert(v, layout)?),
        DType::F64 => CpuStorage::F64(convert(v, layout)?),
        DType::BF16 => CpuStorage::BF16(convert(v, layout)?),
        DType::F16 => CpuStorage::F16(convert(v, layout)?),
        DType::U32 => CpuStorage::U32(convert(v, layout)?),
    }))
}

/// `n` copies of `value` rounded to `dtype`.
pub fn filled(value: f64, n: usize, dtype: DType) -> crate::Result<CpuStorage> {
    const OP: &str = "full";
    Ok(match dtype {
        DType::F32 => CpuStorage::F32(alloc::filled(OP, n, value as f32)?),
        DType::F64 => CpuStorage::F64(alloc::filled(OP, n, value)?),
        DType::BF16 => CpuStorage::BF16(alloc::filled(OP, n, WithDType::from_f64(value))?),
        DType::F16 => CpuStorage::F16(alloc::filled(OP, n, WithDType::from_f64(value))?),
        DType::U32 => CpuStorage::U32(alloc::filled(OP, n, u32::from_f64(value))?),
    })
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

/// Calls the generic function `$f::<T>(args)` with `T` the Rust type of the float dtype
/// `$dtype`; U32 returns a dtype error for `$op`.
macro_rules! dispatch_float {
    ($op:expr, $dtype:expr, $f:ident ( $($arg:expr),* $(,)? )) => {
        match $dtype {
            $crate::tensor::dtype::DType::F32 => $f::<f32>($($arg),*),
            $crate::tensor::dtype::DType::F64 => $f::<f64>($($arg),*),
            $crate::tensor::dtype::DType::BF16 => $f::<half::bf16>($($arg),*),
            $crate::tensor::dtype::DType::F16 => $f::<half::f16>($($arg),*),
            $crate::tensor::dtype::DType::U32 => {
                return Err($crate::Error::not_float($op, $crate::tensor::dtype::DType::U32))
            }
        }
    };
}
pub(crate) use dispatch_float;

/// The typed slice of a storage whose dtype the caller has checked.
pub(crate) fn typed<T: WithDType>(s: &CpuStorage) -> &[T] {
    s.as_slice().expect("operand dtypes are checked before dispatch")
}

/// `v` converted to the arithmetic type of `T`.
pub(crate) fn acc<T: CpuFloat>(v: f64) -> T::Acc {
    <T::Acc as num_traits::NumCast>::from(v).expect("f32 and f64 hold any f64, rounded")
}
