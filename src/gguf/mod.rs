//! GGUF, the single-file model format of llama.cpp: metadata, tensor infos and (possibly
//! quantized) tensor data, memory-mapped.
//!
//! ```text
//! offset  bytes  field (all integers little-endian)
//! 0       4      magic "GGUF" (0x47 0x47 0x55 0x46)
//! 4       4      version: u32 (2 or 3; 1 used u32 counts and is not read)
//! 8       8      tensor_count: u64
//! 16      8      metadata_kv_count: u64
//! 24      ...    metadata_kv_count × { key: string, value_type: u32, value }
//!         ...    tensor_count × { name: string, n_dims: u32, dims: u64 × n_dims,
//!                                 ggml_type: u32, offset: u64 }
//!         ...    padding up to a multiple of `general.alignment` (default 32)
//!         ...    tensor data; each tensor starts at data_start + offset, offset % alignment == 0
//!
//! string = { len: u64, len bytes of UTF-8, no terminator }
//! value  = u8 | i8 | u16 | i16 | u32 | i32 | f32 | bool (1 byte, 0 or 1) | string
//!        | array { element_type: u32, count: u64, count × value } | u64 | i64 | f64
//! ```
//!
//! `dims[0]` is the fastest-varying dimension (a row of a matrix), so a GGUF tensor with
//! dims `[576, 1536]` is kiln's `[1536, 576]`: [`TensorInfo::shape`] reverses them.
//!
//! Every length and count read from the header is checked against the bytes left in the
//! file before anything is allocated, so a corrupt header yields an [`Error::Format`]
//! naming the file and the field, never a panic or a huge allocation.
//!
//! ```no_run
//! use kiln::gguf::GgufFile;
//! use kiln::{DType, Device};
//! let file = GgufFile::open("SmolLM2-135M-Instruct.Q4_1.gguf")?;
//! let layers: u32 = file.get("llama.block_count")?;
//! let eps: f32 = file.get("llama.attention.layer_norm_rms_epsilon")?;
//! let add_bos: Option<bool> = file.get_opt("tokenizer.ggml.add_bos_token")?;
//! let embedding = file.tensor("token_embd.weight", DType::F32, &Device::Cpu)?; // [49152, 576]
//! # Ok::<(), kiln::Error>(())
//! ```

mod dequant;
mod metadata;

pub use dequant::dequantize;
pub use metadata::{FromMetadata, MetadataValue, ValueType};

use crate::ops::linear_quantized::{QuantFormat, QuantizedMatrix};
use crate::{DType, Device, Error, Result, Tensor};
use half::{bf16, f16};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// The first four bytes of every GGUF file.
pub const MAGIC: [u8; 4] = *b"GGUF";

/// The data alignment when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;

/// The most dimensions a ggml tensor has.
pub const MAX_DIMS: usize = 4;

/// The types [`dequantize`] turns into f32.
pub const DEQUANTIZABLE: [GgmlType; 11] = [
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
];

