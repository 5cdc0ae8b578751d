//! GGUF metadata values and their conversion to Rust types.

/// The type tag of a metadata value (`enum gguf_type`), with its numeric id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ValueType {
    /// `GGUF_TYPE_UINT8` (0).
    U8,
    /// `GGUF_TYPE_INT8` (1).
    I8,
    /// `GGUF_TYPE_UINT16` (2).
    U16,
    /// `GGUF_TYPE_INT16` (3).
    I16,
    /// `GGUF_TYPE_UINT32` (4).
    U32,
    /// `GGUF_TYPE_INT32` (5).
    I32,
    /// `GGUF_TYPE_FLOAT32` (6).
    F32,
    /// `GGUF_TYPE_BOOL` (7).
    Bool,
    /// `GGUF_TYPE_STRING` (8).
    String,
    /// `GGUF_TYPE_ARRAY` (9).
    Array,
    /// `GGUF_TYPE_UINT64` (10).
    U64,
    /// `GGUF_TYPE_INT64` (11).
    I64,
    /// `GGUF_TYPE_FLOAT64` (12).
    F64,
}

impl ValueType {
    const ALL: [ValueType; 13] = [
        ValueType::U8,
        ValueType::I8,
        ValueType::U16,
        ValueType::I16,
        ValueType::U32,
        ValueType::I32,
        ValueType::F32,
        ValueType::Bool,
        ValueType::String,
        ValueType::Array,
        ValueType::U64,
        ValueType::I64,
        ValueType::F64,
    ];

    /// The type with GGUF id `id` (0..=12).
    pub fn from_id(id: u32) -> Option<ValueType> {
        Self::ALL.get(id as usize).copied()
    }

    /// GGUF's numeric id of the type.
    pub fn id(self) -> u32 {
        Self::ALL
            .iter()
            .position(|&t| t == self)
            .expect("every ValueType is in ALL") as u32
    }

    /// The fewest bytes a value of this type takes in the file (a string or an array may be
    /// empty but still has its length, and an array its element type), used to bound counts.
    pub(crate) fn min_bytes(self) -> usize {
        match self {
            ValueType::U8 | ValueType::I8 | ValueType::Bool => 1,
            ValueType::U16 | ValueType::I16 => 2,
            ValueType::U32 | ValueType::I32 | ValueType::F32 => 4,
            ValueType::U64 | ValueType::I64 | ValueType::F64 | ValueType::String => 8,
            ValueType::Array => 12,
        }
    }
}

impl std::fmt::Display for ValueType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ValueType::U8 => "u8",
            ValueType::I8 => "i8",
            ValueType::U16 => "u16",
            ValueType::I16 => "i16",
            ValueType::U32 => "u32",
            ValueType::I32 => "i32",
            ValueType::F32 => "f32",
            ValueType::Bool => "bool",
            ValueType::String => "string",
            ValueType::Array => "array",
            ValueType::U64 => "u64",
            ValueType::I64 => "i64",
            ValueType::F64 => "f64",
        })
    }
}

/// One metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum MetadataValue {
    /// An unsigned 8-bit integer.
    U8(u8),
    /// A signed 8-bit integer.
    I8(i8),
    /// An unsigned 16-bit integer.
    U16(u16),
    /// A signed 16-bit integer.
    I16(i16),
    /// An unsigned 32-bit integer.
    U32(u32),
    /// A signed 32-bit integer.
    I32(i32),
    /// A 32-bit float.
    F32(f32),
    /// A boolean (one byte, 0 or 1, in the file).
    Bool(bool),
    /// A UTF-8 string.
    String(String),
    /// `elem` is the declared element type (kept for empty arrays); every item has it.
    Array {
        /// The declared element type.
        elem: ValueType,
        /// The elements, in file order.
        items: Vec<MetadataValue>,
    },
    /// An unsigned 64-bit integer.
    U64(u64),
    /// A signed 64-bit integer.
    I64(i64),
    /// A 64-bit float.
    F64(f64),
}

impl MetadataValue {
    /// The type tag of this value (for an array, [`ValueType::Array`]).
    pub fn value_type(&self) -> ValueType {
        match self {
            MetadataValue::U8(_) => ValueType::U8,
            MetadataValue::I8(_) => ValueType::I8,
            MetadataValue::U16(_) => ValueType::U16,
            MetadataValue::I16(_) => ValueType::I16,
            MetadataValue::U32(_) => ValueType::U32,
            MetadataValue::I32(_) => ValueType::I32,
            MetadataValue::F32(_) => ValueType::F32,
            MetadataValue::Bool(_) => ValueType::Bool,
            MetadataValue::String(_) => ValueType::String,
            MetadataValue::Array { .. } => ValueType::Array,
            MetadataValue::U64(_) => ValueType::U64,
            MetadataValue::I64(_) => ValueType::I64,
            MetadataValue::F64(_) => ValueType::F64,
        }
    }

