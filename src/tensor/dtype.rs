//! Element types. Floats are F32, F64, BF16 and F16; U32 holds token ids and indices.

use half::{bf16, f16};

/// The element type of a tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    /// 32-bit IEEE float.
    F32,
    /// 64-bit IEEE float.
    F64,
    /// bfloat16: f32's exponent range with 8 bits of mantissa (computed in f32).
    BF16,
    /// IEEE half precision (computed in f32).
    F16,
    /// 32-bit unsigned integer: token ids, indices and the 0/1 results of comparisons.
    U32,
}

impl DType {
    /// The bytes of one element (8, 4 or 2).
    pub fn size_in_bytes(self) -> usize {
        match self {
            DType::F64 => 8,
            DType::F32 | DType::U32 => 4,
            DType::BF16 | DType::F16 => 2,
        }
    }

    /// Whether this is a floating-point type (everything but U32).
    pub fn is_float(self) -> bool {
        !matches!(self, DType::U32)
    }

    /// Lower-case name as used in file formats and on the command line ("f32", "bf16", ...).
    pub fn as_str(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F64 => "f64",
            DType::BF16 => "bf16",
            DType::F16 => "f16",
            DType::U32 => "u32",
        }
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Every dtype, in the order error messages list them.
const ALL: [DType; 5] = [DType::F32, DType::F64, DType::BF16, DType::F16, DType::U32];

/// The inverse of [`DType::as_str`].
impl std::str::FromStr for DType {
    type Err = crate::Error;
    fn from_str(s: &str) -> crate::Result<DType> {
        ALL.into_iter().find(|d| d.as_str() == s).ok_or_else(|| {
            let names: Vec<&str> = ALL.iter().map(|d| d.as_str()).collect();
            crate::Error::invalid(
                "dtype",
                format!("unknown dtype {s:?}; the dtypes are {}", names.join(", ")),
            )
        })
    }
}

/// As its name (`"bf16"`), in checkpoints' settings.
impl serde::Serialize for DType {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for DType {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<DType, D::Error> {
        let name = String::deserialize(d)?;
        name.parse().map_err(serde::de::Error::custom)
    }
}

/// A Rust type that can be a tensor element. Conversions go through `f64`, which holds
/// every value of every kiln dtype exactly.
pub trait WithDType: Copy + Send + Sync + Default + std::fmt::Debug + PartialOrd + bytemuck::Pod + 'static {
    /// The dtype this Rust type stores.
    const DTYPE: DType;
    /// The value as f64 (exact for every kiln dtype).
    fn to_f64(self) -> f64;
    /// The value of this type nearest to `v`: round to nearest even for the floats; for U32,
    /// truncation toward zero, saturating, with NaN as 0 (as `as` does).
    fn from_f64(v: f64) -> Self;
}

impl WithDType for f32 {
    const DTYPE: DType = DType::F32;
    fn to_f64(self) -> f64 {
        self as f64
    }
    fn from_f64(v: f64) -> Self {
        v as f32
    }
}

impl WithDType for f64 {
    const DTYPE: DType = DType::F64;
    fn to_f64(self) -> f64 {
        self
    }
    fn from_f64(v: f64) -> Self {
        v
    }
}

/// `v` rounded to f32 "to odd": the f32 next to `v` toward zero, with its last bit set when
/// `v` is not exactly representable. Rounding that to nearest-even in a format with at least
/// two fewer significant bits (bf16, f16) gives the correctly rounded result, where going
/// through `v as f32` would round twice, and `half`'s own `from_f64` drops the low 32 bits of
/// the f64 before breaking ties (so 1 + 2^-8 + 2^-40 became 1, not 1 + 2^-7, in bf16).
fn f32_round_to_odd(v: f64) -> f32 {
    let nearest = v as f32;
    if nearest as f64 == v || v.is_nan() {
        return nearest;
    }
    // Inexact (possibly rounded up to infinity): step back toward zero if it rounded away.
    let toward_zero = if (nearest as f64).abs() > v.abs() {
        f32::from_bits(nearest.to_bits() - 1)
    } else {
        nearest
    };
    f32::from_bits(toward_zero.to_bits() | 1)
}

impl WithDType for bf16 {
    const DTYPE: DType = DType::BF16;
    fn to_f64(self) -> f64 {
        self.to_f64()
    }
    fn from_f64(v: f64) -> Self {
        bf16::from_f32(f32_round_to_odd(v))
    }
}

impl WithDType for f16 {
    const DTYPE: DType = DType::F16;
    fn to_f64(self) -> f64 {
        self.to_f64()
    }
    fn from_f64(v: f64) -> Self {
        f16::from_f32(f32_round_to_odd(v))
    }
}

impl WithDType for u32 {
    const DTYPE: DType = DType::U32;
    fn to_f64(self) -> f64 {
        self as f64
    }
    /// Saturating, truncating toward zero (as `as` does); NaN maps to 0.
    fn from_f64(v: f64) -> Self {
        v as u32
    }
}
