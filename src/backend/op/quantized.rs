//! A weight matrix kept in one of ggml's block formats ([`QuantizedMatrix`]), the operand of
//! `linear_quantized` (`y = x·Wᵀ` with W quantized). The block layouts are drawn in
//! `src/backend/cpu/dequantize.rs` and docs/llama.md; this file knows their sizes, and how Q4_0,
//! Q4_1 and Q8_0 blocks are regrouped in memory for the CPU's decode kernels.
//!
//! # Row groups (Q4_0, Q4_1, Q8_0)
//!
//! A GGUF file stores a matrix row after row, each row a run of 32-element blocks, each block its
//! f16 scale(s) then its quants. A decode kernel that reads it so makes one dot product per row:
//! a handful of vector instructions per block, and per block a scale to convert and broadcast and
//! a horizontal sum per row (about 20 instructions per 32 weights). Regrouped, the same bytes let
//! one instruction serve 16 rows (as llama.cpp's repacked CPU formats do): [`GROUP_ROWS`] = 16
//! rows form a group, and the group's blocks b of its 16 rows form one tile,
//!
//! ```text
//! tile (g, b), at byte (g·blocks_per_row + b)·16·block_bytes:
//!   quants  word s of the 16 rows: byte 64·s + 4·r + i = row r's quant byte 4·s + i
//!           (Q4: 4 words of 16 nibble bytes, Q8_0: 8 words of 32 signed bytes)
//!   d       the 16 rows' f16 scales
//!   m       the 16 rows' f16 mins (Q4_1 only)
//! ```
//!
//! so a 64-byte load holds 4 quant bytes of each of 16 rows, which one `vpdpbusd` multiplies by the
//! same 4 bytes of x broadcast to every lane, and the scales of 16 rows load and convert as one
//! vector. A tile holds exactly the bytes of the 16 blocks it came from; the last group is padded
//! with zero rows (scale 0). The CUDA kernels (kernels/linear_quantized.cu) read the same tiles:
//! lane j of a tile loads its 16 bytes at 16·j, word j / 4 of 4 rows.
//!
//! # Devices
//!
//! A matrix is made on the CPU; `to_device` (src/backend/storage.rs, where the backends meet) adds
//! a copy of the stored bytes on a CUDA device or the emulator, and the matrix then lives there: its
//! products need their input on that device. The host bytes stay too (shared with the matrix it was
//! made from), so that every accessor here works on every device and moving back is free; that costs
//! host memory the size of the stored bytes. This vocabulary layer cannot name a backend's buffer,
//! so the copy is held as `dyn Any` and the CUDA backend downcasts it to its own storage.

use crate::{Device, Error, Result};
use smallvec::SmallVec;
use std::any::Any;
use std::sync::Arc;

/// One result per matrix of a product of one input with several matrices
/// (`Tensor::linear_quantized_many`), inline for up to three (a Llama layer's q, k and v), so that
/// a decode step's shared-input products allocate no list.
pub type PerMatrix<T> = SmallVec<[T; 3]>;

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
    pub const fn block_size(self) -> usize {
        match self {
            QuantFormat::Q4_0 | QuantFormat::Q4_1 | QuantFormat::Q8_0 => 32,
            QuantFormat::Q4_K | QuantFormat::Q6_K => 256,
        }
    }

    /// Bytes per block.
    pub const fn block_bytes(self) -> usize {
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

/// Rows per group of the regrouped layout (see the module's documentation).
pub const GROUP_ROWS: usize = 16;

/// A `[rows, cols]` matrix in `format`'s blocks, made from the bytes a GGUF file stores for a
/// `[cols, rows]` ggml tensor (row after row: row r is `bytes[r·row_bytes .. (r + 1)·row_bytes]`,
/// `row_bytes = cols / block_size · block_bytes`). Q4_0, Q4_1 and Q8_0 are kept in row groups
/// (module documentation), Q4_K and Q6_K row after row. Cloning shares the bytes.
#[derive(Clone)]
pub struct QuantizedMatrix {
    format: QuantFormat,
    rows: usize,
    cols: usize,
    stored: Arc<[u8]>,
    /// The stored bytes on a CUDA device or the emulator (module documentation), if moved there.
    device_copy: Option<DeviceCopy>,
}

/// A backend's copy of a matrix's stored bytes, and the device it is on.
#[derive(Clone)]
struct DeviceCopy {
    device: Device,
    bytes: Arc<dyn Any + Send + Sync>,
}

impl std::fmt::Debug for QuantizedMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "QuantizedMatrix({} [{}, {}] on {})",
            self.format,
            self.rows,
            self.cols,
            self.device()
        )
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
        let stored = if format.is_grouped() {
            group_rows(format, rows, cols, &bytes).into()
        } else {
            bytes
        };
        Ok(QuantizedMatrix {
            format,
            rows,
            cols,
            stored,
            device_copy: None,
        })
    }

    /// The device the matrix lives on: where its products run.
    pub fn device(&self) -> Device {
        self.device_copy.as_ref().map_or(Device::Cpu, |c| c.device)
    }

    /// The matrix on `device`, its stored bytes there being `bytes` (a backend's buffer, which only
    /// that backend reads back through [`QuantizedMatrix::device_bytes`]).
    pub(crate) fn with_device_bytes(&self, device: Device, bytes: Arc<dyn Any + Send + Sync>) -> QuantizedMatrix {
        QuantizedMatrix {
            device_copy: Some(DeviceCopy { device, bytes }),
            ..self.clone()
        }
    }

    /// The matrix on the CPU (its host bytes, without the device copy).
    pub(crate) fn on_cpu(&self) -> QuantizedMatrix {
        QuantizedMatrix {
            device_copy: None,
            ..self.clone()
        }
    }

    /// The error of a product of this matrix with an input on `input`, another device: it names
    /// `op`, the format, the shape and both devices, and what to do.
    pub(crate) fn device_error(&self, op: &'static str, input: Device) -> Error {
        Error::invalid(
            op,
            format!(
                "the {} weight [{}, {}] is on {}, the input on {input}: move the weight with \
                 QuantizedMatrix::to_device (Llama::to_device moves a whole model)",
                self.format,
                self.rows,
                self.cols,
                self.device()
            ),
        )
    }

    /// The backend's copy of the stored bytes, if the matrix lives on a device other than the CPU.
    pub(crate) fn device_bytes(&self) -> Option<&(dyn Any + Send + Sync)> {
        self.device_copy.as_ref().map(|c| &*c.bytes)
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

    /// The bytes as kept: in row groups for Q4_0, Q4_1 and Q8_0 (padded to whole groups), row
    /// after row for Q4_K and Q6_K. What a decode step reads. In host memory on every device (a
    /// matrix on a CUDA device holds the same bytes there as well).
    pub fn stored_bytes(&self) -> &[u8] {
        &self.stored
    }

    /// Rows `rows` in the GGUF layout (row after row), as [`QuantizedMatrix::new`] took them.
    pub fn gguf_rows(&self, rows: std::ops::Range<usize>) -> Vec<u8> {
        let (block_bytes, blocks) = (self.format.block_bytes(), self.cols / self.format.block_size());
        let mut out = vec![0u8; rows.len() * blocks * block_bytes];
        for (r, row) in rows.zip(out.chunks_exact_mut(blocks * block_bytes)) {
            for (b, block) in row.chunks_exact_mut(block_bytes).enumerate() {
                self.gguf_block(r, b, block);
            }
        }
        out
    }

    /// Block `b` of row `r` in the GGUF layout, into `out` (`format.block_bytes()` long).
    #[inline(always)]
    pub fn gguf_block(&self, r: usize, b: usize, out: &mut [u8]) {
        let (block_bytes, blocks) = (self.format.block_bytes(), self.cols / self.format.block_size());
        if !self.format.is_grouped() {
            out.copy_from_slice(&self.stored[(r * blocks + b) * block_bytes..][..block_bytes]);
            return;
        }
        let (g, lane, tile) = (r / GROUP_ROWS, r % GROUP_ROWS, GROUP_ROWS * block_bytes);
        tile_block(self.format, &self.stored[(g * blocks + b) * tile..][..tile], lane, out);
    }
}

