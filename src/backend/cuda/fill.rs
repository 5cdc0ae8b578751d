//! Launch wrapper for kernels/fill.cu.

use super::launch::{Args, LaunchConfig};
use super::{bits_suffix, kernel, CudaDevice, CudaStorage};
use crate::tensor::dtype::{DType, WithDType};
use crate::Result;
use half::{bf16, f16};
use std::sync::Arc;

/// `n` copies of `value` rounded to `dtype` (as the CPU backend rounds it).
pub fn filled(dev: &Arc<CudaDevice>, value: f64, n: usize, dtype: DType) -> Result<CudaStorage> {
    let out = CudaStorage::alloc(dev, dtype, n)?;
    if n == 0 {
        return Ok(out);
    }
    let k = kernel("fill", &format!("fill_{}", bits_suffix(dtype)))?;
    let mut args = Args::new();
    args.push(out.ptr());
    match dtype {
        DType::F32 => args.push((value as f32).to_bits()),
        DType::F64 => args.push(value.to_bits()),
        DType::BF16 => args.push(bf16::from_f64(value).to_bits()),
        DType::F16 => args.push(f16::from_f64(value).to_bits()),
        DType::U32 => args.push(u32::from_f64(value)),
    };
    args.push(n as u64);
    let pack = 16 / dtype.size_in_bytes();
    dev.launch(k, LaunchConfig::grid_stride(n.div_ceil(pack), dev.limits()), &mut args)?;
    Ok(out)
}
