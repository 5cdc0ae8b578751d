//! The launch shape of the row-wise kernels (softmax.cu, layer_norm.cu, cross_entropy.cu;
//! kernels/rows.cuh): one group of threads per row of a contiguous `[rows, width]` tensor.

use super::launch::LaunchConfig;
use crate::{Error, Result};

/// Threads per row and rows per block for rows of `width`: about 8 elements per thread, 32 to 1024
/// threads per row, 256 threads per block for narrow rows. The kernels keep up to 8 elements per
/// thread in registers between their passes (kernels/rows.cuh), so with this shape rows up to 8192
/// wide are read from memory once.
pub fn block_shape(width: usize) -> (u32, u32) {
    let per_row = width.div_ceil(8).next_power_of_two().clamp(32, 1024) as u32;
    (per_row, (256 / per_row).max(1))
}

/// The launch of a row-wise kernel over `rows` rows of `width` elements.
pub fn row_launch(rows: usize, width: usize) -> LaunchConfig {
    let (per_row, rows_per_block) = block_shape(width);
    LaunchConfig {
        grid: [rows.div_ceil(rows_per_block as usize) as u32, 1, 1],
        block: [per_row, rows_per_block, 1],
        dyn_smem: 0,
    }
}

/// `width` as the kernels' 32-bit row length.
pub fn row_width(op: &'static str, width: usize) -> Result<u32> {
    u32::try_from(width).map_err(|_| Error::invalid(op, format!("rows of {width} elements are too long")))
}
