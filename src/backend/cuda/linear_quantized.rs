//! Launch wrapper for kernels/linear_quantized.cu: `y = x·Wᵀ` and the input's gradient `g·W` with W
//! a [`QuantizedMatrix`] whose stored bytes are on this device ([`to_device`] puts them there).
//!
//! [`linear_quantized`] (the op under `no_grad`): below [`MMA_FROM_ROWS`] rows of x (decode) every
//! format takes the integer path, x rounded to 8 bits per block of 32 as on the CPU, then one
//! `__dp4a` kernel per format; from there on (prefill) a grouped format (Q4_0, Q4_1, Q8_0) takes one
//! integer tensor-core kernel per format (`mma.m16n8k32` on signed bytes), x rounded the same way,
//! while Q4_K and Q6_K are decoded to f32 and multiplied by the f32 matmul kernel
//! (src/backend/cuda/matmul.rs), x unrounded. [`linear_dequantized`] (the op while autograd records) and the gradient always take
//! the decoded path. The kernel file's header has the launch shapes and the bytes each moves.

use super::launch::{Args, LaunchConfig};
use super::{copy, kernel, matmul, CudaDevice, CudaStorage};
use crate::backend::op::{Epilogue, QuantFormat, QuantizedMatrix, GROUP_ROWS};
use crate::tensor::dtype::DType;
use crate::tensor::layout::Layout;
use crate::{Device, Error, Result};
use std::sync::Arc;

/// Rows of x from which [`linear_quantized`] multiplies a grouped format on the integer tensor
/// cores (`linear_quantized_mma_<fmt>`) instead of the `__dp4a` decode kernel; both round x to the
/// same bytes and compute the same integer sums, so the choice changes only f32 summation order.
/// Q4_K and Q6_K take their `__dp4a` kernels below it and W decoded to f32 from it (the f32 matmul
/// reads W once for all rows of x, where the decode kernel re-reads it per row).
///
/// Not timed (no GPU has been lent): reasoned from the roofline of kernels/linear_quantized.cu on
/// an H100 (3.35 TB/s; ~61 T dp4a multiply-adds/s on the CUDA cores, ~990 T int8 multiply-adds/s on
/// the tensor cores plus the f32 scaling, ~700 T/s together). The decode kernel streams W once from
/// DRAM and re-reads it from L2 for every row of x, its arithmetic growing with m: it stays
/// memory-bound up to about 10 rows of x for Q4_1 (0.625 bytes per weight: 61e12 · 0.625 / 3.35e12)
/// and 19 for Q8_0. The mma kernel pads x to 8-row tiles and 32-row CTAs, so below 32 rows it does
/// 32 rows' integer work, still under the memory bound (32 rows at ~700 T/s is 2.6× faster than W's
/// bytes at 0.625 bytes per weight), and reads W from L2 once per 32 rows instead of once per row.
/// From 8 rows a tile is full and the decode kernel is near its compute bound; below, the decode
/// kernel's n/16 × m CTAs spread a short product over more SMs than the mma kernel's
/// n/64 × ceil(m/32). A GPU run should place this by measurement (`kiln bench --kernels
/// linear_quantized_q4_1 --sizes 4x1536x576,8x1536x576,16x1536x576`).
pub const MMA_FROM_ROWS: usize = 8;

/// Warps per CTA of the decode kernels (`LINEAR_QUANTIZED_WARPS`).
const DECODE_WARPS: u32 = 4;

/// Warps per CTA of the tensor-core kernels, one 16-row group of W each (`LINEAR_QUANTIZED_MMA_WARPS`).
const MMA_WARPS: usize = 4;

/// Rows of x per CTA of the tensor-core kernels (`LINEAR_QUANTIZED_MMA_ROWS`).
const MMA_ROWS: usize = 32;

/// Warps per CTA of the Q4_K/Q6_K decode kernels, one row of W each (`LINEAR_QUANTIZED_K_WARPS`).
const K_WARPS: usize = 4;

/// `w`'s stored bytes copied to `device` (a CUDA device or the emulator), as the buffer
/// `QuantizedMatrix::device_bytes` hands back to this backend: u32 words, zero-padded to a
/// multiple of 16 bytes so that the buffer starts 16-byte aligned on Emu too (its buffers end at a
/// guard page) and every tile's 16-byte loads are aligned.
pub fn to_device(device: &Device, w: &QuantizedMatrix) -> Result<CudaStorage> {
    let bytes = w.stored_bytes();
    let mut words = vec![0u32; bytes.len().next_multiple_of(16) / 4];
    bytemuck::cast_slice_mut::<u32, u8>(&mut words)[..bytes.len()].copy_from_slice(bytes);
    CudaStorage::from_host(device, &words)
}

