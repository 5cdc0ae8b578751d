//! Launch wrapper for kernels/matmul.cu: batched `[batch.., m, k] x [batch.., k, n]` with a fused
//! epilogue (bias, GELU, residual), SIMT for f32/f64 and tensor cores for bf16/f16.

use super::launch::{Args, LaunchConfig};
use super::layout::KernelLayout;
use super::{copy, kernel, same_device, CudaStorage};
use crate::backend::op::Epilogue;
use crate::tensor::dtype::DType;
use crate::tensor::layout::Layout;
use crate::{Error, Result};

/// Threads per block of every matmul kernel (`MATMUL_THREADS`).
const THREADS: u32 = 256;

/// `(BM, BN, BK, STAGES)` of `MatmulTile<T>` in kernels/matmul.cu.
fn tile(dtype: DType) -> (usize, usize, usize, usize) {
    match dtype {
        DType::F32 => (64, 64, 16, 3),
        DType::F64 => (64, 64, 16, 2),
        _ => (128, 128, 32, 3),
    }
}

/// Dynamic shared memory of one launch: `STAGES` pairs of slab buffers, each row padded by 16 bytes.
pub fn matmul_smem_bytes(dtype: DType) -> usize {
    let (bm, bn, bk, stages) = tile(dtype);
    let size = dtype.size_in_bytes();
    let pad = 16 / size;
    let slab = |x: usize| (x * (bk + pad)).max(bk * (x + pad));
    stages * (slab(bm) + slab(bn)) * size
}

/// How the kernel reads one matrix: element (x, k) at `x * sx + k * sk` with `sk = 1` (`kcontig`) or
/// `sx = 1`; `ld` is the other stride. `None` when neither stride is 1 (the caller copies).
fn operand(x_len: usize, x_stride: usize, k_len: usize, k_stride: usize) -> Option<(bool, i64)> {
    // the stride of a dim of size 1 is never used: 0 keeps the 16-byte path open
    let (sx, sk) = (
        if x_len <= 1 { 0 } else { x_stride },
        if k_len <= 1 { 0 } else { k_stride },
    );
    if k_len <= 1 || sk == 1 {
        Some((true, sx as i64))
    } else if x_len <= 1 || sx == 1 {
        Some((false, sk as i64))
    } else {
        None
    }
}

/// The element offset of `l`'s first element as a device address.
fn address(s: &CudaStorage, l: &Layout) -> u64 {
    s.ptr() + (l.offset() * s.dtype().size_in_bytes()) as u64
}

/// `epilogue(a · b)` for `a` `[batch.., m, k]` and `b` `[batch.., k, n]` with the same batch dims
/// (broadcast ones have stride 0); the result is contiguous `[batch.., m, n]`, and with
/// `epi.keep_pre` the pre-activation `z = a · b + bias` too (same shape; written by the same launch).
pub fn matmul(
    a: &CudaStorage,
    la: &Layout,
    b: &CudaStorage,
    lb: &Layout,
    epi: &Epilogue<'_, CudaStorage>,
) -> Result<(CudaStorage, Option<CudaStorage>)> {
    same_device("matmul", a, b)?;
    let dtype = a.dtype();
    if dtype != b.dtype() {
        return Err(Error::dtype_mismatch("matmul", dtype, b.dtype()));
    }
    if dtype == DType::U32 {
        return Err(Error::not_float("matmul", dtype));
    }
    for (s, _) in epi.bias.iter().chain(epi.residual.iter()) {
        same_device("matmul", a, s)?;
        if s.dtype() != dtype {
            return Err(Error::dtype_mismatch("matmul", dtype, s.dtype()));
        }
    }
    let rank = la.rank();
    let (m, k, n) = (la.shape()[rank - 2], la.shape()[rank - 1], lb.shape()[rank - 1]);
    let batch_shape = &la.shape()[..rank - 2];
    let batch: usize = batch_shape.iter().product();
    let dev = a.cuda_device();
    let out = CudaStorage::alloc(dev, dtype, batch * m * n)?;
    let pre = if epi.keep_pre {
        Some(CudaStorage::alloc(dev, dtype, batch * m * n)?)
    } else {
        None
    };
    if batch * m * n == 0 {
        return Ok((out, pre));
    }
    let dim = |what: &str, v: usize| {
        u32::try_from(v).map_err(|_| Error::invalid("matmul", format!("{what} = {v} is over the kernels' 2^32 - 1")))
    };
    let (m32, n32, k32) = (dim("m", m)?, dim("n", n)?, dim("k", k)?);

    // Each operand read in place when one of its matrix strides is 1, else copied once.
    let (a_copy, b_copy);
    let (ls, rs) = (la.strides(), lb.strides());
    let (a, la, (a_kcontig, lda)) = match operand(m, ls[rank - 2], k, ls[rank - 1]) {
        Some(o) => (a, la.clone(), o),
        None => {
            a_copy = copy::contiguous(a, la)?;
            (&a_copy, Layout::contiguous(la.shape()), (true, k as i64))
        }
    };
    let (b, lb, (b_kcontig, ldb)) = match operand(n, rs[rank - 1], k, rs[rank - 2]) {
        Some(o) => (b, lb.clone(), o),
        None => {
            b_copy = copy::contiguous(b, lb)?;
            (&b_copy, Layout::contiguous(lb.shape()), (false, n as i64))
        }
    };
    // Bias and residual are read as contiguous [n] and [batch, m, n].
    let packed = |s: &CudaStorage, l: &Layout| -> Result<Option<CudaStorage>> {
        Ok(if l.is_contiguous() {
            None
        } else {
            Some(copy::contiguous(s, l)?)
        })
    };
    let bias_copy = epi.bias.map(|(s, l)| packed(s, l)).transpose()?.flatten();
    let residual_copy = epi.residual.map(|(s, l)| packed(s, l)).transpose()?.flatten();
    let pointer = |given: Option<(&CudaStorage, &Layout)>, copied: &Option<CudaStorage>| -> u64 {
        match (given, copied) {
            (_, Some(c)) => c.ptr(),
            (Some((s, l)), None) => address(s, l),
            (None, None) => 0,
        }
    };
    let batch_layout =
        |l: &Layout| KernelLayout::from_parts("matmul", batch_shape, &l.strides()[..rank - 2], l.offset());

    let (bm, bn, _, _) = tile(dtype);
    let grid = [
        n.div_ceil(bn) as u32,
        u32::try_from(m.div_ceil(bm)).unwrap_or(u32::MAX),
        batch.min(65535) as u32,
    ];
    let k_ = kernel("matmul", &format!("matmul_{}", dtype.as_str()))?;
    let mut args = Args::new();
    args.push(a.ptr())
        .push(batch_layout(&la)?)
        .push(lda)
        .push(a_kcontig as i32)
        .push(b.ptr())
        .push(batch_layout(&lb)?)
        .push(ldb)
        .push(b_kcontig as i32)
        .push(out.ptr())
        .push(pre.as_ref().map_or(0, |z| z.ptr()))
        .push(pointer(epi.bias, &bias_copy))
        .push(pointer(epi.residual, &residual_copy))
        .push(m32)
        .push(n32)
        .push(k32)
        .push(batch as u64)
        .push(epi.gelu as i32);
    let cfg = LaunchConfig {
        grid,
        block: [THREADS, 1, 1],
        dyn_smem: matmul_smem_bytes(dtype) as u32,
    };
    dev.launch(k_, cfg, &mut args)?;
    Ok((out, pre))
}