/// The tensor element encodings of ggml (`enum ggml_type`), with their numeric ids.
///
/// Every type is known so that its byte size can be checked against the file; only the
/// ones listed in [`GgmlType::can_dequantize`] can be turned into floats.
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GgmlType {
    /// 32-bit IEEE float.
    F32,
    /// IEEE half precision.
    F16,
    /// 4-bit weights in blocks of 32 sharing an f16 scale: 18 bytes per 32 weights (4.5 bits each).
    Q4_0,
    /// 4-bit weights in blocks of 32 with an f16 scale and an f16 minimum: 20 bytes per 32 weights (5 bits
    /// each).
    Q4_1,
    /// 5-bit weights in blocks of 32 sharing an f16 scale: 22 bytes per 32 weights (5.5 bits each).
    Q5_0,
    /// 5-bit weights in blocks of 32 with an f16 scale and an f16 minimum: 24 bytes per 32 weights (6 bits
    /// each).
    Q5_1,
    /// 8-bit weights in blocks of 32 sharing an f16 scale: 34 bytes per 32 weights (8.5 bits each).
    Q8_0,
    /// 8-bit values in blocks of 32 with a scale and their sum: ggml's operand format for Q4_1/Q5_1
    /// dot products, not a weight format of model files.
    Q8_1,
    /// k-quant: 2-bit weights in super-blocks of 256: 84 bytes per 256 weights (2.625 bits each).
    Q2_K,
    /// k-quant: 3-bit weights in super-blocks of 256: 110 bytes per 256 weights (3.438 bits each).
    Q3_K,
    /// k-quant: 4-bit weights in super-blocks of 256 (8 sub-blocks of 32 with 6-bit scales and minimums): 144
    /// bytes per 256 weights (4.5 bits each).
    Q4_K,
    /// k-quant: 5-bit weights in super-blocks of 256 (8 sub-blocks of 32 with 6-bit scales and minimums): 176
    /// bytes per 256 weights (5.5 bits each).
    Q5_K,
    /// k-quant: 6-bit weights in super-blocks of 256 (16 sub-blocks of 16 with 8-bit scales): 210 bytes per
    /// 256 weights (6.562 bits each).
    Q6_K,
    /// k-quant: 8-bit values in super-blocks of 256 (ggml's operand format for k-quant dot products): 292
    /// bytes per 256 weights (9.125 bits each).
    Q8_K,
    /// i-quant (codebook), super-blocks of 256: 66 bytes per 256 weights (2.062 bits each).
    IQ2_XXS,
    /// i-quant (codebook), super-blocks of 256: 74 bytes per 256 weights (2.312 bits each).
    IQ2_XS,
    /// i-quant (codebook), super-blocks of 256: 98 bytes per 256 weights (3.062 bits each).
    IQ3_XXS,
    /// i-quant (codebook), super-blocks of 256: 50 bytes per 256 weights (1.562 bits each).
    IQ1_S,
    /// i-quant: 4-bit indices into a non-linear table, blocks of 32: 18 bytes per 32 weights (4.5 bits each).
    IQ4_NL,
    /// i-quant (codebook), super-blocks of 256: 110 bytes per 256 weights (3.438 bits each).
    IQ3_S,
    /// i-quant (codebook), super-blocks of 256: 82 bytes per 256 weights (2.562 bits each).
    IQ2_S,
    /// i-quant (codebook), super-blocks of 256: 136 bytes per 256 weights (4.25 bits each).
    IQ4_XS,
    /// 8-bit signed integer.
    I8,
    /// 16-bit signed integer.
    I16,
    /// 32-bit signed integer.
    I32,
    /// 64-bit signed integer.
    I64,
    /// 64-bit IEEE float.
    F64,
    /// i-quant (codebook), super-blocks of 256: 56 bytes per 256 weights (1.75 bits each).
    IQ1_M,
    /// bfloat16.
    BF16,
    /// Ternary weights (−1, 0, 1), super-blocks of 256: 54 bytes per 256 weights (1.688 bits each).
    TQ1_0,
    /// Ternary weights (−1, 0, 1) stored in 2 bits, super-blocks of 256: 66 bytes per 256 weights (2.062 bits
    /// each).
    TQ2_0,
    /// OCP microscaling FP4: 4-bit floats in blocks of 32 sharing an 8-bit exponent: 17 bytes per 32 weights
    /// (4.25 bits each).
    MXFP4,
}