/// `w`'s bytes on `x`'s device, or an error naming `op`, the weight and both devices.
fn weight_on<'a>(op: &'static str, x: &CudaStorage, w: &'a QuantizedMatrix) -> Result<&'a CudaStorage> {
    let bytes = w.device_bytes().and_then(|b| b.downcast_ref::<CudaStorage>());
    match bytes {
        Some(b) if b.device() == x.device() => Ok(b),
        _ => Err(w.device_error(op, x.device())),
    }
}

/// `x`'s elements (f32, viewed through `layout`) as a contiguous buffer from element 0: `x` itself
/// when it already is one, else a copy.
fn packed<'a>(
    op: &'static str,
    x: &'a CudaStorage,
    layout: &Layout,
    copied: &'a mut Option<CudaStorage>,
) -> Result<&'a CudaStorage> {
    if x.dtype() != DType::F32 {
        return Err(Error::DType {
            op,
            msg: format!("the kernels take f32 rows, got {}", x.dtype()),
        });
    }
    if layout.is_contiguous() && layout.offset() == 0 {
        return Ok(x);
    }
    Ok(copied.insert(copy::contiguous(x, layout)?))
}

/// `v` as a kernel's u32 argument, or an error naming `what`.
fn dim(op: &'static str, what: &str, v: usize) -> Result<u32> {
    u32::try_from(v).map_err(|_| Error::invalid(op, format!("{what} = {v} is over the kernels' 2^32 - 1")))
}

/// `y = x·Wᵀ`: x holds rows of `w.shape()[1]` f32 (viewed through `layout`), y is contiguous
/// `[rows, w.shape()[0]]`. The integer kernels (x rounded to 8 bits) below [`MMA_FROM_ROWS`] rows
/// (`__dp4a`) and from there for a grouped format (the tensor cores); W decoded to f32 for Q4_K and
/// Q6_K from [`MMA_FROM_ROWS`] rows.
pub fn linear_quantized(x: &CudaStorage, layout: &Layout, w: &QuantizedMatrix) -> Result<CudaStorage> {
    product(x, layout, w, true)
}

/// `y = x·Wᵀ` with W decoded to f32 and x not rounded, at every size: the forward of a product
/// autograd records (its gradient is that of the exact product).
pub fn linear_dequantized(x: &CudaStorage, layout: &Layout, w: &QuantizedMatrix) -> Result<CudaStorage> {
    product(x, layout, w, false)
}

/// [`linear_quantized`] (`integer` true) or [`linear_dequantized`].
fn product(x: &CudaStorage, layout: &Layout, w: &QuantizedMatrix, integer: bool) -> Result<CudaStorage> {
    const OP: &str = "linear_quantized";
    let wb = weight_on(OP, x, w)?;
    let [n, k] = w.shape();
    let m = rows_of(OP, layout, k, "columns")?;
    let mut copied = None;
    let x = packed(OP, x, layout, &mut copied)?;
    let dev = x.cuda_device();
    if m == 0 || n == 0 {
        return CudaStorage::alloc(dev, DType::F32, m * n);
    }
    let (format, grouped) = (w.format(), w.format().is_grouped());
    // the integer kernels: every size for the grouped formats, decode (`__dp4a`) for Q4_K and Q6_K
    if !integer || !(grouped || m < MMA_FROM_ROWS) {
        // y = x (m, k) · Wᵀ, Wᵀ (k, n) read in place from W decoded (n, k) row-major
        let decoded = dequantize(wb, w)?;
        let wt = Layout::new(vec![k, n], vec![1, k], 0);
        return Ok(matmul::matmul(x, &Layout::contiguous(&[m, k]), &decoded, &wt, &Epilogue::NONE)?.0);
    }
    let (xq, xds) = quantize_x(dev, x, m * k)?;
    let y = CudaStorage::alloc(dev, DType::F32, m * n)?;
    let fmt = match format {
        QuantFormat::Q4_0 => "q4_0",
        QuantFormat::Q4_1 => "q4_1",
        QuantFormat::Q8_0 => "q8_0",
        QuantFormat::Q4_K => "q4_k",
        QuantFormat::Q6_K => "q6_k",
    };
    let groups = n.div_ceil(GROUP_ROWS);
    let mut args = Args::new();
    args.push(wb.ptr()).push(xq.ptr()).push(xds.ptr()).push(y.ptr());
    let (name, cfg) = if !grouped {
        let cfg = LaunchConfig {
            grid: [
                dim(OP, "CTAs of 4 rows", n.div_ceil(K_WARPS))?,
                dim(OP, "rows of x", m)?,
                1,
            ],
            block: [32 * K_WARPS as u32, 1, 1],
            dyn_smem: 0,
        };
        (format!("linear_quantized_{fmt}"), cfg)
    } else if m >= MMA_FROM_ROWS {
        args.push(dim(OP, "m", m)?);
        let cfg = LaunchConfig {
            grid: [
                dim(OP, "CTAs of 4 row groups", groups.div_ceil(MMA_WARPS))?,
                dim(OP, "CTAs of 32 rows of x", m.div_ceil(MMA_ROWS))?,
                1,
            ],
            block: [32 * MMA_WARPS as u32, 1, 1],
            dyn_smem: 0,
        };
        (format!("linear_quantized_mma_{fmt}"), cfg)
    } else {
        let cfg = LaunchConfig {
            grid: [dim(OP, "row groups", groups)?, dim(OP, "rows of x", m)?, 1],
            block: [32 * DECODE_WARPS, 1, 1],
            dyn_smem: 0,
        };
        (format!("linear_quantized_{fmt}"), cfg)
    };
    args.push(dim(OP, "n", n)?).push(dim(OP, "k / 32", k / 32)?);
    dev.launch(kernel("linear_quantized", &name)?, cfg, &mut args)?;
    Ok(y)
}

