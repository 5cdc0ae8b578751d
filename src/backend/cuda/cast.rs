//! Launch wrapper for kernels/cast.cu.

use super::launch::{Args, LaunchConfig};
use super::layout::KernelLayout;
use super::{copy, kernel, CudaStorage};
use crate::tensor::dtype::DType;
use crate::tensor::layout::Layout;
use crate::Result;

/// The viewed elements converted to `dtype`, contiguous.
pub fn cast(s: &CudaStorage, layout: &Layout, dtype: DType) -> Result<CudaStorage> {
    if dtype == s.dtype() {
        return copy::contiguous(s, layout);
    }
    let n = layout.numel();
    let dev = s.cuda_device();
    let out = CudaStorage::alloc(dev, dtype, n)?;
    if n == 0 {
        return Ok(out);
    }
    let k = kernel("cast", &format!("cast_{}_{}", s.dtype().as_str(), dtype.as_str()))?;
    let mut args = Args::new();
    args.push(s.ptr())
        .push(KernelLayout::new("to_dtype", layout)?)
        .push(out.ptr())
        .push(n as u64);
    let pack = 16 / s.dtype().size_in_bytes().max(dtype.size_in_bytes());
    dev.launch(k, LaunchConfig::grid_stride(n.div_ceil(pack), dev.limits()), &mut args)?;
    Ok(out)
}
