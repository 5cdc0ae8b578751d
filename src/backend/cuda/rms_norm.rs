//! Launch wrapper for kernels/rms_norm.cu: the forward and dx as row kernels (the launch of
//! softmax.rs and layernorm.rs), dw in two deterministic stages (partials per chunk of rows, then a
//! sum per column in chunk order), chunked as layer_norm's dw and db.

use super::launch::{Args, LaunchConfig};
use super::layer_norm::rows_per_chunk;
use super::rows::{row_launch, row_width};
use super::{acc_dtype, fill, float_suffix, kernel, same_device, CudaStorage};
use crate::Result;

/// y = x·rstd·w over rows of `c`; returns (y, rstd), the statistic in the accumulation type.
pub fn rms_norm_forward(x: &CudaStorage, w: &CudaStorage, c: usize, eps: f64) -> Result<(CudaStorage, CudaStorage)> {
    const OP: &str = "rms_norm";
    same_device(OP, x, w)?;
    let dtype = float_suffix(OP, x)?;
    let dev = x.cuda_device();
    let rows = x.len().checked_div(c).unwrap_or(0);
    let y = CudaStorage::alloc(dev, x.dtype(), x.len())?;
    let rstd = CudaStorage::alloc(dev, acc_dtype(x.dtype()), rows)?;
    if rows == 0 {
        return Ok((y, rstd));
    }
    let k = kernel("rms_norm", &format!("rms_norm_forward_{dtype}"))?;
    let mut args = Args::new();
    args.push(x.ptr())
        .push(w.ptr())
        .push(y.ptr())
        .push(rstd.ptr())
        .push(rows as u64)
        .push(row_width(OP, c)?)
        .push_acc(x.dtype(), eps);
    dev.launch(k, row_launch(rows, c), &mut args)?;
    Ok((y, rstd))
}

/// Given dy and the forward's rstd, returns (dx, dw).
pub fn rms_norm_backward(
    x: &CudaStorage,
    w: &CudaStorage,
    dy: &CudaStorage,
    rstd: &CudaStorage,
    c: usize,
) -> Result<(CudaStorage, CudaStorage)> {
    const OP: &str = "rms_norm backward";
    same_device(OP, x, w)?;
    same_device(OP, x, dy)?;
    let dtype = float_suffix(OP, x)?;
    let dev = x.cuda_device();
    let rows = x.len().checked_div(c).unwrap_or(0);
    let dx = CudaStorage::alloc(dev, x.dtype(), x.len())?;
    if rows == 0 {
        return Ok((dx, fill::filled(dev, 0.0, c, x.dtype())?));
    }
    let width = row_width(OP, c)?;
    let k = kernel("rms_norm", &format!("rms_norm_backward_dx_{dtype}"))?;
    let mut args = Args::new();
    args.push(x.ptr())
        .push(w.ptr())
        .push(dy.ptr())
        .push(rstd.ptr())
        .push(dx.ptr())
        .push(rows as u64)
        .push(width);
    dev.launch(k, row_launch(rows, c), &mut args)?;

    // columns per thread: 16-byte packs when every row of x and dy is 16-byte aligned
    let n = (16 / x.dtype().size_in_bytes()) as u32;
    let pack = if c.is_multiple_of(n as usize) && x.ptr().is_multiple_of(16) && dy.ptr().is_multiple_of(16) {
        n
    } else {
        1
    };
    let per_chunk = rows_per_chunk(rows, c.div_ceil(pack as usize), dev.limits().sm_count);
    let chunks = rows.div_ceil(per_chunk);
    let partial = CudaStorage::alloc(dev, acc_dtype(x.dtype()), chunks * c)?;
    let k = kernel("rms_norm", &format!("rms_norm_dweight_partial_{dtype}"))?;
    let mut args = Args::new();
    args.push(x.ptr())
        .push(dy.ptr())
        .push(rstd.ptr())
        .push(partial.ptr())
        .push(rows as u64)
        .push(width)
        .push(per_chunk as u64)
        .push(pack);
    let cfg = LaunchConfig {
        grid: [c.div_ceil(32 * pack as usize) as u32, chunks as u32, 1],
        block: [32, 8, 1],
        dyn_smem: 0,
    };
    dev.launch(k, cfg, &mut args)?;

    let dw = CudaStorage::alloc(dev, x.dtype(), c)?;
    let k = kernel("rms_norm", &format!("rms_norm_dweight_finish_{dtype}"))?;
    let mut args = Args::new();
    args.push(partial.ptr()).push(dw.ptr()).push(chunks as u32).push(width);
    dev.launch(k, LaunchConfig::grid_stride(c, dev.limits()), &mut args)?;
    Ok((dx, dw))
}
