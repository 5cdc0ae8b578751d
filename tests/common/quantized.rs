//! Random quantized matrices for the `linear_quantized` tests (tests/linear_quantized.rs on the
//! CPU, tests/linear_quantized_devices.rs on CUDA and Emu), with their values dequantized by
//! `kiln::gguf::dequantize` (bit-equal to the `gguf` Python package).

#![allow(dead_code)] // each test file uses its own subset

use kiln::gguf::{dequantize, GgmlType};
use kiln::ops::linear_quantized::{QuantFormat, QuantizedMatrix};

/// xorshift64*: a small deterministic generator.
pub struct Gen(pub u64);

impl Gen {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    /// Uniform in [-1, 1).
    pub fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
}

pub fn ggml(format: QuantFormat) -> GgmlType {
    match format {
        QuantFormat::Q4_0 => GgmlType::Q4_0,
        QuantFormat::Q4_1 => GgmlType::Q4_1,
        QuantFormat::Q8_0 => GgmlType::Q8_0,
        QuantFormat::Q4_K => GgmlType::Q4_K,
        QuantFormat::Q6_K => GgmlType::Q6_K,
    }
}

/// One random block: random quant bytes, and f16 scales of modest size at the format's offsets.
pub fn random_block(format: QuantFormat, g: &mut Gen) -> Vec<u8> {
    let mut b: Vec<u8> = (0..format.block_bytes()).map(|_| g.next() as u8).collect();
    let mut put = |at: usize, v: f32| b[at..at + 2].copy_from_slice(&half::f16::from_f32(v).to_le_bytes());
    match format {
        QuantFormat::Q4_0 | QuantFormat::Q8_0 => put(0, 0.05 * g.unit()),
        QuantFormat::Q4_1 | QuantFormat::Q4_K => {
            put(0, 0.05 * g.unit());
            put(2, 0.05 * g.unit());
        }
        QuantFormat::Q6_K => put(208, 0.01 * g.unit()),
    }
    b
}

/// A random `[rows, cols]` matrix of `format` and its dequantized f32 values.
pub fn random_matrix(format: QuantFormat, rows: usize, cols: usize, g: &mut Gen) -> (QuantizedMatrix, Vec<f32>) {
    let bytes: Vec<u8> = (0..rows * cols / format.block_size())
        .flat_map(|_| random_block(format, g))
        .collect();
    let w = dequantize(ggml(format), &bytes).unwrap();
    (QuantizedMatrix::new(format, rows, cols, bytes).unwrap(), w)
}
