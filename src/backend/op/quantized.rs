//! A weight matrix kept in one of ggml's block formats ([`QuantizedMatrix`]), the operand of
//! `linear_quantized` (`y = x·Wᵀ` with W quantized). The block layouts are drawn in
//! `src/backend/cpu/dequantize.rs` and docs/llama.md; this file only knows their sizes.

use crate::{Error, Result};
use std::sync::Arc;

/// The block formats `linear_quantized` multiplies with directly.
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum QuantFormat {
    /// 32 elements in 18 bytes: `d · (q - 8)`, q four bits.
    Q4_0,
    /// 32 elements in 20 bytes: `d · q + m`, q four bits.
    Q4_1,
    /// 32 elements in 34 bytes: `d · q`, q a signed byte.
    Q8_0,
    /// 256 elements in 144 bytes: 8 sub-blocks of 32 with six-bit scales and mins, q four bits.
    Q4_K,
    /// 256 elements in 210 bytes: 16 sub-blocks of 16 with signed 8-bit scales, q six bits.
    Q6_K,
}

impl QuantFormat {
    pub const ALL: [QuantFormat; 5] = [
        QuantFormat::Q4_0,
        QuantFormat::Q4_1,
        QuantFormat::Q8_0,
        QuantFormat::Q4_K,
        QuantFormat::Q6_K,
    ];

    /// Elements per block.
    pub fn block_size(self) -> usize {
        match self {
            QuantFormat::Q4_0 | QuantFormat::Q4_1 | QuantFormat::Q8_0 => 32,
            QuantFormat::Q4_K | QuantFormat::Q6_K => 256,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            QuantFormat::Q4_0 => 18,
            QuantFormat::Q4_1 => 20,
            QuantFormat::Q8_0 => 34,
            QuantFormat::Q4_K => 144,
            QuantFormat::Q6_K => 210,
        }
    }
}

impl std::fmt::Display for QuantFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self:?}")
    }
}

/// A `[rows, cols]` matrix stored row after row in `format`'s blocks (as a GGUF file stores a
/// `[cols, rows]` ggml tensor): row r is `bytes[r·row_bytes .. (r + 1)·row_bytes]`, with
/// `row_bytes = cols / block_size · block_bytes`. Cloning shares the bytes.
#[derive(Clone)]
pub struct QuantizedMatrix {
    format: QuantFormat,
    rows: usize,
    cols: usize,
    bytes: Arc<[u8]>,
}

impl std::fmt::Debug for QuantizedMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "QuantizedMatrix({} [{}, {}])", self.format, self.rows, self.cols)
    }
}

impl QuantizedMatrix {
    /// Checks that `cols` is a whole number of blocks and that `bytes` holds exactly `rows` rows.
    pub fn new(format: QuantFormat, rows: usize, cols: usize, bytes: impl Into<Arc<[u8]>>) -> Result<QuantizedMatrix> {
        let bytes = bytes.into();
        let block = format.block_size();
        if cols == 0 || !cols.is_multiple_of(block) {
            return Err(Error::shape(
                "linear_quantized",
                format!(
                    "a {format} matrix needs rows of a positive multiple of {block} elements, got [{rows}, {cols}]"
                ),
            ));
        }
        let want = (cols / block)
            .checked_mul(format.block_bytes())
            .and_then(|row| row.checked_mul(rows));
        if want != Some(bytes.len()) {
            return Err(Error::shape(
                "linear_quantized",
                format!(
                    "a {format} matrix [{rows}, {cols}] takes {} bytes, got {}",
                    want.map_or("more than usize".to_string(), |w| w.to_string()),
                    bytes.len()
                ),
            ));
        }
        Ok(QuantizedMatrix {
            format,
            rows,
            cols,
            bytes,
        })
    }

    pub fn format(&self) -> QuantFormat {
        self.format
    }

    /// `[rows, cols]`: `[out, in]` as a linear layer's weight.
    pub fn shape(&self) -> [usize; 2] {
        [self.rows, self.cols]
    }

    /// Bytes of one row.
    pub fn row_bytes(&self) -> usize {
        self.cols / self.format.block_size() * self.format.block_bytes()
    }

    /// All the blocks, row after row.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}
