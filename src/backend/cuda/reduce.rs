//! Launch wrapper for kernels/reduce.cu: sum, max, min over any dims. The header of reduce.cu
//! explains the two block shapes (rows, columns) and the split into partial results; this file
//! chooses between them.

use super::launch::{Args, LaunchConfig};
use super::layout::KernelLayout;
use super::{fill, kernel, CudaStorage};
use crate::backend::op::ReduceOp;
use crate::tensor::dtype::DType;
use crate::tensor::layout::Layout;
use crate::{Error, Result};

fn code(op: ReduceOp) -> i32 {
    match op {
        ReduceOp::Sum => 0,
        ReduceOp::Max => 1,
        ReduceOp::Min => 2,
    }
}

/// How a reduction is launched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReducePlan {
    /// Outputs per block (1: rows, 32: columns).
    pub block_x: u32,
    /// Threads sharing one output's elements.
    pub block_y: u32,
    pub blocks_x: u32,
    /// Blocks sharing one output's elements (> 1: partial results, then reduce_partials).
    pub splits: u32,
}

/// Chooses the launch for `n_out` outputs of `n_in` elements each, whose innermost reduced dim has
/// stride `inner_stride`, on a device with `sm_count` SMs.
pub fn plan(n_out: usize, n_in: usize, inner_stride: usize, sm_count: u32) -> ReducePlan {
    let rows = n_out < 32 || (inner_stride == 1 && n_in >= 64);
    let (block_x, block_y) = if rows {
        (1, n_in.next_power_of_two().clamp(32, 256) as u32)
    } else {
        (32, n_in.div_ceil(16).next_power_of_two().clamp(1, 16) as u32)
    };
    let blocks_x = n_out.div_ceil(block_x as usize) as u32;
    // Too few blocks to fill the GPU: split each output's elements over more blocks, keeping at
    // least 32 elements per thread and at most 64 partial results per output.
    let target = 2 * sm_count as usize;
    let splits = if (blocks_x as usize) < target {
        (target / blocks_x as usize)
            .min(n_in.div_ceil(block_y as usize * 32))
            .clamp(1, 64)
    } else {
        1
    };
    ReducePlan {
        block_x,
        block_y,
        blocks_x,
        splits: splits as u32,
    }
}

/// Reduces `dims` (sorted, distinct) of the viewed tensor; the result is contiguous with the kept
/// dims in order (the keepdim shape).
pub fn reduce(op: ReduceOp, s: &CudaStorage, layout: &Layout, dims: &[usize]) -> Result<CudaStorage> {
    let dtype = s.dtype();
    if dtype == DType::U32 {
        return Err(Error::not_float(op.name(), DType::U32));
    }
    let (outer, inner) = layout.split_reduced(dims);
    let (n_out, n_in) = (outer.numel(), inner.numel());
    let dev = s.cuda_device();
    if n_out == 0 {
        return CudaStorage::alloc(dev, dtype, 0);
    }
    if n_in == 0 {
        // the sum over nothing (max/min over an empty dim are refused by the caller)
        return fill::filled(dev, 0.0, n_out, dtype);
    }
    let outer = KernelLayout::from_parts(op.name(), outer.shape(), outer.strides(), outer.offset())?;
    let inner = KernelLayout::from_parts(op.name(), inner.shape(), inner.strides(), 0)?;
    let p = plan(n_out, n_in, inner.inner_stride(), dev.limits().sm_count);

    let out = CudaStorage::alloc(dev, dtype, n_out)?;
    let acc_dtype = if dtype == DType::F64 { DType::F64 } else { DType::F32 };
    let partial = if p.splits > 1 {
        Some(CudaStorage::alloc(dev, acc_dtype, n_out * p.splits as usize)?)
    } else {
        None
    };
    let k = kernel("reduce", &format!("reduce_{}", dtype.as_str()))?;
    let mut args = Args::new();
    args.push(s.ptr())
        .push(outer)
        .push(inner)
        .push(n_out as u64)
        .push(n_in as u64)
        .push(code(op))
        .push(out.ptr())
        .push(partial.as_ref().map_or(0, |b| b.ptr()));
    let cfg = LaunchConfig {
        grid: [p.blocks_x, p.splits, 1],
        block: [p.block_x, p.block_y, 1],
        dyn_smem: 0,
    };
    dev.launch(k, cfg, &mut args)?;
    if let Some(partial) = &partial {
        let k = kernel("reduce", &format!("reduce_partials_{}", dtype.as_str()))?;
        let mut args = Args::new();
        args.push(partial.ptr())
            .push(n_out as u64)
            .push(p.splits)
            .push(code(op))
            .push(out.ptr());
        dev.launch(k, LaunchConfig::grid_stride(n_out, dev.limits()), &mut args)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_rows_columns_and_splits() {
        // many long rows: rows, no split
        assert_eq!(
            plan(10_000, 768, 1, 132),
            ReducePlan {
                block_x: 1,
                block_y: 256,
                blocks_x: 10_000,
                splits: 1
            }
        );
        // a bias gradient: reduce dim 0 of [4096, 768] -> columns
        let p = plan(768, 4096, 768, 132);
        assert_eq!((p.block_x, p.block_y, p.blocks_x), (32, 16, 24));
        assert!(p.splits > 1 && p.splits <= 64);
        // sum_all of a million elements: one row split over many blocks
        let p = plan(1, 1 << 20, 1, 132);
        assert_eq!((p.block_x, p.block_y, p.splits), (1, 256, 64));
        // short rows are small work: one split
        assert_eq!(plan(1, 7, 1, 132).splits, 1);
    }
}