impl GgmlType {
    /// `(type, id, elements per block, bytes per block)`, as in ggml's `type_traits`.
    const TABLE: [(GgmlType, u32, u64, u64); 32] = [
        (GgmlType::F32, 0, 1, 4),
        (GgmlType::F16, 1, 1, 2),
        (GgmlType::Q4_0, 2, 32, 18),
        (GgmlType::Q4_1, 3, 32, 20),
        (GgmlType::Q5_0, 6, 32, 22),
        (GgmlType::Q5_1, 7, 32, 24),
        (GgmlType::Q8_0, 8, 32, 34),
        (GgmlType::Q8_1, 9, 32, 40),
        (GgmlType::Q2_K, 10, 256, 84),
        (GgmlType::Q3_K, 11, 256, 110),
        (GgmlType::Q4_K, 12, 256, 144),
        (GgmlType::Q5_K, 13, 256, 176),
        (GgmlType::Q6_K, 14, 256, 210),
        (GgmlType::Q8_K, 15, 256, 292),
        (GgmlType::IQ2_XXS, 16, 256, 66),
        (GgmlType::IQ2_XS, 17, 256, 74),
        (GgmlType::IQ3_XXS, 18, 256, 98),
        (GgmlType::IQ1_S, 19, 256, 50),
        (GgmlType::IQ4_NL, 20, 32, 18),
        (GgmlType::IQ3_S, 21, 256, 110),
        (GgmlType::IQ2_S, 22, 256, 82),
        (GgmlType::IQ4_XS, 23, 256, 136),
        (GgmlType::I8, 24, 1, 1),
        (GgmlType::I16, 25, 1, 2),
        (GgmlType::I32, 26, 1, 4),
        (GgmlType::I64, 27, 1, 8),
        (GgmlType::F64, 28, 1, 8),
        (GgmlType::IQ1_M, 29, 256, 56),
        (GgmlType::BF16, 30, 1, 2),
        (GgmlType::TQ1_0, 34, 256, 54),
        (GgmlType::TQ2_0, 35, 256, 66),
        (GgmlType::MXFP4, 39, 32, 17),
    ];

    fn row(self) -> (GgmlType, u32, u64, u64) {
        *Self::TABLE
            .iter()
            .find(|r| r.0 == self)
            .expect("every GgmlType is in TABLE")
    }

    /// The type with ggml id `id`, if kiln knows it.
    pub fn from_id(id: u32) -> Option<GgmlType> {
        Self::TABLE.iter().find(|r| r.1 == id).map(|r| r.0)
    }

    /// ggml's numeric id of the type.
    pub fn id(self) -> u32 {
        self.row().1
    }

    /// Elements per block (1 for plain types, 32 or 256 for quantized ones).
    pub fn block_size(self) -> u64 {
        self.row().2
    }

    /// Bytes per block.
    pub fn type_size(self) -> u64 {
        self.row().3
    }

    /// Whether [`dequantize`] handles this type (one of [`DEQUANTIZABLE`]).
    pub fn can_dequantize(self) -> bool {
        DEQUANTIZABLE.contains(&self)
    }

    /// The block format [`Tensor::linear_quantized`] multiplies with directly, if it is one.
    pub fn quant_format(self) -> Option<QuantFormat> {
        match self {
            GgmlType::Q4_0 => Some(QuantFormat::Q4_0),
            GgmlType::Q4_1 => Some(QuantFormat::Q4_1),
            GgmlType::Q8_0 => Some(QuantFormat::Q8_0),
            GgmlType::Q4_K => Some(QuantFormat::Q4_K),
            GgmlType::Q6_K => Some(QuantFormat::Q6_K),
            _ => None,
        }
    }
}

impl std::fmt::Display for GgmlType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self:?}")
    }
}

/// One tensor's entry in the header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    /// The tensor's name (`token_embd.weight`, `blk.0.attn_q.weight`, ...).
    pub name: String,
    /// ggml order: `dims[0]` varies fastest (the row length).
    pub dims: Vec<u64>,
    /// How its elements are stored.
    pub ggml_type: GgmlType,
    /// Byte offset from the start of the data section.
    pub offset: u64,
    /// Bytes of data (`n_elements / block_size * type_size`).
    pub n_bytes: u64,
}

impl TensorInfo {
    /// The shape in kiln's (row-major) order: `dims` reversed.
    pub fn shape(&self) -> Vec<usize> {
        // Every dim fits in usize: open() checked the product against the file size.
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }

    /// The number of elements (1 for a tensor without dimensions).
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }
}

/// The bytes of the file: a memory map, or a buffer (for bytes that never were a file).
enum Bytes {
    Mapped(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl std::ops::Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Mapped(m) => m,
            Bytes::Owned(v) => v,
        }
    }
}

