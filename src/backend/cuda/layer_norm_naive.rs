//! Launch wrapper for kernels/layer_norm_naive.cu, the naive LayerNorm of docs/layer_norm.md (f32,
//! one thread per row): a stepping stone to read next to the fast kernels' wrapper, tested on Emu
//! (tests/layer_norm_naive.rs) but not used by `Tensor::layer_norm`. It works on raw device buffers,
//! so it checks every buffer's size and device before a kernel may touch it.

use super::device::CudaDevice;
use super::kernel;
use super::launch::{Args, LaunchConfig};
use super::memory::DeviceBuffer;
use crate::{Error, Result};
use std::sync::Arc;

const OP: &str = "layer_norm_naive";
/// Threads per block of all three kernels (one thread per row, or per column).
const BLOCK: u32 = 128;

/// y = (x − mean)·rstd·w + b over `rows` rows of `c` f32 (x `[rows, c]`, w and b `[c]`); returns
/// (y, mean, rstd), the statistics `[rows]` f32 as the backward takes them.
pub fn layer_norm_naive_forward(
    dev: &Arc<CudaDevice>,
    x: &DeviceBuffer,
    w: &DeviceBuffer,
    b: Option<&DeviceBuffer>,
    (rows, c): (usize, usize),
    eps: f32,
) -> Result<(DeviceBuffer, DeviceBuffer, DeviceBuffer)> {
    if c == 0 {
        return Err(Error::invalid(OP, "rows of 0 elements have no mean"));
    }
    let n = numel(rows, c)?;
    check(dev, "x", x, n)?;
    check(dev, "weight", w, c)?;
    if let Some(b) = b {
        check(dev, "bias", b, c)?;
    }
    let y = DeviceBuffer::alloc(dev, n * 4)?;
    let mean = DeviceBuffer::alloc(dev, rows * 4)?;
    let rstd = DeviceBuffer::alloc(dev, rows * 4)?;
    if rows > 0 {
        let mut args = Args::new();
        args.push(x.ptr())
            .push(w.ptr())
            .push(b.map_or(0, |b| b.ptr()))
            .push(y.ptr())
            .push(mean.ptr())
            .push(rstd.ptr())
            .push(rows as u64)
            .push(width(c)?)
            .push(eps);
        dev.launch(
            kernel(OP, "layer_norm_naive_forward_f32")?,
            one_thread_each(rows)?,
            &mut args,
        )?;
    }
    Ok((y, mean, rstd))
}

/// Given dy `[rows, c]` and the forward's mean and rstd, returns (dx, dw, db).
pub fn layer_norm_naive_backward(
    dev: &Arc<CudaDevice>,
    x: &DeviceBuffer,
    w: &DeviceBuffer,
    dy: &DeviceBuffer,
    (mean, rstd): (&DeviceBuffer, &DeviceBuffer),
    (rows, c): (usize, usize),
) -> Result<(DeviceBuffer, DeviceBuffer, DeviceBuffer)> {
    let n = numel(rows, c)?;
    for (name, buf, elements) in [
        ("x", x, n),
        ("weight", w, c),
        ("dy", dy, n),
        ("mean", mean, rows),
        ("rstd", rstd, rows),
    ] {
        check(dev, name, buf, elements)?;
    }
    let dx = DeviceBuffer::alloc(dev, n * 4)?;
    let dw = DeviceBuffer::alloc(dev, c * 4)?;
    let db = DeviceBuffer::alloc(dev, c * 4)?;
    if c == 0 {
        return Ok((dx, dw, db));
    }
    if rows > 0 {
        let mut args = Args::new();
        args.push(x.ptr())
            .push(w.ptr())
            .push(dy.ptr())
            .push(mean.ptr())
            .push(rstd.ptr())
            .push(dx.ptr())
            .push(rows as u64)
            .push(width(c)?);
        dev.launch(
            kernel(OP, "layer_norm_naive_backward_dx_f32")?,
            one_thread_each(rows)?,
            &mut args,
        )?;
    }
    // with no rows, dw and db are sums of nothing: the kernel writes the zeros
    let mut args = Args::new();
    args.push(x.ptr())
        .push(dy.ptr())
        .push(mean.ptr())
        .push(rstd.ptr())
        .push(dw.ptr())
        .push(db.ptr())
        .push(rows as u64)
        .push(width(c)?);
    dev.launch(
        kernel(OP, "layer_norm_naive_dparams_f32")?,
        one_thread_each(c)?,
        &mut args,
    )?;
    Ok((dx, dw, db))
}

/// rows·c, refused when its bytes overflow.
fn numel(rows: usize, c: usize) -> Result<usize> {
    rows.checked_mul(c)
        .filter(|n| n.checked_mul(4).is_some())
        .ok_or_else(|| Error::invalid(OP, format!("{rows} rows of {c} elements overflow the address space")))
}

/// Refuses a buffer of another device, or one that does not hold exactly `elements` f32.
fn check(dev: &Arc<CudaDevice>, name: &str, buf: &DeviceBuffer, elements: usize) -> Result<()> {
    if !Arc::ptr_eq(buf.device(), dev) {
        return Err(Error::invalid(
            OP,
            format!("{name} is on {}, not {}", buf.device().device(), dev.device()),
        ));
    }
    if buf.bytes() != elements.saturating_mul(4) {
        return Err(Error::invalid(
            OP,
            format!(
                "{name} holds {} bytes, expected {elements} f32 ({} bytes)",
                buf.bytes(),
                elements * 4
            ),
        ));
    }
    Ok(())
}

/// `c` as the kernels' 32-bit row length.
fn width(c: usize) -> Result<u32> {
    u32::try_from(c).map_err(|_| Error::invalid(OP, format!("rows of {c} elements are too long")))
}

/// A 1-D launch of one thread per item (row or column), [`BLOCK`] threads per block.
fn one_thread_each(items: usize) -> Result<LaunchConfig> {
    let blocks = u32::try_from(items.div_ceil(BLOCK as usize))
        .map_err(|_| Error::invalid(OP, format!("{items} rows need more blocks than a grid holds")))?;
    Ok(LaunchConfig {
        grid: [blocks, 1, 1],
        block: [BLOCK, 1, 1],
        dyn_smem: 0,
    })
}
