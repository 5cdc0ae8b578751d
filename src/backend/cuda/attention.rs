//! Launch wrappers for kernels/attention.cu: the fused attention forward (saving the log-sum-exp
//! of every query row) and its backward (D = rowsum(dO∘O), then dK/dV and dQ in two kernels, no
//! atomics); SIMT kernels for f32/f64, tensor-core ones for bf16/f16. The header of attention.cu
//! explains the tiles; this file sizes the grids and the dynamic shared memory.

use super::launch::{Args, LaunchConfig};
use super::{kernel, same_device, CudaStorage};
use crate::backend::op::AttentionDims;
use crate::tensor::dtype::DType;
use crate::{Error, Result};

const OP: &str = "scaled_dot_product_attention";
/// Warps per block, and threads.
const WARPS: usize = 4;
const THREADS: u32 = 32 * WARPS as u32;
/// Keys (or query rows) per streamed tile: one per lane.
const TILE: usize = 32;
/// The widest head the kernels hold in registers (4 dims per lane).
pub const MAX_HEAD_DIM: usize = 128;

/// The kernels' arithmetic type (that of lse and D): f64 for f64, f32 otherwise.
fn acc_dtype(dtype: DType) -> DType {
    if dtype == DType::F64 {
        DType::F64
    } else {
        DType::F32
    }
}

/// Whether `dtype` runs on the tensor-core kernels (`*_mma_*`).
fn tensor_cores(dtype: DType) -> bool {
    matches!(dtype, DType::BF16 | DType::F16)
}

/// Rows (forward, dQ) or keys (dK/dV) per block: 4 warps of 16 on tensor cores, else of 8 (f32
/// arithmetic) or 4 (f64).
fn block_rows(dtype: DType) -> usize {
    if tensor_cores(dtype) {
        WARPS * 16
    } else {
        WARPS * 32 / acc_dtype(dtype).size_in_bytes()
    }
}

/// The tensor-core kernels' shared-memory tiles hold `rows` rows of T padded to ⌈d/16⌉·16 + 8.
fn mma_tile_bytes(dtype: DType, d: usize, rows: usize) -> usize {
    rows * (d.div_ceil(16) * 16 + 8) * dtype.size_in_bytes()
}

/// Checks what the kernels need beyond the op's own checks: one device, one float dtype, a head
/// dim they hold, sizes that fit their 32-bit indices. Returns (tq, tk, d) as u32.
fn check(q: &CudaStorage, others: &[&CudaStorage], dims: AttentionDims) -> Result<(u32, u32, u32)> {
    for s in others {
        same_device(OP, q, s)?;
        if s.dtype() != q.dtype() {
            return Err(Error::dtype_mismatch(OP, q.dtype(), s.dtype()));
        }
    }
    if !q.dtype().is_float() {
        return Err(Error::not_float(OP, q.dtype()));
    }
    if dims.kv_stride != dims.tk * dims.d {
        return Err(Error::invalid(
            OP,
            format!("the {} kernels read dense K and V; make them contiguous", q.device()),
        ));
    }
    if dims.d > MAX_HEAD_DIM {
        return Err(Error::invalid(
            OP,
            format!(
                "head dim {} is over the {MAX_HEAD_DIM} the {} kernels support; run it on Device::Cpu",
                dims.d,
                q.device()
            ),
        ));
    }
    let small = |n: usize, what: &str| {
        u32::try_from(n).map_err(|_| Error::invalid(OP, format!("{what} = {n} is over the kernels' 32-bit range")))
    };
    Ok((small(dims.tq, "Tq")?, small(dims.tk, "Tk")?, small(dims.d, "D")?))
}

/// The grid of one of `heads` heads per x and one tile of `rows_per_block` of `n` rows per y.
fn config(heads: usize, n: usize, rows_per_block: usize, smem_bytes: usize) -> LaunchConfig {
    LaunchConfig {
        grid: [heads as u32, n.div_ceil(rows_per_block) as u32, 1],
        block: [THREADS, 1, 1],
        dyn_smem: smem_bytes as u32,
    }
}

/// The grid's x is the head count: refuse what does not fit before the cast in [`config`]. Returns
/// the query heads per key/value head as the kernels' u32.
fn check_heads(dims: AttentionDims) -> Result<u32> {
    if dims.bh > i32::MAX as usize {
        return Err(Error::invalid(
            OP,
            format!("{} heads are too many for one launch", dims.bh),
        ));
    }
    if dims.group == 0 || !dims.bh.is_multiple_of(dims.group) {
        return Err(Error::invalid(
            OP,
            format!("{} query heads do not split into groups of {}", dims.bh, dims.group),
        ));
    }
    Ok(dims.group as u32)
}