/// A parsed GGUF file: metadata and tensor infos read once at open, tensor data read
/// (and dequantized) on demand straight from the memory map.
pub struct GgufFile {
    /// The path (or the name given to [`GgufFile::from_bytes`]), for error messages.
    name: String,
    bytes: Bytes,
    version: u32,
    alignment: u64,
    metadata: BTreeMap<String, MetadataValue>,
    tensors: Vec<TensorInfo>,
    by_name: HashMap<String, usize>,
    /// Byte offset of the data section in the file.
    data_start: u64,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("name", &self.name)
            .field("version", &self.version)
            .field("metadata_keys", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

impl GgufFile {
    /// Maps and parses the file at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<GgufFile> {
        let path = path.as_ref();
        let file =
            std::fs::File::open(path).map_err(|e| Error::io(format!("opening GGUF file {}", path.display()), e))?;
        // SAFETY: the map is read-only and lives as long as `GgufFile`. Another process
        // truncating or rewriting the file while it is mapped would change the bytes under
        // us (or fault); model files are not written while loaded, as for any mmap reader.
        let map = unsafe { memmap2::Mmap::map(&file) }
            .map_err(|e| Error::io(format!("memory-mapping GGUF file {}", path.display()), e))?;
        Self::parse(path.display().to_string(), Bytes::Mapped(map))
    }

    /// Parses GGUF bytes held in memory; `name` stands for the file in error messages.
    pub fn from_bytes(bytes: Vec<u8>, name: impl Into<String>) -> Result<GgufFile> {
        Self::parse(name.into(), Bytes::Owned(bytes))
    }

    fn parse(name: String, bytes: Bytes) -> Result<GgufFile> {
        let mut r = Reader {
            bytes: &bytes,
            pos: 0,
            file: &name,
        };
        let magic = r.take(4, "the magic number")?;
        if magic != MAGIC {
            return Err(r.error(format!(
                "not a GGUF file: it starts with {magic:02x?}, GGUF files start with \"GGUF\" {MAGIC:02x?}"
            )));
        }
        let version = r.u32("the version")?;
        if version.swap_bytes() == 2 || version.swap_bytes() == 3 {
            return Err(r.error("a big-endian GGUF file; kiln reads little-endian GGUF only"));
        }
        if version != 2 && version != 3 {
            return Err(r.error(format!(
                "GGUF version {version} is not supported (kiln reads versions 2 and 3)"
            )));
        }
        let n_tensors = r.u64("the tensor count")?;
        let n_kv = r.u64("the metadata count")?;
        // The smallest metadata entry: an empty key (8), its type (4) and a u8 value (1).
        let n_kv = r.count(n_kv, 13, "metadata entries")?;

        let mut metadata = BTreeMap::new();
        for i in 0..n_kv {
            let key = r.string(&format!("the key of metadata entry {i}"))?;
            let value = r.value(&key)?;
            if metadata.insert(key.clone(), value).is_some() {
                return Err(r.error(format!("metadata key {key:?} appears twice")));
            }
        }
        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(MetadataValue::U32(a)) if a.is_power_of_two() => *a as u64,
            Some(other) => {
                return Err(r.error(format!(
                    "general.alignment must be a u32 power of two, found {} {other}",
                    other.value_type()
                )))
            }
        };

        // The smallest tensor info: an empty name (8), n_dims (4), type (4), offset (8).
        let n_tensors = r.count(n_tensors, 24, "tensor infos")?;
        let mut tensors = Vec::with_capacity(n_tensors);
        let mut by_name = HashMap::with_capacity(n_tensors);
        for i in 0..n_tensors {
            let info = r.tensor_info(i, alignment)?;
            if by_name.insert(info.name.clone(), i).is_some() {
                return Err(r.error(format!("tensor {:?} appears twice", info.name)));
            }
            tensors.push(info);
        }

        let data_start = (r.pos as u64).next_multiple_of(alignment);
        let file_len = bytes.len() as u64;
        for t in &tensors {
            // offset and n_bytes are each below 2^63 (checked in tensor_info), so no overflow.
            let end = data_start + t.offset + t.n_bytes;
            if end > file_len {
                return Err(Error::Format {
                    file: name.clone(),
                    what: format!(
                        "tensor {:?} ({} {:?}, {} bytes at data offset {}) ends at byte {end}, past the end of the file ({file_len} bytes)",
                        t.name, t.ggml_type, t.dims, t.n_bytes, t.offset
                    ),
                });
            }
        }
        Ok(GgufFile {
            name,
            bytes,
            version,
            alignment,
            metadata,
            tensors,
            by_name,
            data_start,
        })
    }

