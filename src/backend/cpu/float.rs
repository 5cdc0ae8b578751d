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
        bf16_to_f32(self)
    }
    fn down(v: f32) -> Self {
        f32_to_bf16(v)
    }
}

/// A bf16 widened to f32: its bits are the f32's top half. Exact, like `bf16::to_f32`, but
/// without a branch, so that loops over slices vectorise (a signalling NaN stays signalling).
#[inline(always)]
pub fn bf16_to_f32(x: bf16) -> f32 {
    f32::from_bits(u32::from(x.to_bits()) << 16)
}

/// An f32 rounded to the nearest bf16, ties to even (NaN stays NaN, made quiet): the value
/// `bf16::from_f32` gives, in arithmetic a loop over slices vectorises. Adding `0x7fff` plus the
/// kept half's lowest bit carries into it exactly when the dropped half is over one half of
/// its last place, or exactly one half with the kept half odd.
#[inline(always)]
pub fn f32_to_bf16(x: f32) -> bf16 {
    let bits = x.to_bits();
    let rounded = (bits.wrapping_add(0x7fff + ((bits >> 16) & 1)) >> 16) as u16;
    let quiet_nan = ((bits >> 16) | 0x40) as u16;
    bf16::from_bits(if x.is_nan() { quiet_nan } else { rounded })
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Against the `half` crate's conversions, over special values, every rounding boundary
    /// case near a few exponents, and a million random bit patterns (NaNs included).
    #[test]
    fn bf16_conversions_match_half() {
        let mut bits: Vec<u32> = vec![
            0,
            0x8000_0000,
            0x7f80_0000,
            0xff80_0000,
            0x7fc0_0000,
            0x7f80_0001,
            0xffff_ffff,
            0x7f7f_ffff,
        ];
        for high in [0x3f80u32, 0x3f81, 0x0000, 0x0001, 0x7f7f, 0xc2a5] {
            for low in [0u32, 1, 0x7fff, 0x8000, 0x8001, 0xffff] {
                bits.push(high << 16 | low);
            }
        }
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        bits.extend((0..1_000_000).map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 32) as u32
        }));
        for b in bits {
            let x = f32::from_bits(b);
            assert_eq!(
                f32_to_bf16(x).to_bits(),
                bf16::from_f32(x).to_bits(),
                "f32 bits {b:#010x}"
            );
            // widening keeps a signalling NaN's bits where `half` quiets it: both are NaN
            let (h, w) = (
                bf16::from_bits((b >> 16) as u16),
                bf16_to_f32(bf16::from_bits((b >> 16) as u16)),
            );
            if h.is_nan() {
                assert!(w.is_nan(), "bf16 bits {:#06x}", b >> 16);
            } else {
                assert_eq!(w.to_bits(), h.to_f32().to_bits(), "bf16 bits {:#06x}", b >> 16);
            }
        }
    }
}
