//! Batched matrix product on the CPU: one GEMM call per batch entry, straight on the
//! operands' strides (transposed views cost no copy), then the fused epilogue (bias, GELU,
//! residual) before the one rounding to the dtype. BF16/F16 accumulate in f32: a product of a
//! few rows against a bf16 B (decode: one token against a weight) streams B in place, widening
//! each element in registers (`gemm::sgemm_streamed`), so the weight is read once at 2 bytes an
//! element and never copied (with a bf16 A too, B's columns contiguous and AVX-512 BF16, on
//! `vdpbf16ps`, A read as it is: `gemm::bgemm_streamed_into`); other bf16 × bf16 products, on a CPU with AVX-512 BF16, run
//! `gemm::bgemm` on the bf16 operands as they are (AMX tile products or `vdpbf16ps`: the same
//! exact products, summed in f32 in another order); the rest widen A to f32 and B one block of columns at a time for the
//! f32 GEMM (a copy their `m` rows amortise, into a buffer that stays in cache). The f32 result
//! is rounded to the half type over threads: in the epilogue's own pass, each row as it is
//! finished (`epilogue_rounded`), or by `map` when there is no epilogue.

use super::{alloc, gemm, pool, PARALLEL_MIN};
use crate::backend::cpu::CpuStorage;
use crate::backend::op::exp::Exp;
use crate::backend::op::unary::gelu_and_derivative;
use crate::backend::op::UnaryOp;
use crate::backend::op::{Epilogue, PerMatrix};
use crate::tensor::dtype::{DType, WithDType};
use crate::tensor::layout::{Dims, Layout};
use crate::{Error, Result};
use half::{bf16, f16};
use rayon::iter::Either;
use rayon::prelude::*;
use smallvec::SmallVec;
use std::mem::MaybeUninit;

/// `epi(a · b)` for `a` `[batch.., m, k]` and `b` `[batch.., k, n]`, both already broadcast to the
/// same batch dims; the result is contiguous `[batch.., m, n]`, with the pre-activation `z` (same
/// shape) when `epi.keep_pre`. The epilogue is applied to the product in its accumulation type
/// (f32, f64 for f64) and the results rounded once, as the CUDA kernel's fused epilogue does.
pub fn matmul(
    a: &CpuStorage,
    la: &Layout,
    b: &CpuStorage,
    lb: &Layout,
    epi: &Epilogue<'_, CpuStorage>,
) -> Result<(CpuStorage, Option<CpuStorage>)> {
    let rank = la.rank();
    let mut shape = Dims::from(&la.shape()[..rank - 1]);
    shape.push(lb.shape()[rank - 1]);
    Ok(match (a, b) {
        (CpuStorage::F32(x), CpuStorage::F32(y)) => {
            let (y, z) = epilogue(batched(x, la, y, lb, gemm::sgemm_into)?, &shape, epi)?;
            (CpuStorage::F32(y), z.map(CpuStorage::F32))
        }
        (CpuStorage::F64(x), CpuStorage::F64(y)) => {
            let (y, z) = epilogue(batched(x, la, y, lb, gemm::dgemm_into)?, &shape, epi)?;
            (CpuStorage::F64(y), z.map(CpuStorage::F64))
        }
        (CpuStorage::BF16(_), CpuStorage::BF16(_)) | (CpuStorage::F16(_), CpuStorage::F16(_)) => {
            let m = la.shape()[rank - 2];
            let b_strides = [lb.strides()[rank - 2], lb.strides()[rank - 1]].map(|s| s as isize);
            let streamed = gemm::streams(m, 1, b_strides, 1);
            // a few rows of bf16 A (rows contiguous) against a bf16 B with contiguous columns (a
            // Linear's Wᵀ: decode): streamed on vdpbf16ps, A read as it is
            let dot_streamed = streamed && b_strides[0] == 1 && la.strides()[rank - 1] == 1;
            let product = match (a, b) {
                // both bf16, enough rows to pack B, and vdpbf16ps: no widening at all
                (CpuStorage::BF16(x), CpuStorage::BF16(y)) if !streamed && gemm::has_bf16_dot() => {
                    batched(&x[..], la, &y[..], lb, gemm::bgemm_into)?
                }
                (CpuStorage::BF16(x), CpuStorage::BF16(y)) if dot_streamed && gemm::has_bf16_dot() => {
                    batched(&x[..], la, &y[..], lb, gemm::bgemm_streamed_into)?
                }
                _ => {
                    let CpuStorage::F32(x) = super::cast(a, la, DType::F32)? else {
                        unreachable!("cast to f32 gives f32")
                    };
                    let la_wide = Layout::contiguous(la.shape());
                    let product = match b {
                        CpuStorage::BF16(y) if streamed => {
                            batched(&x, &la_wide, &y[..], lb, gemm::sgemm_streamed_into::<bf16>)?
                        }
                        _ => widened_by_blocks(&x, &la_wide, b, lb)?,
                    };
                    pool::give_vec(x);
                    product
                }
            };
            // the epilogue and the one rounding per element in one pass over the product (each
            // row rounded while it is in cache); the f32 product goes back to the pool
            match a {
                CpuStorage::BF16(_) => {
                    let (y, z) = epilogue_rounded(product, &shape, epi, super::float::f32_to_bf16)?;
                    (CpuStorage::BF16(y), z.map(CpuStorage::BF16))
                }
                _ => {
                    let (y, z) = epilogue_rounded(product, &shape, epi, f16::from_f32)?;
                    (CpuStorage::F16(y), z.map(CpuStorage::F16))
                }
            }
        }
        (CpuStorage::U32(_), CpuStorage::U32(_)) => return Err(Error::not_float("matmul", DType::U32)),
        _ => return Err(Error::dtype_mismatch("matmul", a.dtype(), b.dtype())),
    })
}