    /// The path or name the file was opened with.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The format version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The alignment of tensor data in bytes (`general.alignment`, default 32).
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// The byte offset in the file where tensor data starts (tensor offsets count from here).
    pub fn data_start(&self) -> u64 {
        self.data_start
    }

    /// Every metadata entry, by key.
    pub fn metadata(&self) -> &BTreeMap<String, MetadataValue> {
        &self.metadata
    }

    /// The value of metadata key `key` as a `T` (`u32`, `f32`, `bool`, `&str`, `Vec<&str>`,
    /// `Vec<i32>`, ...). Integers convert between widths when the value fits. A missing key
    /// or a value of another type is an error naming the key and the type found.
    pub fn get<'a, T: FromMetadata<'a>>(&'a self, key: &str) -> Result<T> {
        match self.get_opt(key)? {
            Some(v) => Ok(v),
            None => Err(Error::Format {
                file: self.name.clone(),
                what: format!("metadata key {key:?} is missing (expected {})", T::EXPECTED),
            }),
        }
    }

    /// Like [`GgufFile::get`], but a missing key is `None`.
    pub fn get_opt<'a, T: FromMetadata<'a>>(&'a self, key: &str) -> Result<Option<T>> {
        let Some(value) = self.metadata.get(key) else {
            return Ok(None);
        };
        T::from_metadata(value).map(Some).ok_or_else(|| Error::Format {
            file: self.name.clone(),
            what: format!(
                "metadata key {key:?} holds {} {}, expected {}",
                value.value_type(),
                value.preview(),
                T::EXPECTED
            ),
        })
    }

    /// The tensor infos, in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// The info of tensor `name`, or an error listing a few of the tensors present.
    pub fn tensor_info(&self, name: &str) -> Result<&TensorInfo> {
        match self.by_name.get(name) {
            Some(&i) => Ok(&self.tensors[i]),
            None => {
                let some: Vec<&str> = self.tensors.iter().take(8).map(|t| t.name.as_str()).collect();
                Err(Error::Format {
                    file: self.name.clone(),
                    what: format!(
                        "no tensor named {name:?} (the file has {} tensors: {}{})",
                        self.tensors.len(),
                        some.join(", "),
                        if self.tensors.len() > some.len() { ", ..." } else { "" }
                    ),
                })
            }
        }
    }

    /// The raw (possibly quantized) bytes of tensor `name`, borrowed from the map.
    pub fn tensor_data(&self, name: &str) -> Result<&[u8]> {
        let t = self.tensor_info(name)?;
        // In bounds and within usize: open() checked start + n_bytes <= file length.
        let start = (self.data_start + t.offset) as usize;
        Ok(&self.bytes[start..start + t.n_bytes as usize])
    }

    /// Tensor `name` dequantized to f32, in kiln's row-major order (see [`TensorInfo::shape`]).
    pub fn dequantize(&self, name: &str) -> Result<Vec<f32>> {
        let t = self.tensor_info(name)?;
        if !t.ggml_type.can_dequantize() {
            return Err(Error::Format {
                file: self.name.clone(),
                what: format!(
                    "tensor {name:?} has ggml type {}, which kiln cannot dequantize (it reads {})",
                    t.ggml_type,
                    DEQUANTIZABLE.map(|t| t.to_string()).join(", ")
                ),
            });
        }
        dequantize(t.ggml_type, self.tensor_data(name)?)
    }

    /// Matrix `name` kept in its block format (its bytes copied out of the file), for
    /// [`Tensor::linear_quantized`]: a 2-D tensor of a type with a [`GgmlType::quant_format`].
    pub fn quantized(&self, name: &str) -> Result<QuantizedMatrix> {
        let t = self.tensor_info(name)?;
        let (Some(format), &[rows, cols]) = (t.ggml_type.quant_format(), t.shape().as_slice()) else {
            return Err(Error::Format {
                file: self.name.clone(),
                what: format!(
                    "tensor {name:?} ({} {:?}) is not a matrix in a block format kiln multiplies with ({})",
                    t.ggml_type,
                    t.shape(),
                    QuantFormat::ALL.map(|f| f.to_string()).join(", ")
                ),
            });
        };
        QuantizedMatrix::new(format, rows, cols, self.tensor_data(name)?)
    }

