//! Launch wrapper for kernels/unary.cu.

use super::launch::{Args, LaunchConfig};
use super::layout::KernelLayout;
use super::{kernel, CudaStorage};
use crate::ops::unary::UnaryOp;
use crate::tensor::dtype::DType;
use crate::tensor::layout::Layout;
use crate::{Error, Result};

/// The kernel's op code (the KILN_* defines in unary.cu) and its two parameters.
fn code(op: UnaryOp) -> (i32, f64, f64) {
    match op {
        UnaryOp::Neg => (0, 0.0, 0.0),
        UnaryOp::Exp => (1, 0.0, 0.0),
        UnaryOp::Log => (2, 0.0, 0.0),
        UnaryOp::Sqrt => (3, 0.0, 0.0),
        UnaryOp::Tanh => (4, 0.0, 0.0),
        UnaryOp::Gelu => (5, 0.0, 0.0),
        UnaryOp::GeluDerivative => (6, 0.0, 0.0),
        UnaryOp::Relu => (7, 0.0, 0.0),
        UnaryOp::Step => (8, 0.0, 0.0),
        UnaryOp::Recip => (9, 0.0, 0.0),
        UnaryOp::Powf(p) => (10, p, 0.0),
        UnaryOp::Affine { mul, add } => (11, mul, add),
    }
}

/// `op` of every viewed element, contiguous.
pub fn unary(op: UnaryOp, s: &CudaStorage, layout: &Layout) -> Result<CudaStorage> {
    if s.dtype() == DType::U32 {
        return Err(Error::not_float(op.name(), DType::U32));
    }
    let n = layout.numel();
    let dev = s.cuda_device();
    let out = CudaStorage::alloc(dev, s.dtype(), n)?;
    if n == 0 {
        return Ok(out);
    }
    let k = kernel("unary", &format!("unary_{}", s.dtype().as_str()))?;
    let (code, p0, p1) = code(op);
    let mut args = Args::new();
    args.push(s.ptr())
        .push(KernelLayout::new(op.name(), layout)?)
        .push(out.ptr())
        .push(n as u64)
        .push(code)
        .push(p0)
        .push(p1);
    let pack = 16 / s.dtype().size_in_bytes();
    dev.launch(k, LaunchConfig::grid_stride(n.div_ceil(pack), dev.limits()), &mut args)?;
    Ok(out)
}
