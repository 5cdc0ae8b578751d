//! Dtype conversion on the CPU.

use super::float::{bf16_to_f32, f16_to_f32, f32_to_bf16, f32_to_f16};
use super::{map, with_cpu_storage, CpuStorage};
use crate::tensor::dtype::{DType, WithDType};
use crate::tensor::layout::Layout;

/// Converts every element to `dtype` (through f64, which holds every kiln dtype exactly;
/// rounding to nearest-even when narrowing). bf16 ↔ f32 and f16 ↔ f32, the casts of mixed
/// precision and of a 16-bit KV cache, take bit arithmetic that vectorises instead (the same
/// values).
pub fn cast(s: &CpuStorage, layout: &Layout, dtype: DType) -> crate::Result<CpuStorage> {
    match (s, dtype) {
        (CpuStorage::BF16(v), DType::F32) => return Ok(CpuStorage::F32(map("to_dtype", v, layout, bf16_to_f32)?)),
        (CpuStorage::F32(v), DType::BF16) => return Ok(CpuStorage::BF16(map("to_dtype", v, layout, f32_to_bf16)?)),
        (CpuStorage::F16(v), DType::F32) => return Ok(CpuStorage::F32(map("to_dtype", v, layout, f16_to_f32)?)),
        (CpuStorage::F32(v), DType::F16) => return Ok(CpuStorage::F16(map("to_dtype", v, layout, f32_to_f16)?)),
        _ => {}
    }
    fn convert<T: WithDType, U: WithDType>(v: &[T], layout: &Layout) -> crate::Result<Vec<U>> {
        map("to_dtype", v, layout, |x| U::from_f64(x.to_f64()))
    }
    Ok(with_cpu_storage!(s, v => match dtype {
        DType::F32 => CpuStorage::F32(convert(v, layout)?),
        DType::F64 => CpuStorage::F64(convert(v, layout)?),
        DType::BF16 => CpuStorage::BF16(convert(v, layout)?),
        DType::F16 => CpuStorage::F16(convert(v, layout)?),
        DType::U32 => CpuStorage::U32(convert(v, layout)?),
    }))
}
