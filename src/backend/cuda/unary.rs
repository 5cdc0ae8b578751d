//! Launch wrappers for kernels/unary.cu: the unary maps and GELU's fused backward.

use super::launch::{Args, LaunchConfig};
use super::layout::KernelLayout;
use super::{float_suffix, kernel, same_device, CudaStorage};
use crate::backend::op::UnaryOp;
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
        UnaryOp::Relu => (6, 0.0, 0.0),
        UnaryOp::Step => (7, 0.0, 0.0),
        UnaryOp::Recip => (8, 0.0, 0.0),
        UnaryOp::Powf(p) => (9, p, 0.0),
        UnaryOp::Affine { mul, add } => (10, mul, add),
        UnaryOp::Silu => (11, 0.0, 0.0),
        UnaryOp::SiluDerivative => (12, 0.0, 0.0),
        UnaryOp::Abs => (13, 0.0, 0.0),
        UnaryOp::Sign => (14, 0.0, 0.0),
        UnaryOp::Sigmoid => (15, 0.0, 0.0),
        UnaryOp::Clamp { min, max } => (16, min, max),
        UnaryOp::GeluErf => (17, 0.0, 0.0),
        UnaryOp::GeluErfDerivative => (18, 0.0, 0.0),
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

/// `g·gelu'(z)` elementwise (`gelu_backward_<dtype>`): both views have one shape; the result is
/// contiguous. One launch with 16-byte packs where both views are contiguous and aligned.
pub fn gelu_backward(g: &CudaStorage, lg: &Layout, z: &CudaStorage, lz: &Layout) -> Result<CudaStorage> {
    const OP: &str = "gelu_backward";
    same_device(OP, g, z)?;
    if g.dtype() != z.dtype() {
        return Err(Error::dtype_mismatch(OP, g.dtype(), z.dtype()));
    }
    let suffix = float_suffix(OP, g)?;
    let n = lg.numel();
    let dev = g.cuda_device();
    let out = CudaStorage::alloc(dev, g.dtype(), n)?;
    if n == 0 {
        return Ok(out);
    }
    let k = kernel("unary", &format!("gelu_backward_{suffix}"))?;
    let mut args = Args::new();
    args.push(g.ptr())
        .push(KernelLayout::new(OP, lg)?)
        .push(z.ptr())
        .push(KernelLayout::new(OP, lz)?)
        .push(out.ptr())
        .push(n as u64);
    let pack = 16 / g.dtype().size_in_bytes();
    dev.launch(k, LaunchConfig::grid_stride(n.div_ceil(pack), dev.limits()), &mut args)?;
    Ok(out)
}
