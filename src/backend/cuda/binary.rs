//! Launch wrapper for kernels/binary.cu.

use super::launch::{Args, LaunchConfig};
use super::layout::KernelLayout;
use super::{kernel, same_device, CudaStorage};
use crate::backend::op::BinaryOp;
use crate::tensor::dtype::DType;
use crate::tensor::layout::Layout;
use crate::{Error, Result};

/// The kernel's op code (the KILN_* defines in binary.cu).
fn code(op: BinaryOp) -> i32 {
    match op {
        BinaryOp::Add => 0,
        BinaryOp::Sub => 1,
        BinaryOp::Mul => 2,
        BinaryOp::Div => 3,
        BinaryOp::Maximum => 4,
        BinaryOp::Minimum => 5,
        BinaryOp::Eq => 6,
        BinaryOp::Ne => 7,
        BinaryOp::Lt => 8,
        BinaryOp::Le => 9,
        BinaryOp::Gt => 10,
        BinaryOp::Ge => 11,
    }
}

/// `op` elementwise; both layouts already have the (broadcast) output shape. Arithmetic keeps the
/// dtype; comparisons give U32 0/1.
pub fn binary(op: BinaryOp, a: &CudaStorage, la: &Layout, b: &CudaStorage, lb: &Layout) -> Result<CudaStorage> {
    same_device(op.name(), a, b)?;
    let dtype = a.dtype();
    if op.is_comparison() {
        if dtype != b.dtype() {
            return Err(Error::dtype_mismatch(op.name(), dtype, b.dtype()));
        }
    } else if dtype == DType::U32 && b.dtype() == DType::U32 {
        return Err(Error::not_float(op.name(), DType::U32));
    } else if dtype != b.dtype() {
        return Err(Error::dtype_mismatch(op.name(), dtype, b.dtype()));
    }
    let (family, out_dtype) = if op.is_comparison() {
        ("compare", DType::U32)
    } else {
        ("binary", dtype)
    };
    let n = la.numel();
    let dev = a.cuda_device();
    let out = CudaStorage::alloc(dev, out_dtype, n)?;
    if n == 0 {
        return Ok(out);
    }
    let k = kernel("binary", &format!("{family}_{}", dtype.as_str()))?;
    let mut args = Args::new();
    args.push(a.ptr())
        .push(KernelLayout::new(op.name(), la)?)
        .push(b.ptr())
        .push(KernelLayout::new(op.name(), lb)?)
        .push(out.ptr())
        .push(n as u64)
        .push(code(op));
    let pack = 16 / dtype.size_in_bytes().max(out_dtype.size_in_bytes());
    dev.launch(k, LaunchConfig::grid_stride(n.div_ceil(pack), dev.limits()), &mut args)?;
    Ok(out)
}
