//! Launch wrapper for kernels/softmax.cu: a row kernel (the launch shape in rows.rs).

use super::launch::Args;
use super::rows::{row_launch, row_width};
use super::{kernel, same_device, CudaStorage};
use crate::tensor::dtype::DType;
use crate::{Error, Result};

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
