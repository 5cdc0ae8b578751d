//! Storage filled with one value on the CPU.

use super::{alloc, CpuStorage};
use crate::tensor::dtype::{DType, WithDType};

/// `n` copies of `value` rounded to `dtype`.
pub fn filled(value: f64, n: usize, dtype: DType) -> crate::Result<CpuStorage> {
    const OP: &str = "full";
    Ok(match dtype {
        DType::F32 => CpuStorage::F32(alloc::filled(OP, n, value as f32)?),
        DType::F64 => CpuStorage::F64(alloc::filled(OP, n, value)?),
        DType::BF16 => CpuStorage::BF16(alloc::filled(OP, n, WithDType::from_f64(value))?),
        DType::F16 => CpuStorage::F16(alloc::filled(OP, n, WithDType::from_f64(value))?),
        DType::U32 => CpuStorage::U32(alloc::filled(OP, n, u32::from_f64(value))?),
    })
}

/// `n` zeros of `dtype` in a new buffer advised as huge pages (`alloc::filled_in_huge_pages`).
pub fn zeros_in_huge_pages(n: usize, dtype: DType) -> crate::Result<CpuStorage> {
    const OP: &str = "pack";
    Ok(match dtype {
        DType::F32 => CpuStorage::F32(alloc::filled_in_huge_pages(OP, n, 0f32)?),
        DType::F64 => CpuStorage::F64(alloc::filled_in_huge_pages(OP, n, 0f64)?),
        DType::BF16 => CpuStorage::BF16(alloc::filled_in_huge_pages(OP, n, WithDType::from_f64(0.0))?),
        DType::F16 => CpuStorage::F16(alloc::filled_in_huge_pages(OP, n, WithDType::from_f64(0.0))?),
        DType::U32 => CpuStorage::U32(alloc::filled_in_huge_pages(OP, n, 0u32)?),
    })
}
