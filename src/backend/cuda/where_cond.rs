//! Launch wrapper for kernels/where_cond.cu.

use super::launch::{Args, LaunchConfig};
use super::layout::KernelLayout;
use super::{bits_suffix, kernel, same_device, CudaStorage};
use crate::tensor::dtype::DType;
use crate::tensor::layout::Layout;
use crate::{Error, Result};

/// `cond ? on_true : on_false` elementwise; `cond` is U32 and all layouts have the output shape.
pub fn where_cond(
    c: &CudaStorage,
    lc: &Layout,
    t: &CudaStorage,
    lt: &Layout,
    f: &CudaStorage,
    lf: &Layout,
) -> Result<CudaStorage> {
    same_device("where_cond", c, t)?;
    same_device("where_cond", t, f)?;
    if c.dtype() != DType::U32 {
        return Err(Error::DType {
            op: "where_cond",
            msg: format!("the condition must be u32, got {}", c.dtype()),
        });
    }
    if t.dtype() != f.dtype() {
        return Err(Error::dtype_mismatch("where_cond", t.dtype(), f.dtype()));
    }
    let n = lc.numel();
    let dev = t.cuda_device();
    let out = CudaStorage::alloc(dev, t.dtype(), n)?;
    if n == 0 {
        return Ok(out);
    }
    let k = kernel("where_cond", &format!("where_cond_{}", bits_suffix(t.dtype())))?;
    let mut args = Args::new();
    args.push(c.ptr())
        .push(KernelLayout::new("where_cond", lc)?)
        .push(t.ptr())
        .push(KernelLayout::new("where_cond", lt)?)
        .push(f.ptr())
        .push(KernelLayout::new("where_cond", lf)?)
        .push(out.ptr())
        .push(n as u64);
    let pack = 16 / t.dtype().size_in_bytes().max(4);
    dev.launch(k, LaunchConfig::grid_stride(n.div_ceil(pack), dev.limits()), &mut args)?;
    Ok(out)
}
