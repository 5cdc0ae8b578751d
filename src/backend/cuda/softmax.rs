//! Launch wrapper for kernels/softmax.cu, and the row launch shape that every row-wise kernel
//! (softmax.cu, layer_norm.cu, cross_entropy.cu; kernels/rows.cuh) uses.

use super::launch::{Args, LaunchConfig};
use super::{kernel, same_device, CudaStorage};
use crate::tensor::dtype::DType;
use crate::{Error, Result};

/// Threads per row and rows per block for rows of `width`: about 8 elements per thread, 32 to 1024
/// threads per row, 256 threads per block for narrow rows. The kernels keep up to 8 elements per
/// thread in registers between their passes (kernels/rows.cuh), so with this shape rows up to 8192
/// wide are read from memory once.
pub fn block_shape(width: usize) -> (u32, u32) {
    let per_row = width.div_ceil(8).next_power_of_two().clamp(32, 1024) as u32;
    (per_row, (256 / per_row).max(1))
}

/// The launch of a row-wise kernel over `rows` rows of `width` elements.
pub fn row_launch(rows: usize, width: usize) -> LaunchConfig {
    let (per_row, rows_per_block) = block_shape(width);
    LaunchConfig {
        grid: [rows.div_ceil(rows_per_block as usize) as u32, 1, 1],
        block: [per_row, rows_per_block, 1],
        dyn_smem: 0,
    }
}

/// `width` as the kernels' 32-bit row length.
pub fn row_width(op: &'static str, width: usize) -> Result<u32> {
    u32::try_from(width).map_err(|_| Error::invalid(op, format!("rows of {width} elements are too long")))
}

/// Softmax (or log-softmax) of every row of `width` elements of the storage, which holds whole
/// rows (as the CPU backend's).
pub fn softmax_last_dim(s: &CudaStorage, width: usize, log: bool) -> Result<CudaStorage> {
    let name = if log { "log_softmax" } else { "softmax" };
    if s.dtype() == DType::U32 {
        return Err(Error::not_float(name, DType::U32));
    }
    let dev = s.cuda_device();
    let out = CudaStorage::alloc(dev, s.dtype(), s.len())?;
    if s.is_empty() || width == 0 {
        return Ok(out);
    }
    let rows = s.len() / width;
    let k = kernel("softmax", &format!("softmax_{}", s.dtype().as_str()))?;
    let mut args = Args::new();
    args.push(s.ptr())
        .push(out.ptr())
        .push(rows as u64)
        .push(row_width(name, width)?)
        .push(log as i32);
    dev.launch(k, row_launch(rows, width), &mut args)?;
    Ok(out)
}

/// The gradient of [`softmax_last_dim`] from its output `y` and the incoming gradient `dy` (same
/// dtype and length, whole rows).
pub fn softmax_backward_last_dim(y: &CudaStorage, dy: &CudaStorage, width: usize, log: bool) -> Result<CudaStorage> {
    let name = if log {
        "log_softmax backward"
    } else {
        "softmax backward"
    };
    same_device(name, y, dy)?;
    if y.dtype() == DType::U32 {
        return Err(Error::not_float(name, DType::U32));
    }
    let dev = y.cuda_device();
    let out = CudaStorage::alloc(dev, y.dtype(), y.len())?;
    if y.is_empty() || width == 0 {
        return Ok(out);
    }
    let rows = y.len() / width;
    let k = kernel("softmax", &format!("softmax_backward_{}", y.dtype().as_str()))?;
    let mut args = Args::new();
    args.push(y.ptr())
        .push(dy.ptr())
        .push(out.ptr())
        .push(rows as u64)
        .push(row_width(name, width)?)
        .push(log as i32);
    dev.launch(k, row_launch(rows, width), &mut args)?;
    Ok(out)
}