/// The outputs of a shared-input product ([`linear_many`]): each weight's `m·n_i` f32, written
/// by the streamed products.
type Outputs<'a> = [&'a mut [MaybeUninit<f32>]];

/// `x · w_iᵀ` for several weights that share the input x (`[m, k]` contiguous, `m` at most
/// [`gemm::STREAM_MAX_M`]: decode), each `w_i` `[n_i, k]` contiguous in x's dtype, f32 or bf16:
/// a layer's q, k and v projections, or its gate and up projections. The results `[m, n_i]` are in
/// that dtype, each equal bit for bit to [`matmul`] of x with `w_iᵀ` (the streamed product; for
/// bf16 on `vdpbf16ps` where the CPU has AVX-512 BF16, else x widened to f32, and each result
/// rounded once), computed in one parallel region (`gemm::sgemm_streamed_many_into`,
/// `gemm::bgemm_streamed_many_into`), a bf16 x widened at most once rather than once per weight.
pub fn linear_many(x: &CpuStorage, lx: &Layout, ws: &[(&CpuStorage, &Layout)]) -> Result<PerMatrix<CpuStorage>> {
    const OP: &str = "linear_many";
    let (&[m, k], Some(xr)) = (lx.shape(), lx.contiguous_range()) else {
        return Err(Error::shape(
            OP,
            format!(
                "input {:?} (strides {:?}): expected a contiguous [m, k]",
                lx.shape(),
                lx.strides()
            ),
        ));
    };
    if !(1..=gemm::STREAM_MAX_M).contains(&m) {
        return Err(Error::invalid(
            OP,
            format!(
                "{m} rows: the shared-input product takes 1 to {} rows",
                gemm::STREAM_MAX_M
            ),
        ));
    }
    let weight = |(w, l): &(&CpuStorage, &Layout)| -> Result<std::ops::Range<usize>> {
        if w.dtype() != x.dtype() {
            return Err(Error::dtype_mismatch(OP, x.dtype(), w.dtype()));
        }
        match (l.shape(), l.contiguous_range()) {
            (&[_, kw], Some(r)) if kw == k => Ok(r),
            _ => Err(Error::shape(
                OP,
                format!(
                    "weight {:?} (strides {:?}) for input [{m}, {k}]: expected a contiguous [n, {k}]",
                    l.shape(),
                    l.strides()
                ),
            )),
        }
    };
    let ranges = ws.iter().map(weight).collect::<Result<PerMatrix<_>>>()?;
    // the f32 products, not zeroed: the streamed loops write every element
    let mut outs = ws
        .iter()
        .map(|(_, l)| alloc::with_capacity::<f32>(OP, m * l.shape()[0]))
        .collect::<Result<PerMatrix<_>>>()?;
    let ns: PerMatrix<usize> = ws.iter().map(|(_, l)| l.shape()[0]).collect();
    // `many` writes every element of the outputs' first m·n_i (their spare capacity)
    let mut fill = |many: &dyn Fn(&mut Outputs<'_>)| {
        let mut cs: PerMatrix<&mut [MaybeUninit<f32>]> = outs
            .iter_mut()
            .zip(&ns)
            .map(|(c, &n)| &mut c.spare_capacity_mut()[..m * n])
            .collect();
        many(&mut cs);
        drop(cs);
        for (c, &n) in outs.iter_mut().zip(&ns) {
            // SAFETY: the capacity is at least m·n, and the streamed products wrote all m·n
            // elements of C (rows n apart).
            unsafe { c.set_len(m * n) };
        }
    };
    match x {
        CpuStorage::F32(xv) => {
            let bs: PerMatrix<&[f32]> = (0..ws.len())
                .map(|i| &super::typed::<f32>(ws[i].0)[ranges[i].clone()])
                .collect();
            fill(&|cs: &mut Outputs<'_>| gemm::sgemm_streamed_many_into(m, k, &xv[xr.clone()], k, &bs, cs));
            Ok(outs.into_iter().map(CpuStorage::F32).collect())
        }
        CpuStorage::BF16(xv) => {
            let bs: PerMatrix<&[bf16]> = (0..ws.len())
                .map(|i| &super::typed::<bf16>(ws[i].0)[ranges[i].clone()])
                .collect();
            if gemm::has_bf16_dot() {
                // on vdpbf16ps, x read as it is
                fill(&|cs: &mut Outputs<'_>| gemm::bgemm_streamed_many_into(m, k, &xv[xr.clone()], k, &bs, cs));
            } else {
                // x widened to f32 once for all the weights
                let CpuStorage::F32(xw) = super::cast(x, lx, DType::F32)? else {
                    unreachable!("cast to f32 gives f32")
                };
                fill(&|cs: &mut Outputs<'_>| gemm::sgemm_streamed_many_into(m, k, &xw, k, &bs, cs));
                pool::give_vec(xw);
            }
            // each product rounded to bf16 once, its f32 buffer back to the pool
            outs.into_iter()
                .map(|y| {
                    let flat = Layout::contiguous(&[y.len()]);
                    let rounded = super::map(OP, &y, &flat, super::float::f32_to_bf16)?;
                    pool::give_vec(y);
                    Ok(CpuStorage::BF16(rounded))
                })
                .collect()
        }
        _ => Err(Error::DType {
            op: OP,
            msg: format!("the shared-input product takes f32 or bf16, got {}", x.dtype()),
        }),
    }
}

/// Whether `epi` leaves the product as it is: no bias, GELU or residual, and no z to keep.
fn does_nothing(epi: &Epilogue<'_, CpuStorage>) -> bool {
    epi.bias.is_none() && !epi.gelu && epi.residual.is_none() && !epi.keep_pre
}

/// `gelu?(y + bias) + residual` on the product `y` (contiguous `shape`) in its accumulation type
/// `T`, in place; with `epi.keep_pre`, also `z = y + bias`, or with `epi.keep_gelu_derivative`
/// gelu'(z) ([`epilogue_rows`]).
fn epilogue<T: Exp + WithDType + Send + Sync>(
    mut y: Vec<T>,
    shape: &[usize],
    epi: &Epilogue<'_, CpuStorage>,
) -> Result<(Vec<T>, Option<Vec<T>>)> {
    if y.is_empty() || does_nothing(epi) {
        return Ok((y, epi.keep_pre.then(Vec::new)));
    }
    let mut pre = alloc::with_capacity("matmul", if epi.keep_pre { y.len() } else { 0 })?;
    let len = y.len();
    let z = epi.keep_pre.then(|| &mut pre.spare_capacity_mut()[..len]);
    epilogue_rows(&mut y, shape, epi, z, None::<&mut [MaybeUninit<T>]>, |v| v)?;
    if epi.keep_pre {
        // SAFETY: the capacity is y.len(), and epilogue_rows wrote every element of z.
        unsafe { pre.set_len(len) };
    }
    Ok((y, epi.keep_pre.then_some(pre)))
}

/// [`epilogue`] on an f32 product, each result (and z) rounded by `round` as its row is finished,
/// while the row is in cache, rather than in a pass of its own over the product afterwards; the
/// f32 product goes back to the pool.
fn epilogue_rounded<O: Copy + Send + Sync + 'static>(
    mut y: Vec<f32>,
    shape: &[usize],
    epi: &Epilogue<'_, CpuStorage>,
    round: impl Fn(f32) -> O + Send + Sync + Copy,
) -> Result<(Vec<O>, Option<Vec<O>>)> {
    const OP: &str = "matmul";
    let len = y.len();
    if len == 0 || does_nothing(epi) {
        // one rounding per element, over threads (`map` splits contiguous work), vectorised
        let out = super::map(OP, &y, &Layout::contiguous(&[len]), round)?;
        pool::give_vec(y);
        return Ok((out, epi.keep_pre.then(Vec::new)));
    }
    let (mut out, mut pre) = (
        alloc::with_capacity(OP, len)?,
        alloc::with_capacity(OP, if epi.keep_pre { len } else { 0 })?,
    );
    let z = epi.keep_pre.then(|| &mut pre.spare_capacity_mut()[..len]);
    epilogue_rows(&mut y, shape, epi, z, Some(&mut out.spare_capacity_mut()[..len]), round)?;
    // SAFETY: the capacities are y.len() (z's when kept), and epilogue_rows wrote every element
    // of out and of z.
    unsafe {
        out.set_len(len);
        if epi.keep_pre {
            pre.set_len(len);
        }
    }
    pool::give_vec(y);
    Ok((out, epi.keep_pre.then_some(pre)))
}

/// `part` in chunks of `chunk` elements, each `Some`, or `tasks` times `None` where there is no
/// `part`: an iterator to zip with the chunks of the rows either way.
fn chunks_or_none<T: Send>(
    part: Option<&mut [T]>,
    chunk: usize,
    tasks: usize,
) -> impl IndexedParallelIterator<Item = Option<&mut [T]>> {
    match part {
        Some(part) => Either::Left(part.par_chunks_mut(chunk).map(Some)),
        None => Either::Right((0..tasks).into_par_iter().map(|_| None)),
    }
}

/// One rayon task of [`epilogue_rows`]: its rows of y, and the same rows of z and of the rounded
/// output where they are asked for.
struct RowsTask<'a, T, O> {
    rows: &'a mut [T],
    z: Option<&'a mut [MaybeUninit<O>]>,
    out: Option<&'a mut [MaybeUninit<O>]>,
}

/// The epilogue's rows, over threads: `gelu?(y + bias) + residual` in place in `y` (contiguous
/// `shape`), in its accumulation type `T`, one row at a time (each step a plain loop the compiler
/// vectorises); `z` (when given) gets `to_out(y + bias)`, copied from the row between the bias and
/// the GELU while the row is in cache, or with `epi.keep_gelu_derivative` `to_out(gelu'(z))`, from
/// the GELU's own exponential; `out` (when given) gets `to_out` of each finished row. Every
/// element of `z` and `out` is written.
fn epilogue_rows<T: Exp + WithDType + Send + Sync, O: Send>(
    y: &mut [T],
    shape: &[usize],
    epi: &Epilogue<'_, CpuStorage>,
    z: Option<&mut [MaybeUninit<O>]>,
    out: Option<&mut [MaybeUninit<O>]>,
    to_out: impl Fn(T) -> O + Sync,
) -> Result<()> {
    let n = shape.last().copied().unwrap_or(1);
    // bias and residual in T, contiguous: one cast each (a copy, back to the pool after), borrowed below
    let wide = |(s, l): (&CpuStorage, &Layout)| super::cast(s, l, T::DTYPE).map(pool::Scratch);
    let (bias, residual) = (epi.bias.map(wide).transpose()?, epi.residual.map(wide).transpose()?);
    let (bias, residual) = (
        bias.as_ref().map(|s| super::typed::<T>(&s.0)),
        residual.as_ref().map(|s| super::typed::<T>(&s.0)),
    );
    let derivative = epi.gelu && epi.keep_pre && epi.keep_gelu_derivative;
    let rows_per_task = PARALLEL_MIN.div_ceil(n).max(1);
    let chunk = rows_per_task * n;
    // one rayon job's rows, compiled with AVX-512 or AVX2 where the CPU has it (see vectorised)
    let task = |(task, RowsTask { rows, z: pre, out }): (usize, RowsTask<'_, T, O>)| {
        super::vectorised(
            #[inline(always)]
            || {
                let mut pre = pre.map(|p| p.chunks_mut(n));
                let mut out = out.map(|o| o.chunks_mut(n));
                for (i, row) in rows.chunks_mut(n).enumerate() {
                    if let Some(b) = bias {
                        row.iter_mut().zip(b).for_each(|(v, &b)| *v = *v + b);
                    }
                    match pre.as_mut().and_then(|p| p.next()) {
                        // the GELU and its derivative (kept for the backward) from one exponential
                        Some(z) if derivative => z.iter_mut().zip(row.iter_mut()).for_each(|(z, v)| {
                            let (y, d) = gelu_and_derivative(*v);
                            z.write(to_out(d));
                            *v = y;
                        }),
                        kept => {
                            if let Some(z) = kept {
                                z.iter_mut().zip(&*row).for_each(|(z, &v)| {
                                    z.write(to_out(v));
                                });
                            }
                            if epi.gelu {
                                row.iter_mut().for_each(|v| *v = UnaryOp::Gelu.apply(*v));
                            }
                        }
                    }
                    if let Some(r) = residual {
                        let start = (task * rows_per_task + i) * n;
                        row.iter_mut().zip(&r[start..start + n]).for_each(|(v, &r)| *v = *v + r);
                    }
                    if let Some(o) = out.as_mut().and_then(|o| o.next()) {
                        o.iter_mut().zip(&*row).for_each(|(o, &v)| {
                            o.write(to_out(v));
                        });
                    }
                }
            },
        )
    };
    // each task's chunk of y with its chunks of z and out (the same rows), or None for each where
    // they are not asked for: zipped, not collected, so that a decode step allocates nothing here
    let tasks = y.len().div_ceil(chunk);
    y.par_chunks_mut(chunk)
        .zip(chunks_or_none(z, chunk, tasks))
        .zip(chunks_or_none(out, chunk, tasks))
        .enumerate()
        .for_each(|(t, ((rows, z), out))| task((t, RowsTask { rows, z, out })));
    Ok(())
}

/// Bytes of B's f32 block in [`widened_by_blocks`], about 2 MiB, so that the widened block is
/// still in cache when the GEMM packs it.
const WIDEN_BLOCK_BYTES: usize = 2 << 20;

/// `a · b` for contiguous f32 `a` (`[batch.., m, k]`) and a half-precision `b` (`[batch.., k, n]`,
/// any strides), accumulated in f32; returns contiguous `[batch.., m, n]`. B is widened to f32
/// one block of columns at a time (all batch entries of those columns), each block multiplied
/// and its columns of C copied into place: B's f32 copy never exists whole, which for a weight
/// at prefill cost an allocation of twice the weight's size per call.
fn widened_by_blocks(a: &[f32], la: &Layout, b: &CpuStorage, lb: &Layout) -> Result<Vec<f32>> {
    let rank = lb.rank();
    let (m, k, n) = (la.shape()[rank - 2], lb.shape()[rank - 2], lb.shape()[rank - 1]);
    let batch = la.shape()[..rank - 2].iter().product::<usize>();
    let cols = (WIDEN_BLOCK_BYTES / (4 * k.max(1) * batch.max(1))).clamp(64, n.max(64));
    let len = batch * m * n;
    let mut out = alloc::with_capacity("matmul", len)?;
    let spare = &mut out.spare_capacity_mut()[..len];
    for j0 in (0..n).step_by(cols) {
        let width = cols.min(n - j0);
        let block_layout = lb.narrow(rank - 1, j0, width);
        let CpuStorage::F32(block) = super::cast(b, &block_layout, DType::F32)? else {
            unreachable!("cast to f32 gives f32")
        };
        let mut block_shape = lb.shape().to_vec();
        block_shape[rank - 1] = width;
        let product = batched(a, la, &block, &Layout::contiguous(&block_shape), gemm::sgemm_into)?;
        // product is [batch.., m, width]: its rows are pieces of C's rows
        for (c_row, p_row) in spare.chunks_exact_mut(n).zip(product.chunks_exact(width)) {
            c_row[j0..j0 + width].iter_mut().zip(p_row).for_each(|(c, &p)| {
                c.write(p);
            });
        }
        pool::give_vec(block);
        pool::give_vec(product);
    }
    // SAFETY: the capacity is len; the blocks' columns j0..j0 + width tile 0..n, and each
    // block wrote those columns of all batch·m rows (n > 0 whenever len > 0).
    unsafe { out.set_len(len) };
    Ok(out)
}

/// A GEMM in the BLAS form of [`gemm::sgemm`], with B's elements of type `W` and A's of type `A`
/// (T unless mixed: a bf16 B for [`gemm::sgemm_streamed`], bf16 A and B for [`gemm::bgemm`]).
pub(crate) type Gemm<T, W = T, A = T> =
    fn(usize, usize, usize, T, &[A], isize, isize, &[W], isize, isize, T, &mut [T], isize, isize);

/// A GEMM into a new output, in the form of [`gemm::sgemm_into`]: beta is 0, and C may be
/// uninitialised (every element of its view is written, none read).
pub(crate) type GemmInto<T, W = T, A = T> =
    fn(usize, usize, usize, T, &[A], isize, isize, &[W], isize, isize, &mut [MaybeUninit<T>], isize, isize);

fn batched<T: Copy + Send + Sync + num_traits::One + num_traits::Zero + 'static, W: Sync, A: Sync>(
    a: &[A],
    la: &Layout,
    b: &[W],
    lb: &Layout,
    gemm: GemmInto<T, W, A>,
) -> Result<Vec<T>> {
    let rank = la.rank();
    let (m, k, n) = (la.shape()[rank - 2], la.shape()[rank - 1], lb.shape()[rank - 1]);
    let batch_shape = &la.shape()[..rank - 2];
    let batch_of = |l: &Layout| Layout::new(batch_shape, &l.strides()[..rank - 2], l.offset());
    // inline for up to 8 products (a decode step's are single)
    let a_offsets: SmallVec<[usize; 8]> = batch_of(la).offsets().collect();
    let b_offsets: SmallVec<[usize; 8]> = batch_of(lb).offsets().collect();
    let (rsa, csa) = (la.strides()[rank - 2] as isize, la.strides()[rank - 1] as isize);
    let (rsb, csb) = (lb.strides()[rank - 2] as isize, lb.strides()[rank - 1] as isize);
    // the output shape was checked against overflow by the op (ops/matmul.rs)
    let len = a_offsets.len() * m * n;
    if m * n == 0 || k == 0 {
        // nothing to multiply (and an empty operand's offset may lie past its data): zeros
        return alloc::filled("matmul", len, T::zero());
    }
    // not zeroed: the products below write every element (beta 0)
    let mut out = alloc::with_capacity("matmul", len)?;
    let one_product = |(i, c): (usize, &mut [MaybeUninit<T>])| {
        gemm(
            m,
            n,
            k,
            T::one(),
            &a[a_offsets[i]..],
            rsa,
            csa,
            &b[b_offsets[i]..],
            rsb,
            csb,
            c,
            n as isize,
            1,
        );
    };
    let spare = &mut out.spare_capacity_mut()[..len];
    // Many small products (attention heads): one per thread. Few large ones: the GEMM threads itself.
    if a_offsets.len() > 1 && m * n * k < 1 << 18 {
        spare.par_chunks_mut(m * n).enumerate().for_each(one_product);
    } else {
        spare.chunks_mut(m * n).enumerate().for_each(one_product);
    }
    // SAFETY: the capacity is len; product i wrote every element of its m×n block (the
    // `GemmInto` contract, C's rows n apart), and the blocks tile 0..len.
    unsafe { out.set_len(len) };
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::super::float;
    use super::*;

    /// On a CPU with AVX-512 BF16, a bf16 × bf16 product with more rows than the streamed path
    /// takes runs on `vdpbf16ps` or, from 16 rows with AMX, `tdpbf16ps` (`gemm::bgemm`), seen
    /// through both instructions' documented reading of a subnormal bf16 (here 2⁻¹²⁷) as zero; so
    /// does a product of one row against a B with contiguous columns (a Linear's Wᵀ: the streamed
    /// `vdpbf16ps` loop), while one against a row-major B keeps the streamed f32 path, which
    /// multiplies it exactly.
    #[test]
    fn bf16_products_run_on_vdpbf16ps_where_the_cpu_has_it() {
        if !gemm::has_bf16_dot() {
            eprintln!("skipped: this CPU has no AVX-512 BF16");
            return;
        }
        let (k, n) = (8, 24);
        let tiny = bf16::from_bits(0x0040);
        for (m, transposed, expected) in [(16, false, 0.0), (1, false, 2f64.powi(-124)), (1, true, 0.0)] {
            let a = CpuStorage::BF16(vec![tiny; m * k]);
            let b = CpuStorage::BF16(vec![bf16::ONE; k * n]);
            let la = Layout::contiguous(&[m, k]);
            let lb = match transposed {
                true => Layout::contiguous(&[n, k]).transpose(0, 1),
                false => Layout::contiguous(&[k, n]),
            };
            let (y, _) = matmul(&a, &la, &b, &lb, &Epilogue::NONE).unwrap();
            let CpuStorage::BF16(y) = y else {
                panic!("a bf16 product gave {:?}", y.dtype())
            };
            assert_eq!(y.len(), m * n);
            assert!(
                y.iter().all(|&v| v.to_f64() == expected),
                "m = {m}, B transposed {transposed}: y[0] = {}",
                y[0]
            );
        }
    }

    /// The half-precision products' epilogue rounds each row as it finishes it: the same bits as
    /// the f32 epilogue in place followed by a rounding pass over y and z, for every combination
    /// of bias, GELU (its derivative kept or z), residual and keep_pre, on a product of several
    /// tasks' rows (`PARALLEL_MIN` elements a task) whose last task is partial.
    #[test]
    fn rounding_in_the_epilogue_gives_the_bits_of_a_rounding_pass_after_it() {
        let (m, n) = (3 * PARALLEL_MIN.div_ceil(96) + 5, 96);
        let value = |i: usize| ((i * 7919) % 2003) as f32 / 251.0 - 4.0;
        let y: Vec<f32> = (0..m * n).map(value).collect();
        let bias = CpuStorage::F32((0..n).map(|j| value(3 * j + 1)).collect());
        let residual = CpuStorage::BF16((0..m * n).map(|i| bf16::from_f32(value(5 * i + 2))).collect());
        let (lb, lr) = (Layout::contiguous(&[n]), Layout::contiguous(&[m, n]));
        for flags in 0..32 {
            let on = |bit: usize| flags & (1 << bit) != 0;
            let epi = Epilogue {
                bias: on(0).then_some((&bias, &lb)),
                gelu: on(1),
                residual: on(2).then_some((&residual, &lr)),
                keep_pre: on(3),
                keep_gelu_derivative: on(4),
            };
            let (in_place, z) = epilogue(y.clone(), &[m, n], &epi).unwrap();
            let rounded_after = |v: &[f32]| v.iter().map(|&x| float::f32_to_bf16(x).to_bits()).collect::<Vec<_>>();
            let (out, z_out) = epilogue_rounded(y.clone(), &[m, n], &epi, float::f32_to_bf16).unwrap();
            let bits = |v: &[bf16]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert!(bits(&out) == rounded_after(&in_place), "flags {flags:05b}: y differs");
            assert_eq!(z.is_some(), z_out.is_some(), "flags {flags:05b}");
            if let (Some(z), Some(z_out)) = (z, z_out) {
                assert!(bits(&z_out) == rounded_after(&z), "flags {flags:05b}: z differs");
            }
        }
    }
}
