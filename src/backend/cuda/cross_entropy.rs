//! Launch wrapper for kernels/cross_entropy.cu: the forward and backward are row kernels (the
//! launch of rows.rs), the mean one block; targets, log-sum-exps, the loss and its gradient all
//! stay on the device.

use super::launch::{Args, LaunchConfig};
use super::rows::{row_launch, row_width};
use super::{acc_dtype, float_suffix, kernel, same_device, CudaStorage};
use crate::{Error, Result};

/// Threads of the one block that averages the per-row losses.
const MEAN_BLOCK: u32 = 256;

/// The kernels' "no ignored target": above any u32.
fn ignore_code(ignore: Option<u32>) -> u64 {
    ignore.map_or(u64::MAX, u64::from)
}

/// Logits `[n, c]`, u32 targets `[n]` (checked: below `c` or ignored; `count` rows not ignored).
/// Returns (the mean loss and the per-row log-sum-exp, both in the accumulation type: f32 for
/// f32/bf16/f16 logits, f64 for f64).
pub fn cross_entropy_forward(
    x: &CudaStorage,
    targets: &CudaStorage,
    c: usize,
    ignore: Option<u32>,
    count: usize,
) -> Result<(CudaStorage, CudaStorage)> {
    const OP: &str = "cross_entropy";
    same_device(OP, x, targets)?;
    let dtype = float_suffix(OP, x)?;
    let dev = x.cuda_device();
    let rows = targets.len();
    let lse = CudaStorage::alloc(dev, acc_dtype(x.dtype()), rows)?;
    let loss_rows = CudaStorage::alloc(dev, acc_dtype(x.dtype()), rows)?;
    let k = kernel("cross_entropy", &format!("cross_entropy_forward_{dtype}"))?;
    let mut args = Args::new();
    args.push(x.ptr())
        .push(targets.ptr())
        .push(lse.ptr())
        .push(loss_rows.ptr())
        .push(rows as u64)
        .push(row_width(OP, c)?)
        .push(ignore_code(ignore));
    dev.launch(k, row_launch(rows, c), &mut args)?;

    let loss = CudaStorage::alloc(dev, acc_dtype(x.dtype()), 1)?;
    let k = kernel("cross_entropy", &format!("cross_entropy_mean_{}", acc_dtype(x.dtype())))?;
    let mut args = Args::new();
    args.push(loss_rows.ptr())
        .push(loss.ptr())
        .push(rows as u64)
        .push_acc(x.dtype(), count as f64);
    let cfg = LaunchConfig {
        grid: [1, 1, 1],
        block: [MEAN_BLOCK, 1, 1],
        dyn_smem: 0,
    };
    dev.launch(k, cfg, &mut args)?;
    Ok((loss, lse))
}

/// d logits = (softmax − onehot)·g/count, zero on ignored rows; `g` is the loss's gradient, a
/// scalar of the accumulation type (the loss's), read by the kernel.
pub fn cross_entropy_backward(
    x: &CudaStorage,
    targets: &CudaStorage,
    lse: &CudaStorage,
    g: &CudaStorage,
    c: usize,
    ignore: Option<u32>,
    count: usize,
) -> Result<CudaStorage> {
    const OP: &str = "cross_entropy backward";
    same_device(OP, x, targets)?;
    same_device(OP, x, g)?;
    let dtype = float_suffix(OP, x)?;
    if g.dtype() != acc_dtype(x.dtype()) {
        return Err(Error::dtype_mismatch(OP, acc_dtype(x.dtype()), g.dtype()));
    }
    let dev = x.cuda_device();
    let rows = targets.len();
    let dx = CudaStorage::alloc(dev, x.dtype(), x.len())?;
    let k = kernel("cross_entropy", &format!("cross_entropy_backward_{dtype}"))?;
    let mut args = Args::new();
    args.push(x.ptr())
        .push(targets.ptr())
        .push(lse.ptr())
        .push(g.ptr())
        .push(dx.ptr())
        .push(rows as u64)
        .push(row_width(OP, c)?)
        .push(ignore_code(ignore))
        .push_acc(x.dtype(), count as f64);
    dev.launch(k, row_launch(rows, c), &mut args)?;
    Ok(dx)
}
