//! Host memory: the CPU backend's storage, a flat typed vector. A storage knows its dtype but not
//! its shape: that is the layout's job, so many views can share one storage.

use crate::tensor::dtype::{DType, WithDType};
use half::{bf16, f16};

/// Host memory, one variant per dtype.
#[derive(Clone, Debug)]
pub enum CpuStorage {
    F32(Vec<f32>),
    F64(Vec<f64>),
    BF16(Vec<bf16>),
    F16(Vec<f16>),
    U32(Vec<u32>),
}

/// Calls `$body` with `$v` bound to the typed vector inside a [`CpuStorage`].
macro_rules! with_cpu_storage {
    ($storage:expr, $v:ident => $body:expr) => {
        match $storage {
            $crate::backend::cpu::CpuStorage::F32($v) => $body,
            $crate::backend::cpu::CpuStorage::F64($v) => $body,
            $crate::backend::cpu::CpuStorage::BF16($v) => $body,
            $crate::backend::cpu::CpuStorage::F16($v) => $body,
            $crate::backend::cpu::CpuStorage::U32($v) => $body,
        }
    };
}
pub(crate) use with_cpu_storage;

impl CpuStorage {
    pub fn dtype(&self) -> DType {
        match self {
            CpuStorage::F32(_) => DType::F32,
            CpuStorage::F64(_) => DType::F64,
            CpuStorage::BF16(_) => DType::BF16,
            CpuStorage::F16(_) => DType::F16,
            CpuStorage::U32(_) => DType::U32,
        }
    }

    pub fn len(&self) -> usize {
        with_cpu_storage!(self, v => v.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The typed slice, if `T` is this storage's element type.
    pub fn as_slice<T: WithDType>(&self) -> Option<&[T]> {
        with_cpu_storage!(self, v => bytemuck::try_cast_slice(v.as_slice()).ok().filter(|_| T::DTYPE == self.dtype()))
    }

    pub fn as_mut_slice<T: WithDType>(&mut self) -> Option<&mut [T]> {
        let dtype = self.dtype();
        with_cpu_storage!(self, v => bytemuck::try_cast_slice_mut(v.as_mut_slice()).ok().filter(|_| T::DTYPE == dtype))
    }

    pub fn from_vec<T: WithDType>(v: Vec<T>) -> Self {
        // Safe casts: `T::DTYPE` names exactly the Rust type `T`, so the cast is the identity.
        match T::DTYPE {
            DType::F32 => CpuStorage::F32(bytemuck::allocation::cast_vec(v)),
            DType::F64 => CpuStorage::F64(bytemuck::allocation::cast_vec(v)),
            DType::BF16 => CpuStorage::BF16(bytemuck::allocation::cast_vec(v)),
            DType::F16 => CpuStorage::F16(bytemuck::allocation::cast_vec(v)),
            DType::U32 => CpuStorage::U32(bytemuck::allocation::cast_vec(v)),
        }
    }
}
