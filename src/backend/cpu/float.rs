//! The float element types of the CPU loops and their arithmetic types, and the macros that
//! dispatch a storage or dtype to a loop generic over them.

use super::exp::Exp;
use super::CpuStorage;
use crate::tensor::dtype::WithDType;
use half::{bf16, f16};

/// A float element type and its arithmetic type: f32 for f32, bf16 and f16; f64 for f64.
pub trait CpuFloat: WithDType {
    type Acc: Exp + Send + Sync + std::iter::Sum + Copy + std::fmt::Debug;
    fn up(self) -> Self::Acc;
    fn down(v: Self::Acc) -> Self;
}

impl CpuFloat for f32 {
    type Acc = f32;
    fn up(self) -> f32 {
        self
    }
    fn down(v: f32) -> Self {
        v
    }
}

impl CpuFloat for f64 {
    type Acc = f64;
    fn up(self) -> f64 {
        self
    }
    fn down(v: f64) -> Self {
        v
    }
}

impl CpuFloat for bf16 {
    type Acc = f32;
    fn up(self) -> f32 {
        self.to_f32()
    }
    fn down(v: f32) -> Self {
        bf16::from_f32(v)
    }
}

impl CpuFloat for f16 {
    type Acc = f32;
    fn up(self) -> f32 {
        self.to_f32()
    }
    fn down(v: f32) -> Self {
        f16::from_f32(v)
    }
}

/// Runs `$body` with `$v` bound to the typed slice of a float storage and wraps the
/// resulting `Vec` in the same variant; U32 storage returns a dtype error for `$op`.
macro_rules! map_float_storage {
    ($op:expr, $storage:expr, $v:ident => $body:expr) => {
        match $storage {
            $crate::backend::cpu::CpuStorage::F32($v) => $crate::backend::cpu::CpuStorage::F32($body),
            $crate::backend::cpu::CpuStorage::F64($v) => $crate::backend::cpu::CpuStorage::F64($body),
            $crate::backend::cpu::CpuStorage::BF16($v) => $crate::backend::cpu::CpuStorage::BF16($body),
            $crate::backend::cpu::CpuStorage::F16($v) => $crate::backend::cpu::CpuStorage::F16($body),
            $crate::backend::cpu::CpuStorage::U32(_) => {
                return Err($crate::Error::not_float($op, $crate::tensor::dtype::DType::U32))
            }
        }
    };
}
pub(crate) use map_float_storage;

/// Calls the generic function `$f::<T>(args)` with `T` the Rust type of the float dtype
/// `$dtype`; U32 returns a dtype error for `$op`.
macro_rules! dispatch_float {
    ($op:expr, $dtype:expr, $f:ident ( $($arg:expr),* $(,)? )) => {
        match $dtype {
            $crate::tensor::dtype::DType::F32 => $f::<f32>($($arg),*),
            $crate::tensor::dtype::DType::F64 => $f::<f64>($($arg),*),
            $crate::tensor::dtype::DType::BF16 => $f::<half::bf16>($($arg),*),
            $crate::tensor::dtype::DType::F16 => $f::<half::f16>($($arg),*),
            $crate::tensor::dtype::DType::U32 => {
                return Err($crate::Error::not_float($op, $crate::tensor::dtype::DType::U32))
            }
        }
    };
}
pub(crate) use dispatch_float;

/// The typed slice of a storage whose dtype the caller has checked.
pub(crate) fn typed<T: WithDType>(s: &CpuStorage) -> &[T] {
    s.as_slice().expect("operand dtypes are checked before dispatch")
}

/// `v` converted to the arithmetic type of `T`.
pub(crate) fn acc<T: CpuFloat>(v: f64) -> T::Acc {
    <T::Acc as num_traits::NumCast>::from(v).expect("f32 and f64 hold any f64, rounded")
}
