//! Launch wrapper for kernels/adamw.cu: the AdamW step over every parameter in one launch, and the
//! squares of every gradient in one launch (partials per block, added in order on the host). The
//! tensors are described by a table in device memory (`KilnAdamWEntry`, 7 words per tensor).

use super::launch::{Args, LaunchConfig};
use super::memory::DeviceBuffer;
use super::{kernel, CudaDevice, CudaStorage};
use crate::backend::op::{AdamWHyper, AdamWParam};
use crate::tensor::dtype::DType;
use crate::Result;
use std::sync::Arc;

/// Threads per block; the grid is [blocks per tensor, tensors].
const BLOCK: u32 = 256;
/// Most blocks per tensor: the largest tensor's grid-stride loop covers the rest.
const MAX_BLOCKS: usize = 1024;

/// The table of `entries` ([param, grad, m, v, copy, n, decay] each) in device memory.
fn upload_table(dev: &Arc<CudaDevice>, entries: &[[u64; 7]]) -> Result<DeviceBuffer> {
    let bytes: &[u8] = bytemuck::cast_slice(entries);
    let table = DeviceBuffer::alloc(dev, bytes.len())?;
    table.write(0, bytes)?;
    Ok(table)
}

/// One thread per 16-byte pack of the largest tensor (the kernels' vector width), at most
/// MAX_BLOCKS blocks per tensor.
fn launch_shape(largest: usize, tensors: usize, dtype: DType) -> LaunchConfig {
    let pack = 16 / dtype.size_in_bytes();
    LaunchConfig {
        grid: [
            largest.div_ceil(BLOCK as usize * pack).clamp(1, MAX_BLOCKS) as u32,
            tensors as u32,
            1,
        ],
        block: [BLOCK, 1, 1],
        dyn_smem: 0,
    }
}

/// Updates every parameter of `params` (one device, one dtype: checked by the caller) in place.
pub fn adamw_step(params: &mut [AdamWParam<CudaStorage>], h: &AdamWHyper) -> Result<()> {
    let first = &params[0].param;
    let (dev, dtype) = (first.cuda_device().clone(), first.dtype());
    let entries: Vec<[u64; 7]> = params
        .iter()
        .map(|item| {
            [
                item.param.ptr(),
                item.grad.ptr(),
                item.m.ptr(),
                item.v.ptr(),
                item.copy.as_deref().map_or(0, |c| c.ptr()),
                item.param.len() as u64,
                item.decay as u64,
            ]
        })
        .collect();
    let largest = entries.iter().map(|e| e[5] as usize).max().unwrap_or(0);
    let table = upload_table(&dev, &entries)?;
    let k = kernel("adamw", &format!("adamw_{}", dtype.as_str()))?;
    let mut args = Args::new();
    args.push(table.ptr());
    for value in [
        h.decay_factor,
        h.b1,
        h.b2,
        1.0 - h.b1,
        1.0 - h.b2,
        h.step_size,
        h.bc2_sqrt,
        h.eps,
    ] {
        args.push_acc(dtype, value);
    }
    dev.launch(k, launch_shape(largest, entries.len(), dtype), &mut args)
}

/// Σ g² over `grads` (one device, f32 or f64: checked by the caller), in f64.
pub fn grad_sq_sum(grads: &[&CudaStorage]) -> Result<f64> {
    let first = grads[0];
    let (dev, dtype) = (first.cuda_device().clone(), first.dtype());
    let entries: Vec<[u64; 7]> = grads.iter().map(|g| [0, g.ptr(), 0, 0, 0, g.len() as u64, 0]).collect();
    let largest = entries.iter().map(|e| e[5] as usize).max().unwrap_or(0);
    let cfg = launch_shape(largest, entries.len(), dtype);
    let table = upload_table(&dev, &entries)?;
    let partial = CudaStorage::alloc(&dev, DType::F64, (cfg.grid[0] * cfg.grid[1]) as usize)?;
    let k = kernel("adamw", &format!("adamw_sq_partial_{}", dtype.as_str()))?;
    let mut args = Args::new();
    args.push(table.ptr()).push(partial.ptr());
    dev.launch(k, cfg, &mut args)?;
    let mut sums = vec![0f64; partial.len()];
    partial.buf.read(0, bytemuck::cast_slice_mut(&mut sums))?;
    Ok(sums.iter().sum())
}