/// q `[bh, tq, d]`, k and v `[bh / group, tk, d]`, contiguous; returns (o `[bh, tq, d]`, lse
/// `[bh, tq]`).
pub fn attention_forward(
    q: &CudaStorage,
    k: &CudaStorage,
    v: &CudaStorage,
    dims: AttentionDims,
) -> Result<(CudaStorage, CudaStorage)> {
    let (tq, tk, d) = check(q, &[k, v], dims)?;
    let group = check_heads(dims)?;
    let dev = q.cuda_device();
    let dt = q.dtype();
    let o = CudaStorage::alloc(dev, dt, dims.bh * dims.tq * dims.d)?;
    let lse = CudaStorage::alloc(dev, acc_dtype(dt), dims.bh * dims.tq)?;
    if o.is_empty() {
        return Ok((o, lse));
    }
    let (dd, bq) = (dims.d, block_rows(dt));
    let (name, smem_bytes) = if tensor_cores(dt) {
        // the Q tile and two K/V tiles (double-buffered)
        let bytes = mma_tile_bytes(dt, dd, bq + 4 * TILE);
        (format!("attention_fwd_mma_{}", dt.as_str()), bytes)
    } else {
        let elems = bq * dd + TILE * (dd + 1) + TILE * dd + bq * TILE;
        (
            format!("attention_fwd_{}", dt.as_str()),
            elems * acc_dtype(dt).size_in_bytes(),
        )
    };
    let mut args = Args::new();
    args.push(q.ptr())
        .push(k.ptr())
        .push(v.ptr())
        .push(o.ptr())
        .push(lse.ptr())
        .push(tq)
        .push(tk)
        .push(d)
        .push(group)
        .push(dims.causal as i32)
        .push(dims.scale());
    dev.launch(
        kernel("attention", &name)?,
        config(dims.bh, dims.tq, bq, smem_bytes),
        &mut args,
    )?;
    Ok((o, lse))
}

/// The backward: from q, k, v, the output o, its gradient dout and the forward's lse, returns
/// (dq, dk, dv).
pub fn attention_backward(
    q: &CudaStorage,
    k: &CudaStorage,
    v: &CudaStorage,
    o: &CudaStorage,
    dout: &CudaStorage,
    lse: &CudaStorage,
    dims: AttentionDims,
) -> Result<(CudaStorage, CudaStorage, CudaStorage)> {
    let (tq, tk, d) = check(q, &[k, v, o, dout], dims)?;
    let group = check_heads(dims)?;
    same_device(OP, q, lse)?;
    if lse.dtype() != acc_dtype(q.dtype()) {
        return Err(Error::dtype_mismatch(OP, acc_dtype(q.dtype()), lse.dtype()));
    }
    let dev = q.cuda_device();
    let dt = q.dtype();
    let dq = CudaStorage::alloc(dev, dt, dims.bh * dims.tq * dims.d)?;
    let dk = CudaStorage::alloc(dev, dt, dims.kv_heads() * dims.tk * dims.d)?;
    let dv = CudaStorage::alloc(dev, dt, dims.kv_heads() * dims.tk * dims.d)?;
    if dk.is_empty() {
        return Ok((dq, dk, dv));
    }
    let suffix = dt.as_str();
    let rows = dims.bh * dims.tq;
    // D = rowsum(dO∘O), one warp per query row
    let dvec = CudaStorage::alloc(dev, acc_dtype(dt), rows)?;
    if rows > 0 {
        let mut args = Args::new();
        args.push(o.ptr())
            .push(dout.ptr())
            .push(dvec.ptr())
            .push(rows as u64)
            .push(d);
        let cfg = LaunchConfig::grid_stride(rows.saturating_mul(32), dev.limits());
        dev.launch(
            kernel("attention", &format!("attention_bwd_dot_{suffix}"))?,
            cfg,
            &mut args,
        )?;
    }
    let (b, dd, acc_size) = (block_rows(dt), dims.d, acc_dtype(dt).size_in_bytes());
    // tensor cores: the block's 64 keys (or queries) and their values (or dO), two streamed tiles
    // of 32 of each of the other pair; SIMT: see attention.cu
    let (mma, smem_dkdv, smem_dq) = if tensor_cores(dt) {
        let bytes = mma_tile_bytes(dt, dd, 2 * b + 4 * TILE);
        ("mma_", bytes, bytes)
    } else {
        let dkdv = 2 * b * dd + 2 * TILE * (dd + 1) + 2 * TILE + 2 * b * TILE;
        let dq = 2 * b * dd + 2 * TILE * (dd + 1) + b * TILE;
        ("", dkdv * acc_size, dq * acc_size)
    };
    let tail = |args: &mut Args| {
        args.push(tq)
            .push(tk)
            .push(d)
            .push(group)
            .push(dims.causal as i32)
            .push(dims.scale());
    };
    // dK and dV: every key block of every key/value head runs even when tq = 0, so that they are
    // written (as zeros)
    let mut args = Args::new();
    args.push(q.ptr())
        .push(k.ptr())
        .push(v.ptr())
        .push(dout.ptr())
        .push(lse.ptr())
        .push(dvec.ptr())
        .push(dk.ptr())
        .push(dv.ptr());
    tail(&mut args);
    let name = format!("attention_bwd_dkdv_{mma}{suffix}");
    dev.launch(
        kernel("attention", &name)?,
        config(dims.kv_heads(), dims.tk, b, smem_dkdv),
        &mut args,
    )?;
    if rows > 0 {
        let mut args = Args::new();
        args.push(q.ptr())
            .push(k.ptr())
            .push(v.ptr())
            .push(dout.ptr())
            .push(lse.ptr())
            .push(dvec.ptr())
            .push(dq.ptr());
        tail(&mut args);
        let name = format!("attention_bwd_dq_{mma}{suffix}");
        dev.launch(
            kernel("attention", &name)?,
            config(dims.bh, dims.tq, b, smem_dq),
            &mut args,
        )?;
    }
    Ok((dq, dk, dv))
}
