//! Launch wrapper for kernels/rope.cu: the rotation of every pair, one thread each, after each block
//! has put the frequencies in shared memory.

use super::launch::{Args, LaunchConfig};
use super::{acc_dtype, float_suffix, kernel, CudaStorage};
use crate::backend::op::{RopeLayout, RopeSpec};
use crate::{Error, Result};

/// x (contiguous `[batch, seq, heads, head_dim]`) rotated by +θ (`inverse` false) or −θ.
pub fn rope(x: &CudaStorage, spec: &RopeSpec, inverse: bool) -> Result<CudaStorage> {
    const OP: &str = "rope";
    let suffix = float_suffix(OP, x)?;
    let dev = x.cuda_device();
    let y = CudaStorage::alloc(dev, x.dtype(), x.len())?;
    let pairs = x.len() / 2;
    if pairs == 0 {
        return Ok(y);
    }
    let narrow = |v: usize, what: &str| {
        u32::try_from(v).map_err(|_| Error::invalid(OP, format!("{what} {v} does not fit the kernel's 32 bits")))
    };
    let (half, heads, seq) = (
        narrow(spec.head_dim / 2, "head_dim / 2")?,
        narrow(spec.heads, "heads")?,
        narrow(spec.seq, "seq")?,
    );
    let smem = half as usize * acc_dtype(x.dtype()).size_in_bytes();
    if smem > dev.limits().max_smem_default as usize {
        return Err(Error::invalid(
            OP,
            format!(
                "head_dim {} needs {smem} bytes of shared memory for its frequencies",
                spec.head_dim
            ),
        ));
    }
    let k = kernel("rope", &format!("rope_{suffix}"))?;
    let mut args = Args::new();
    args.push(x.ptr())
        .push(y.ptr())
        .push(spec.base)
        .push(pairs as u64)
        .push(half)
        .push(heads)
        .push(seq)
        .push(spec.position_offset as u64)
        .push(matches!(spec.layout, RopeLayout::Interleaved) as i32)
        .push(inverse as i32);
    let cfg = LaunchConfig::grid_stride(pairs, dev.limits()).with_dyn_smem(smem as u32);
    dev.launch(k, cfg, &mut args)?;
    Ok(y)
}
