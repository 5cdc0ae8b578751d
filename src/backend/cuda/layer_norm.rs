//! Launch wrapper for kernels/layer_norm.cu: the forward and dx as row kernels (the launch of
//! rows.rs), dw and db in two deterministic stages (partials per chunk of rows, then a sum per
//! column in chunk order).

use super::launch::{Args, LaunchConfig};
use super::rows::{row_launch, row_width};
use super::{acc_dtype, fill, float_suffix, kernel, same_device, CudaStorage};
use crate::Result;

/// Rows per chunk of the dw/db partial sums over `c` columns of threads (the columns, or their
/// 16-byte packs): enough blocks to fill the device (two per SM over all 32-thread strips), at least
/// 32 rows per chunk.
pub fn rows_per_chunk(rows: usize, c: usize, sm_count: u32) -> usize {
    let strips = c.div_ceil(32).max(1);
    let chunks = (2 * sm_count as usize / strips).clamp(1, rows.div_ceil(32).max(1));
    rows.div_ceil(chunks).max(1)
}

/// y = (x − mean)·rstd·w + b over rows of `c`; returns (y, mean, rstd), the statistics in the
/// accumulation type.
pub fn layer_norm_forward(
    x: &CudaStorage,
    w: &CudaStorage,
    b: Option<&CudaStorage>,
    c: usize,
    eps: f64,
) -> Result<(CudaStorage, CudaStorage, CudaStorage)> {
    const OP: &str = "layer_norm";
    same_device(OP, x, w)?;
    if let Some(b) = b {
        same_device(OP, x, b)?;
    }
    let dtype = float_suffix(OP, x)?;
    let dev = x.cuda_device();
    let rows = x.len().checked_div(c).unwrap_or(0);
    let y = CudaStorage::alloc(dev, x.dtype(), x.len())?;
    let mean = CudaStorage::alloc(dev, acc_dtype(x.dtype()), rows)?;
    let rstd = CudaStorage::alloc(dev, acc_dtype(x.dtype()), rows)?;
    if rows == 0 {
        return Ok((y, mean, rstd));
    }
    let k = kernel("layer_norm", &format!("layer_norm_forward_{dtype}"))?;
    let mut args = Args::new();
    args.push(x.ptr())
        .push(w.ptr())
        .push(b.map_or(0, |b| b.ptr()))
        .push(y.ptr())
        .push(mean.ptr())
        .push(rstd.ptr())
        .push(rows as u64)
        .push(row_width(OP, c)?)
        .push_acc(x.dtype(), eps);
    dev.launch(k, row_launch(rows, c), &mut args)?;
    Ok((y, mean, rstd))
}

/// Given dy and the forward's statistics, returns (dx, dw, db).
pub fn layer_norm_backward(
    x: &CudaStorage,
    w: &CudaStorage,
    dy: &CudaStorage,
    mean: &CudaStorage,
    rstd: &CudaStorage,
    c: usize,
) -> Result<(CudaStorage, CudaStorage, CudaStorage)> {
    const OP: &str = "layer_norm backward";
    same_device(OP, x, w)?;
    same_device(OP, x, dy)?;
    let dtype = float_suffix(OP, x)?;
    let dev = x.cuda_device();
    let rows = x.len().checked_div(c).unwrap_or(0);
    let dx = CudaStorage::alloc(dev, x.dtype(), x.len())?;
    if rows == 0 {
        let zeros = || fill::filled(dev, 0.0, c, x.dtype());
        return Ok((dx, zeros()?, zeros()?));
    }
    let width = row_width(OP, c)?;
    let k = kernel("layer_norm", &format!("layer_norm_backward_dx_{dtype}"))?;
    let mut args = Args::new();
    args.push(x.ptr())
        .push(w.ptr())
        .push(dy.ptr())
        .push(mean.ptr())
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
    let partial = CudaStorage::alloc(dev, acc_dtype(x.dtype()), 2 * chunks * c)?;
    let k = kernel("layer_norm", &format!("layer_norm_dparams_partial_{dtype}"))?;
    let mut args = Args::new();
    args.push(x.ptr())
        .push(dy.ptr())
        .push(mean.ptr())
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
    let db = CudaStorage::alloc(dev, x.dtype(), c)?;
    let k = kernel("layer_norm", &format!("layer_norm_dparams_finish_{dtype}"))?;
    let mut args = Args::new();
    args.push(partial.ptr())
        .push(dw.ptr())
        .push(db.ptr())
        .push(chunks as u32)
        .push(width);
    dev.launch(k, LaunchConfig::grid_stride(c, dev.limits()), &mut args)?;
    Ok((dx, dw, db))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_fill_the_device_and_cover_every_row() {
        // GPT-2 small's backward: 8 x 1024 rows of 768, in f32 packs of 4 -> 192 thread columns,
        // 6 strips, 44 chunks of 187 rows; one column per thread (odd widths) -> 24 strips, 11 of 745
        assert_eq!(rows_per_chunk(8192, 192, 132), 187);
        assert_eq!(rows_per_chunk(8192, 768, 132), 745);
        // few rows: one chunk
        assert_eq!(rows_per_chunk(5, 3, 132), 5);
        for (rows, c) in [(1, 1), (33, 7), (100, 5000), (4097, 64)] {
            let per = rows_per_chunk(rows, c, 132);
            assert!(per >= 1 && rows.div_ceil(per) * per >= rows, "{rows} x {c}");
        }
    }
}
