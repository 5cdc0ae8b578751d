//! Storage filled with one value on the CPU.

use super::CpuStorage;
use crate::tensor::dtype::{DType, WithDType};

/// `n` copies of `value` rounded to `dtype`.
pub fn filled(value: f64, n: usize, dtype: DType) -> CpuStorage {
    match dtype {
        DType::F32 => CpuStorage::F32(vec![value as f32; n]),
        DType::F64 => CpuStorage::F64(vec![value; n]),
        DType::BF16 => CpuStorage::BF16(vec![WithDType::from_f64(value); n]),
        DType::F16 => CpuStorage::F16(vec![WithDType::from_f64(value); n]),
        DType::U32 => CpuStorage::U32(vec![u32::from_f64(value); n]),
    }
}