/// Row `lane`'s block of a grouped format's `tile`, in the GGUF layout, into `out`
/// (`format.block_bytes()` long): the inverse of the regrouping.
#[inline(always)]
pub fn tile_block(format: QuantFormat, tile: &[u8], lane: usize, out: &mut [u8]) {
    let (quant_bytes, words) = (format.quant_bytes(), format.scale_words());
    for w in 0..words {
        out[2 * w..2 * w + 2].copy_from_slice(&tile[scale_at(quant_bytes, w, lane)..][..2]);
    }
    for s in 0..quant_bytes / 4 {
        out[2 * words + 4 * s..][..4].copy_from_slice(&tile[64 * s + 4 * lane..][..4]);
    }
}

impl QuantFormat {
    /// Whether [`QuantizedMatrix`] keeps this format in row groups.
    pub fn is_grouped(self) -> bool {
        matches!(self, QuantFormat::Q4_0 | QuantFormat::Q4_1 | QuantFormat::Q8_0)
    }

    /// Bytes of a grouped format's tile before its scales: 16 rows × its quant bytes per block.
    pub const fn tile_quant_bytes(self) -> usize {
        GROUP_ROWS * self.quant_bytes()
    }

    /// Quant bytes of one 32-element block of a grouped format (after its scale words).
    const fn quant_bytes(self) -> usize {
        if matches!(self, QuantFormat::Q8_0) {
            32
        } else {
            16
        }
    }

    /// The f16 scale words at the start of a grouped format's block (`d`, and `m` for Q4_1).
    fn scale_words(self) -> usize {
        if self == QuantFormat::Q4_1 {
            2
        } else {
            1
        }
    }
}

/// GGUF rows (`bytes`, rows × cols of `format`) regrouped into tiles (module documentation).
fn group_rows(format: QuantFormat, rows: usize, cols: usize, bytes: &[u8]) -> Vec<u8> {
    let (block_bytes, blocks) = (format.block_bytes(), cols / 32);
    let (quant_bytes, words) = (format.quant_bytes(), format.scale_words());
    let groups = rows.div_ceil(GROUP_ROWS);
    let tile = GROUP_ROWS * block_bytes;
    let mut out = vec![0u8; groups * blocks * tile];
    for (r, row) in bytes.chunks_exact(blocks * block_bytes).enumerate() {
        let (g, lane) = (r / GROUP_ROWS, r % GROUP_ROWS);
        for (b, block) in row.chunks_exact(block_bytes).enumerate() {
            let t = &mut out[(g * blocks + b) * tile..][..tile];
            let quants = &block[2 * words..];
            for s in 0..quant_bytes / 4 {
                t[64 * s + 4 * lane..][..4].copy_from_slice(&quants[4 * s..4 * s + 4]);
            }
            for w in 0..words {
                t[scale_at(quant_bytes, w, lane)..][..2].copy_from_slice(&block[2 * w..2 * w + 2]);
            }
        }
    }
    out
}

/// Byte of scale word `w` (0: d, 1: m) of row `lane` in a tile whose quants take `quant_bytes` per row.
fn scale_at(quant_bytes: usize, w: usize, lane: usize) -> usize {
    GROUP_ROWS * quant_bytes + 2 * (GROUP_ROWS * w + lane)
}