    /// Tensor `name` as a kiln tensor of shape [`TensorInfo::shape`] and dtype `dtype`
    /// (F32, BF16 or F16) on `dev`. F16 and BF16 data is copied exactly into its own dtype;
    /// everything else is dequantized to f32 first and rounded to nearest even.
    pub fn tensor(&self, name: &str, dtype: DType, dev: &Device) -> Result<Tensor> {
        let t = self.tensor_info(name)?;
        let shape = t.shape();
        let data = self.tensor_data(name)?;
        match (t.ggml_type, dtype) {
            (GgmlType::F16, DType::F16) => Tensor::from_vec(read_halves(data, f16::from_bits), &shape, dev),
            (GgmlType::BF16, DType::BF16) => Tensor::from_vec(read_halves(data, bf16::from_bits), &shape, dev),
            (_, DType::F32) => Tensor::from_vec(self.dequantize(name)?, &shape, dev),
            (_, DType::BF16) => {
                let v = self.dequantize(name)?;
                Tensor::from_vec(v.into_iter().map(bf16::from_f32).collect::<Vec<_>>(), &shape, dev)
            }
            (_, DType::F16) => {
                let v = self.dequantize(name)?;
                Tensor::from_vec(v.into_iter().map(f16::from_f32).collect::<Vec<_>>(), &shape, dev)
            }
            (_, other) => Err(Error::DType {
                op: "gguf tensor",
                msg: format!("tensor {name:?} can be loaded as f32, bf16 or f16, not {other}"),
            }),
        }
    }
}

fn read_halves<T>(data: &[u8], from_bits: fn(u16) -> T) -> Vec<T> {
    data.chunks_exact(2)
        .map(|b| from_bits(u16::from_le_bytes([b[0], b[1]])))
        .collect()
}

/// A cursor over the header; every read checks the bytes left.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    file: &'a str,
}

/// Arrays nest at most this deep (each level costs a stack frame while parsing).
const MAX_ARRAY_NESTING: usize = 8;