    /// The value of an integer of any width, if it is one.
    pub fn as_i128(&self) -> Option<i128> {
        Some(match *self {
            MetadataValue::U8(v) => v.into(),
            MetadataValue::I8(v) => v.into(),
            MetadataValue::U16(v) => v.into(),
            MetadataValue::I16(v) => v.into(),
            MetadataValue::U32(v) => v.into(),
            MetadataValue::I32(v) => v.into(),
            MetadataValue::U64(v) => v.into(),
            MetadataValue::I64(v) => v.into(),
            _ => return None,
        })
    }

    /// A short rendering for listings and error messages: long strings and arrays are cut.
    pub fn preview(&self) -> String {
        const MAX_CHARS: usize = 60;
        const MAX_ITEMS: usize = 4;
        match self {
            MetadataValue::String(s) if s.chars().count() > MAX_CHARS => {
                let head: String = s.chars().take(MAX_CHARS).collect();
                format!("{head:?}… ({} bytes)", s.len())
            }
            MetadataValue::String(s) => format!("{s:?}"),
            MetadataValue::Array { elem, items } => {
                let shown: Vec<String> = items.iter().take(MAX_ITEMS).map(|v| v.preview()).collect();
                let more = if items.len() > MAX_ITEMS { ", …" } else { "" };
                format!("[{} × {elem}: {}{more}]", items.len(), shown.join(", "))
            }
            MetadataValue::U8(v) => v.to_string(),
            MetadataValue::I8(v) => v.to_string(),
            MetadataValue::U16(v) => v.to_string(),
            MetadataValue::I16(v) => v.to_string(),
            MetadataValue::U32(v) => v.to_string(),
            MetadataValue::I32(v) => v.to_string(),
            MetadataValue::U64(v) => v.to_string(),
            MetadataValue::I64(v) => v.to_string(),
            MetadataValue::F32(v) => v.to_string(),
            MetadataValue::F64(v) => v.to_string(),
            MetadataValue::Bool(v) => v.to_string(),
        }
    }
}

impl std::fmt::Display for MetadataValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.preview())
    }
}

/// A Rust type a metadata value converts to, for [`super::GgufFile::get`].
pub trait FromMetadata<'a>: Sized {
    /// What the conversion accepts, for error messages ("an integer in u32's range", ...).
    const EXPECTED: &'static str;
    /// `value` as `Self`, or `None` when it has another type or is out of `Self`'s range.
    fn from_metadata(value: &'a MetadataValue) -> Option<Self>;
}

macro_rules! integer_from_metadata {
    ($($t:ty),*) => {$(
        impl FromMetadata<'_> for $t {
            const EXPECTED: &'static str = concat!("an integer in ", stringify!($t), "'s range");
            fn from_metadata(value: &MetadataValue) -> Option<Self> {
                value.as_i128().and_then(|v| <$t>::try_from(v).ok())
            }
        }
    )*};
}
integer_from_metadata!(u8, i8, u16, i16, u32, i32, u64, i64, usize);

impl FromMetadata<'_> for f32 {
    const EXPECTED: &'static str = "an f32 or f64";
    fn from_metadata(value: &MetadataValue) -> Option<Self> {
        match *value {
            MetadataValue::F32(v) => Some(v),
            MetadataValue::F64(v) => Some(v as f32),
            _ => None,
        }
    }
}

impl FromMetadata<'_> for f64 {
    const EXPECTED: &'static str = "an f32 or f64";
    fn from_metadata(value: &MetadataValue) -> Option<Self> {
        match *value {
            MetadataValue::F32(v) => Some(v.into()),
            MetadataValue::F64(v) => Some(v),
            _ => None,
        }
    }
}

impl FromMetadata<'_> for bool {
    const EXPECTED: &'static str = "a bool";
    fn from_metadata(value: &MetadataValue) -> Option<Self> {
        match *value {
            MetadataValue::Bool(v) => Some(v),
            _ => None,
        }
    }
}

impl<'a> FromMetadata<'a> for &'a str {
    const EXPECTED: &'static str = "a string";
    fn from_metadata(value: &'a MetadataValue) -> Option<Self> {
        match value {
            MetadataValue::String(s) => Some(s),
            _ => None,
        }
    }
}

impl<'a> FromMetadata<'a> for &'a MetadataValue {
    const EXPECTED: &'static str = "any value";
    fn from_metadata(value: &'a MetadataValue) -> Option<Self> {
        Some(value)
    }
}

impl<'a, T: FromMetadata<'a>> FromMetadata<'a> for Vec<T> {
    const EXPECTED: &'static str = "an array whose every element converts";
    fn from_metadata(value: &'a MetadataValue) -> Option<Self> {
        match value {
            MetadataValue::Array { items, .. } => items.iter().map(T::from_metadata).collect(),
            _ => None,
        }
    }
}
