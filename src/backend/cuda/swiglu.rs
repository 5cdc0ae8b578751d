//! Launch wrappers for kernels/swiglu.cu: silu(gate)·up and its backward, one launch each.

use super::launch::{Args, LaunchConfig};
use super::layout::KernelLayout;
use super::{float_suffix, kernel, same_device, CudaStorage};
use crate::tensor::layout::Layout;
use crate::{Error, Result};

/// silu(gate)·up over two views of one shape; the result is contiguous.
pub fn swiglu_forward(gate: &CudaStorage, lg: &Layout, up: &CudaStorage, lu: &Layout) -> Result<CudaStorage> {
    const OP: &str = "swiglu";
    same_device(OP, gate, up)?;
    if gate.dtype() != up.dtype() {
        return Err(Error::dtype_mismatch(OP, gate.dtype(), up.dtype()));
    }
    let suffix = float_suffix(OP, gate)?;
    let n = lg.numel();
    let dev = gate.cuda_device();
    let y = CudaStorage::alloc(dev, gate.dtype(), n)?;
    if n == 0 {
        return Ok(y);
    }
    let k = kernel("swiglu", &format!("swiglu_forward_{suffix}"))?;
    let mut args = Args::new();
    args.push(gate.ptr())
        .push(KernelLayout::new(OP, lg)?)
        .push(up.ptr())
        .push(KernelLayout::new(OP, lu)?)
        .push(y.ptr())
        .push(n as u64);
    let pack = 16 / gate.dtype().size_in_bytes();
    dev.launch(k, LaunchConfig::grid_stride(n.div_ceil(pack), dev.limits()), &mut args)?;
    Ok(y)
}

/// (dgate, dup) from contiguous gate, up and dy of one length.
pub fn swiglu_backward(gate: &CudaStorage, up: &CudaStorage, dy: &CudaStorage) -> Result<(CudaStorage, CudaStorage)> {
    const OP: &str = "swiglu backward";
    for other in [up, dy] {
        same_device(OP, gate, other)?;
        if other.dtype() != gate.dtype() {
            return Err(Error::dtype_mismatch(OP, gate.dtype(), other.dtype()));
        }
    }
    let suffix = float_suffix(OP, gate)?;
    let n = gate.len();
    let dev = gate.cuda_device();
    let dgate = CudaStorage::alloc(dev, gate.dtype(), n)?;
    let dup = CudaStorage::alloc(dev, gate.dtype(), n)?;
    if n == 0 {
        return Ok((dgate, dup));
    }
    let k = kernel("swiglu", &format!("swiglu_backward_{suffix}"))?;
    let mut args = Args::new();
    args.push(gate.ptr())
        .push(up.ptr())
        .push(dy.ptr())
        .push(dgate.ptr())
        .push(dup.ptr())
        .push(n as u64);
    let pack = 16 / gate.dtype().size_in_bytes();
    dev.launch(k, LaunchConfig::grid_stride(n.div_ceil(pack), dev.limits()), &mut args)?;
    Ok((dgate, dup))
}
