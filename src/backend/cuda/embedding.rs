//! Launch wrapper for kernels/embedding.cu: index_select and its deterministic adjoint index_add
//! (each output element sums its bucket of ids in order; see `IdBuckets`), and GPT's fused token +
//! position embedding; rows in 16-byte packs where their length and the buffers allow.

use super::launch::{Args, LaunchConfig};
use super::{bits_suffix, float_suffix, kernel, same_device, CudaStorage};
use crate::Result;

/// Elements per thread when rows take 16-byte packs (the kernels fall back to single elements, the
/// grid-stride loops then covering the rest).
fn pack(s: &CudaStorage) -> usize {
    16 / s.dtype().size_in_bytes()
}

/// `[outer, size, inner]` → `[outer, ids.len(), inner]`; `ids` are u32 on the same device, each
/// below `size`.
pub fn index_select(
    s: &CudaStorage,
    outer: usize,
    size: usize,
    inner: usize,
    ids: &CudaStorage,
) -> Result<CudaStorage> {
    same_device("index_select", s, ids)?;
    let dev = s.cuda_device();
    let n = outer * ids.len() * inner;
    let out = CudaStorage::alloc(dev, s.dtype(), n)?;
    if n == 0 {
        return Ok(out);
    }
    let k = kernel("embedding", &format!("index_select_{}", bits_suffix(s.dtype())))?;
    let mut args = Args::new();
    args.push(s.ptr())
        .push(ids.ptr())
        .push(out.ptr())
        .push(outer as u64)
        .push(size as u64)
        .push(inner as u64)
        .push(ids.len() as u64);
    dev.launch(
        k,
        LaunchConfig::grid_stride(n.div_ceil(pack(s)), dev.limits()),
        &mut args,
    )?;
    Ok(out)
}

/// Zeros `[outer, size, inner]` plus `src` `[outer, n_ids, inner]` added at the rows of its ids:
/// `order[starts[r]..starts[r + 1]]` are the positions holding id `r`, ascending.
pub fn index_add(
    src: &CudaStorage,
    outer: usize,
    size: usize,
    inner: usize,
    order: &CudaStorage,
    starts: &CudaStorage,
) -> Result<CudaStorage> {
    const OP: &str = "index_add";
    same_device(OP, src, order)?;
    same_device(OP, src, starts)?;
    let suffix = float_suffix(OP, src)?;
    let dev = src.cuda_device();
    let n = outer * size * inner;
    let out = CudaStorage::alloc(dev, src.dtype(), n)?;
    if n == 0 {
        return Ok(out);
    }
    let k = kernel("embedding", &format!("index_add_{suffix}"))?;
    let mut args = Args::new();
    args.push(src.ptr())
        .push(order.ptr())
        .push(starts.ptr())
        .push(out.ptr())
        .push(outer as u64)
        .push(size as u64)
        .push(inner as u64)
        .push(order.len() as u64);
    dev.launch(
        k,
        LaunchConfig::grid_stride(n.div_ceil(pack(src)), dev.limits()),
        &mut args,
    )?;
    Ok(out)
}

/// `[n, c]` rows `wte[ids[p]] + wpe[p % t]` for the n ids of `[n / t, t]` (u32, below wte's rows).
pub fn token_position_embedding(
    ids: &CudaStorage,
    wte: &CudaStorage,
    wpe: &CudaStorage,
    t: usize,
    c: usize,
) -> Result<CudaStorage> {
    const OP: &str = "token_position_embedding";
    same_device(OP, ids, wte)?;
    same_device(OP, ids, wpe)?;
    let suffix = float_suffix(OP, wte)?;
    let dev = wte.cuda_device();
    let n = ids.len();
    let out = CudaStorage::alloc(dev, wte.dtype(), n * c)?;
    if n * c == 0 {
        return Ok(out);
    }
    let k = kernel("embedding", &format!("token_position_embedding_{suffix}"))?;
    let mut args = Args::new();
    args.push(ids.ptr())
        .push(wte.ptr())
        .push(wpe.ptr())
        .push(out.ptr())
        .push(n as u64)
        .push(t as u64)
        .push(c as u64);
    dev.launch(
        k,
        LaunchConfig::grid_stride((n * c).div_ceil(pack(wte)), dev.limits()),
        &mut args,
    )?;
    Ok(out)
}
