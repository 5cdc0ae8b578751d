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
        f16_to_f32(self)
    }
    fn down(v: f32) -> Self {
        f32_to_f16(v)
    }
}

/// An f16 widened to f32, exactly, in arithmetic without branches, so that loops over slices
/// vectorise (`f16::to_f32` is a call per element: an f16 KV cache's casts took a fifth of a
/// prefill through it). The exponent and mantissa move to f32's positions (13 bits up) and the
/// exponent is rebiased by 112; an all-ones exponent (infinity, NaN) by 224; a subnormal
/// `m·2⁻²⁴` is made the normal `2⁻¹⁴·(1 + m/1024)` and `2⁻¹⁴` subtracted, exact. A signalling NaN
/// stays signalling, as [`bf16_to_f32`] keeps it.
#[inline(always)]
pub fn f16_to_f32(x: f16) -> f32 {
    let h = u32::from(x.to_bits());
    let sign = (h & 0x8000) << 16;
    let shifted = (h & 0x7fff) << 13;
    let exponent = shifted & 0x0f80_0000;
    let normal = shifted + (112 << 23);
    let inf_nan = shifted + (224 << 23);
    let subnormal = (f32::from_bits(shifted + (113 << 23)) - f32::from_bits(113 << 23)).to_bits();
    let magnitude = match exponent {
        0x0f80_0000 => inf_nan,
        0 => subnormal,
        _ => normal,
    };
    f32::from_bits(magnitude | sign)
}

/// An f32 rounded to the nearest f16, ties to even, in arithmetic without branches: the value
/// `f16::from_f32` gives (NaN stays NaN, made quiet, its payload's top bits kept). Below 2⁻¹⁴ (f16
/// subnormals) an f32 addition of 2⁻¹ does the rounding: the sum's last bits are the f16's. Else
/// the mantissa's 13 dropped bits are rounded as [`f32_to_bf16`] rounds its 16 and the exponent
/// rebiased; from 65520 (half a unit past f16's largest, 65504) the carry makes it infinity, and
/// from 2¹⁶, where rebiasing would overflow the field, infinity is chosen outright.
#[inline(always)]
pub fn f32_to_f16(x: f32) -> f16 {
    let bits = x.to_bits();
    let sign = ((bits >> 16) & 0x8000) as u16;
    let magnitude = bits & 0x7fff_ffff;
    // 2⁻¹ = 2^(-15 + 1 + 13), whose ulp is f16's smallest subnormal 2⁻²⁴
    const SUBNORMAL_MAGIC: u32 = 126 << 23;
    let subnormal = (f32::from_bits(magnitude) + f32::from_bits(SUBNORMAL_MAGIC)).to_bits() - SUBNORMAL_MAGIC;
    let odd = (magnitude >> 13) & 1;
    let normal = (magnitude.wrapping_sub(112 << 23) + 0xfff + odd) >> 13;
    let nan = 0x7e00 | ((magnitude >> 13) & 0x3ff);
    let half = match magnitude {
        m if m > 0x7f80_0000 => nan,
        m if m >= 0x4780_0000 => 0x7c00, // 2¹⁶ and up: infinity (65520 up rounds to it below)
        m if m < 113 << 23 => subnormal,
        _ => normal,
    };
    f16::from_bits(half as u16 | sign)
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

    /// A million f32 bit patterns from a xorshift generator (NaNs, infinities and subnormals
    /// among them, in their share of the bit space).
    fn random_bits() -> impl Iterator<Item = u32> {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        (0..1_000_000).map(move |_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 32) as u32
        })
    }

    /// ±0, ±infinity, a quiet NaN, a signalling NaN and a negative NaN with every mantissa bit set.
    const SPECIAL_F32_BITS: [u32; 7] = [
        0,
        0x8000_0000,
        0x7f80_0000,
        0xff80_0000,
        0x7fc0_0000,
        0x7f80_0001,
        0xffff_ffff,
    ];

    /// Against the `half` crate's conversions: every f16 widened, and f32s narrowed: special
    /// values, every f32 within a few ulps of each f16 and of each midpoint between neighbours
    /// (the ties), and a million random bit patterns (NaNs included).
    #[test]
    fn f16_conversions_match_half() {
        for b in 0..=u16::MAX {
            let h = f16::from_bits(b);
            let w = f16_to_f32(h);
            if h.is_nan() {
                assert!(w.is_nan(), "f16 bits {b:#06x}");
            } else {
                assert_eq!(w.to_bits(), h.to_f32().to_bits(), "f16 bits {b:#06x}");
            }
        }
        // zeros, infinities, NaNs; just under 65520 (rounds to 65504), 65520 (to infinity), 2¹⁶
        let mut bits: Vec<u32> = SPECIAL_F32_BITS.to_vec();
        bits.extend([0x477f_efff, 0x477f_f000, 0x4780_0000]);
        for b in 0..0x7c00u16 {
            let here = f16::from_bits(b).to_f32().to_bits();
            let midpoint =
                ((f64::from(f16::from_bits(b).to_f32()) + f64::from(f16::from_bits(b + 1).to_f32())) / 2.0) as f32;
            for centre in [here, midpoint.to_bits()] {
                for d in -2i64..=2 {
                    let x = (centre as i64 + d).clamp(0, 0x7f80_0000) as u32;
                    bits.extend([x, x | 0x8000_0000]);
                }
            }
        }
        bits.extend(random_bits());
        for b in bits {
            let x = f32::from_bits(b);
            let (got, want) = (f32_to_f16(x), f16::from_f32(x));
            if x.is_nan() {
                assert!(got.is_nan(), "f32 bits {b:#010x}");
            } else {
                assert_eq!(got.to_bits(), want.to_bits(), "f32 bits {b:#010x} ({x:e})");
            }
        }
    }

    /// Against the `half` crate's conversions, over special values, every rounding boundary
    /// case near a few exponents, and a million random bit patterns (NaNs included).
    #[test]
    fn bf16_conversions_match_half() {
        // and the largest finite f32, which rounds to bf16's infinity
        let mut bits: Vec<u32> = SPECIAL_F32_BITS.to_vec();
        bits.push(0x7f7f_ffff);
        for high in [0x3f80u32, 0x3f81, 0x0000, 0x0001, 0x7f7f, 0xc2a5] {
            for low in [0u32, 1, 0x7fff, 0x8000, 0x8001, 0xffff] {
                bits.push(high << 16 | low);
            }
        }
        bits.extend(random_bits());
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
