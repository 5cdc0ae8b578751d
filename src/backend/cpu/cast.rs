//! Dtype conversion on the CPU.

use super::{map, with_cpu_storage, CpuStorage};
use crate::tensor::dtype::{DType, WithDType};
use crate::tensor::layout::Layout;

/// Converts every element to `dtype` (through f64, which holds every kiln dtype exactly;
/// rounding to nearest-even when narrowing).
pub fn cast(s: &CpuStorage, layout: &Layout, dtype: DType) -> crate::Result<CpuStorage> {
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