/// The input's gradient of [`linear_quantized`]: `dx = g·W`, g holding rows of `w.shape()[0]` f32
/// (viewed through `layout`), dx contiguous `[rows, w.shape()[1]]`; W decoded to f32 for the matmul.
pub fn linear_quantized_input_grad(g: &CudaStorage, layout: &Layout, w: &QuantizedMatrix) -> Result<CudaStorage> {
    const OP: &str = "linear_quantized backward";
    let wb = weight_on(OP, g, w)?;
    let [n, k] = w.shape();
    let m = rows_of(OP, layout, n, "rows")?;
    let mut copied = None;
    let g = packed(OP, g, layout, &mut copied)?;
    if m == 0 {
        return CudaStorage::alloc(g.cuda_device(), DType::F32, 0);
    }
    // n = 0 leaves a sum over no rows of W: the matmul kernel's K = 0 writes zeros
    let decoded = dequantize(wb, w)?;
    let (lg, lw) = (Layout::contiguous(&[m, n]), Layout::contiguous(&[n, k]));
    Ok(matmul::matmul(g, &lg, &decoded, &lw, &Epilogue::NONE)?.0)
}

/// The number of rows of a view whose last dimension must be `width`, the weight's number of
/// `columns` (x) or `rows` (the output's gradient).
fn rows_of(op: &'static str, layout: &Layout, width: usize, of: &str) -> Result<usize> {
    let shape = layout.shape();
    match shape.split_last() {
        Some((&last, rest)) if last == width => Ok(rest.iter().product()),
        _ => Err(Error::shape(
            op,
            format!("an input of shape {shape:?} is not rows of the weight's {width} {of}"),
        )),
    }
}

/// x (`len` f32, rows of whole 32-blocks) rounded per block: (xq, `len` signed bytes as u32 words;
/// xds, (xd, xd·Σxq) per block as f32 pairs).
fn quantize_x(dev: &Arc<CudaDevice>, x: &CudaStorage, len: usize) -> Result<(CudaStorage, CudaStorage)> {
    let blocks = len / 32;
    let xq = CudaStorage::alloc(dev, DType::U32, len / 4)?;
    let xds = CudaStorage::alloc(dev, DType::F32, 2 * blocks)?;
    let mut args = Args::new();
    args.push(x.ptr()).push(xq.ptr()).push(xds.ptr()).push(blocks as u64);
    let warps_per_cta = 8; // 256 threads, a warp per block of 32
    let cfg = LaunchConfig {
        grid: [
            dim(
                "linear_quantized",
                "x's 256-element chunks",
                blocks.div_ceil(warps_per_cta),
            )?,
            1,
            1,
        ],
        block: [32 * warps_per_cta as u32, 1, 1],
        dyn_smem: 0,
    };
    dev.launch(
        kernel("linear_quantized", "linear_quantized_quantize_x")?,
        cfg,
        &mut args,
    )?;
    Ok((xq, xds))
}

/// W (`wb`, the stored bytes of `w`) decoded to f32 `[n, k]` row-major.
fn dequantize(wb: &CudaStorage, w: &QuantizedMatrix) -> Result<CudaStorage> {
    let [n, k] = w.shape();
    let dev = wb.cuda_device();
    let out = CudaStorage::alloc(dev, DType::F32, n * k)?;
    let name = match w.format() {
        QuantFormat::Q4_0 => "linear_quantized_dequantize_q4_0",
        QuantFormat::Q4_1 => "linear_quantized_dequantize_q4_1",
        QuantFormat::Q8_0 => "linear_quantized_dequantize_q8_0",
        QuantFormat::Q4_K => "linear_quantized_dequantize_q4_k",
        QuantFormat::Q6_K => "linear_quantized_dequantize_q6_k",
    };
    let mut args = Args::new();
    args.push(wb.ptr()).push(out.ptr()).push(n as u64).push(k as u64);
    dev.launch(
        kernel("linear_quantized", name)?,
        LaunchConfig::grid_stride(n * k, dev.limits()),
        &mut args,
    )?;
    Ok(out)
}
