//! Launch wrappers for kernels/copy.cu: `contiguous` and `assign`; and a view's elements read
//! to the host (packed by `contiguous` first when strided).

use super::launch::{Args, LaunchConfig};
use super::layout::{collapse, KernelLayout, MAX_RANK};
use super::{bits_suffix, kernel, same_device, CudaStorage};
use crate::tensor::dtype::WithDType;
use crate::tensor::layout::Layout;
use crate::Result;

/// A contiguous copy of the viewed elements.
pub fn contiguous(s: &CudaStorage, layout: &Layout) -> Result<CudaStorage> {
    let n = layout.numel();
    let out = CudaStorage::alloc(s.cuda_device(), s.dtype(), n)?;
    copy_into(s, layout, &out, &Layout::contiguous(layout.shape()))?;
    Ok(out)
}

/// The viewed elements, contiguous, in host memory; `T` is the storage's element type.
pub fn to_host<T: WithDType>(s: &CudaStorage, layout: &Layout) -> Result<Vec<T>> {
    if layout.is_contiguous() {
        s.read_host(layout.offset(), layout.numel())
    } else {
        contiguous(s, layout)?.read_host(0, layout.numel())
    }
}

/// Writes `src` viewed through `ls` into the elements of `dst` that `ld` views.
pub fn assign(dst: &mut CudaStorage, ld: &Layout, src: &CudaStorage, ls: &Layout) -> Result<()> {
    same_device("assign", dst, src)?;
    copy_into(src, ls, dst, ld)
}

fn copy_into(src: &CudaStorage, ls: &Layout, dst: &CudaStorage, ld: &Layout) -> Result<()> {
    let n = ls.numel();
    if n == 0 {
        return Ok(());
    }
    // The kernel takes at most MAX_RANK dims once mergeable ones are merged. A view with more (a
    // rank-12 permutation) is copied in slabs: one launch per index of its leading dims, each
    // slab a view of the last MAX_RANK dims.
    let merged_rank = |l: &Layout| collapse(l.shape(), l.strides()).0.len();
    if merged_rank(ls) > MAX_RANK || merged_rank(ld) > MAX_RANK {
        let lead = ls.rank() - MAX_RANK;
        let outer = |l: &Layout| Layout::new(l.shape()[..lead].to_vec(), l.strides()[..lead].to_vec(), l.offset());
        let inner = |l: &Layout, offset| Layout::new(l.shape()[lead..].to_vec(), l.strides()[lead..].to_vec(), offset);
        for (from, to) in outer(ls).offsets().zip(outer(ld).offsets()) {
            copy_into(src, &inner(ls, from), dst, &inner(ld, to))?;
        }
        return Ok(());
    }
    let dev = src.cuda_device();
    let size = src.dtype().size_in_bytes();
    if ls.is_contiguous() && ld.is_contiguous() {
        return dst
            .buf
            .copy_from(ld.offset() * size, &src.buf, ls.offset() * size, n * size);
    }
    let k = kernel("copy", &format!("copy_{}", bits_suffix(src.dtype())))?;
    let mut args = Args::new();
    args.push(src.ptr())
        .push(KernelLayout::new("contiguous", ls)?)
        .push(dst.ptr())
        .push(KernelLayout::new("contiguous", ld)?)
        .push(n as u64);
    dev.launch(k, LaunchConfig::grid_stride(n, dev.limits()), &mut args)
}