impl<'a> Reader<'a> {
    fn error(&self, what: impl Into<String>) -> Error {
        Error::Format {
            file: self.file.to_string(),
            what: what.into(),
        }
    }

    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(self.error(format!(
                "truncated at byte {} while reading {what}: {n} bytes needed, {} left",
                self.pos,
                self.remaining()
            )));
        }
        let s = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        Ok(self.take(N, what)?.try_into().expect("take returned N bytes"))
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// Checks that `count` items of at least `min_bytes` each can fit in what is left of
    /// the file, so that it is safe to allocate for them.
    fn count(&self, count: u64, min_bytes: usize, what: &str) -> Result<usize> {
        let fits = (self.remaining() / min_bytes) as u64;
        if count > fits {
            return Err(self.error(format!(
                "{count} {what} at byte {} cannot fit in the {} bytes left in the file",
                self.pos,
                self.remaining()
            )));
        }
        Ok(count as usize)
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let len = self.u64(&format!("the length of {what}"))?;
        let len = self.count(len, 1, &format!("bytes of {what}"))?;
        let at = self.pos;
        let raw = self.take(len, what)?;
        String::from_utf8(raw.to_vec()).map_err(|e| self.error(format!("{what} at byte {at} is not valid UTF-8: {e}")))
    }

    fn value_type(&mut self, what: &str) -> Result<ValueType> {
        let at = self.pos;
        let id = self.u32(what)?;
        ValueType::from_id(id)
            .ok_or_else(|| self.error(format!("{what} at byte {at} is {id}, not a GGUF value type (0..=12)")))
    }

    /// The type and value of metadata entry `key`.
    fn value(&mut self, key: &str) -> Result<MetadataValue> {
        let ty = self.value_type(&format!("the value type of {key:?}"))?;
        self.value_of(ty, key, 0)
    }

    fn value_of(&mut self, ty: ValueType, key: &str, depth: usize) -> Result<MetadataValue> {
        let what = format!("the value of {key:?}");
        Ok(match ty {
            ValueType::U8 => MetadataValue::U8(self.array::<1>(&what)?[0]),
            ValueType::I8 => MetadataValue::I8(self.array::<1>(&what)?[0] as i8),
            ValueType::U16 => MetadataValue::U16(u16::from_le_bytes(self.array(&what)?)),
            ValueType::I16 => MetadataValue::I16(i16::from_le_bytes(self.array(&what)?)),
            ValueType::U32 => MetadataValue::U32(self.u32(&what)?),
            ValueType::I32 => MetadataValue::I32(i32::from_le_bytes(self.array(&what)?)),
            ValueType::F32 => MetadataValue::F32(f32::from_le_bytes(self.array(&what)?)),
            ValueType::Bool => {
                let at = self.pos;
                match self.array::<1>(&what)?[0] {
                    0 => MetadataValue::Bool(false),
                    1 => MetadataValue::Bool(true),
                    b => return Err(self.error(format!("{what} at byte {at} is a bool of value {b}, not 0 or 1"))),
                }
            }
            ValueType::String => MetadataValue::String(self.string(&what)?),
            ValueType::U64 => MetadataValue::U64(self.u64(&what)?),
            ValueType::I64 => MetadataValue::I64(i64::from_le_bytes(self.array(&what)?)),
            ValueType::F64 => MetadataValue::F64(f64::from_le_bytes(self.array(&what)?)),
            ValueType::Array => {
                if depth >= MAX_ARRAY_NESTING {
                    return Err(self.error(format!("{what}: arrays nested more than {MAX_ARRAY_NESTING} deep")));
                }
                let elem = self.value_type(&format!("the element type of {key:?}"))?;
                let n = self.u64(&format!("the element count of {key:?}"))?;
                let n = self.count(n, elem.min_bytes(), &format!("elements of {key:?}"))?;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.value_of(elem, key, depth + 1)?);
                }
                MetadataValue::Array { elem, items }
            }
        })
    }

    fn tensor_info(&mut self, index: usize, alignment: u64) -> Result<TensorInfo> {
        let name = self.string(&format!("the name of tensor {index}"))?;
        let n_dims = self.u32(&format!("the dimension count of tensor {name:?}"))? as usize;
        if n_dims > MAX_DIMS {
            return Err(self.error(format!(
                "tensor {name:?} has {n_dims} dimensions; ggml tensors have at most {MAX_DIMS}"
            )));
        }
        let mut dims = Vec::with_capacity(n_dims);
        for d in 0..n_dims {
            dims.push(self.u64(&format!("dimension {d} of tensor {name:?}"))?);
        }
        let type_at = self.pos;
        let type_id = self.u32(&format!("the type of tensor {name:?}"))?;
        let ggml_type = GgmlType::from_id(type_id).ok_or_else(|| {
            self.error(format!(
                "tensor {name:?} has ggml type id {type_id} (at byte {type_at}), which kiln does not know"
            ))
        })?;
        let offset = self.u64(&format!("the data offset of tensor {name:?}"))?;

        let n_elements = dims.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d));
        let n_elements = n_elements.filter(|&n| n < 1 << 60).ok_or_else(|| {
            self.error(format!(
                "tensor {name:?} has dimensions {dims:?}, whose product overflows"
            ))
        })?;
        let row = dims.first().copied().unwrap_or(1);
        if !row.is_multiple_of(ggml_type.block_size()) {
            return Err(self.error(format!(
                "tensor {name:?} ({ggml_type}, dims {dims:?}): the row length {row} is not a multiple of the block size {}",
                ggml_type.block_size()
            )));
        }
        // At most 8 bytes per element (F64, I64), so this stays below 2^63 (n < 2^60).
        let n_bytes = n_elements / ggml_type.block_size() * ggml_type.type_size();
        if !offset.is_multiple_of(alignment) || offset >= 1 << 62 {
            return Err(self.error(format!(
                "tensor {name:?} has data offset {offset}, which is not a multiple of the alignment {alignment} (or is absurd)"
            )));
        }
        Ok(TensorInfo {
            name,
            dims,
            ggml_type,
            offset,
            n_bytes,
        })
    }
}
