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
//! is rounded to the half type over threads (`map`).

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
            let (out, z) = epilogue(product, &shape, epi)?;
            // one rounding per element, over threads (`map` splits contiguous work), vectorised;
            // the f32 product goes back to the pool
            let narrow = |v: Vec<f32>| -> Result<CpuStorage> {
                let flat = Layout::contiguous(&[v.len()]);
                let rounded = match a {
                    CpuStorage::BF16(_) => {
                        CpuStorage::BF16(super::map("matmul", &v, &flat, super::float::f32_to_bf16)?)
                    }
                    _ => CpuStorage::F16(super::map("matmul", &v, &flat, f16::from_f32)?),
                };
                pool::give_vec(v);
                Ok(rounded)
            };
            (narrow(out)?, z.map(narrow).transpose()?)
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

/// `gelu?(y + bias) + residual` on the product `y` (contiguous `shape`) in its accumulation type
/// `T`, one row at a time (each step a plain loop the compiler vectorises), rows over threads;
/// with `epi.keep_pre`, also `z = y + bias` (copied from the row between the bias and the GELU, while
/// the row is in cache), or with `epi.keep_gelu_derivative` gelu'(z), from the GELU's own exponential.
fn epilogue<T: Exp + WithDType + Send + Sync>(
    mut y: Vec<T>,
    shape: &[usize],
    epi: &Epilogue<'_, CpuStorage>,
) -> Result<(Vec<T>, Option<Vec<T>>)> {
    let n = shape.last().copied().unwrap_or(1);
    // bias and residual in T, contiguous: one cast each (a copy, back to the pool after), borrowed below
    let wide = |(s, l): (&CpuStorage, &Layout)| super::cast(s, l, T::DTYPE).map(pool::Scratch);
    let (bias, residual) = (epi.bias.map(wide).transpose()?, epi.residual.map(wide).transpose()?);
    let (bias, residual) = (
        bias.as_ref().map(|s| super::typed::<T>(&s.0)),
        residual.as_ref().map(|s| super::typed::<T>(&s.0)),
    );
    if y.is_empty() || (bias.is_none() && !epi.gelu && residual.is_none() && !epi.keep_pre) {
        return Ok((y, epi.keep_pre.then(Vec::new)));
    }
    // z (or gelu'(z)) is written in full below (every row of every task), so it starts uninitialised
    let mut pre = alloc::with_capacity("matmul", if epi.keep_pre { y.len() } else { 0 })?;
    let derivative = epi.gelu && epi.keep_pre && epi.keep_gelu_derivative;
    let rows_per_task = PARALLEL_MIN.div_ceil(n).max(1);
    // one rayon job's rows, compiled with AVX-512 or AVX2 where the CPU has it (see vectorised)
    let task = |task: usize, rows: &mut [T], pre: Option<&mut [MaybeUninit<T>]>| {
        super::vectorised(
            #[inline(always)]
            || {
                let mut pre = pre.map(|p| p.chunks_mut(n));
                for (i, row) in rows.chunks_mut(n).enumerate() {
                    if let Some(b) = bias {
                        row.iter_mut().zip(b).for_each(|(v, &b)| *v = *v + b);
                    }
                    match pre.as_mut().and_then(|p| p.next()) {
                        // the GELU and its derivative (kept for the backward) from one exponential
                        Some(z) if derivative => z.iter_mut().zip(row.iter_mut()).for_each(|(z, v)| {
                            let (y, d) = gelu_and_derivative(*v);
                            z.write(d);
                            *v = y;
                        }),
                        kept => {
                            if let Some(z) = kept {
                                z.iter_mut().zip(&*row).for_each(|(z, &v)| {
                                    z.write(v);
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
                }
            },
        )
    };
    let chunk = rows_per_task * n;
    if epi.keep_pre {
        let len = y.len();
        y.par_chunks_mut(chunk)
            .zip(pre.spare_capacity_mut()[..len].par_chunks_mut(chunk))
            .enumerate()
            .for_each(|(t, (rows, z))| task(t, rows, Some(z)));
        // SAFETY: the capacity is y.len(), and every task copied each of its rows into its
        // chunk of z, the chunks tiling 0..y.len() as y's do.
        unsafe { pre.set_len(len) };
    } else {
        y.par_chunks_mut(chunk)
            .enumerate()
            .for_each(|(t, rows)| task(t, rows, None));
    }
    Ok((y, epi.keep_pre.then_some(pre)))
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
}
