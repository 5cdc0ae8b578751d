//! The block decoders of ggml's quantized formats: one block of bytes to its f32 elements. Used
//! by `gguf::dequantize` (whole tensors, every format it reads) and by `linear_quantized`
//! (weight rows decoded into cache for the products with many rows of x, and for the input's
//! gradient).
//!
//! A quantized row is a sequence of blocks; each block stores `block_size` elements in
//! `type_size` bytes. The layouts below are ggml's (`ggml-common.h`), drawn byte by byte;
//! `f16` is an IEEE half, little-endian. Each formula is evaluated in f32 in the order the
//! `gguf` Python package's `quants` module evaluates it, so the results match bit for bit.
//!
//! ```text
//! Q4_0   32 elements, 18 bytes   d: f16 | qs: 16 bytes
//!        element j < 16: low nibble of qs[j]; element j + 16: high nibble of qs[j]
//!        y = d * (q - 8)
//! Q4_1   32 elements, 20 bytes   d: f16 | m: f16 | qs: 16 bytes (nibbles as Q4_0)
//!        y = d * q + m
//! Q5_0   32 elements, 22 bytes   d: f16 | qh: u32 | qs: 16 bytes (nibbles as Q4_0)
//!        q = nibble | (bit j of qh) << 4,   y = d * (q - 16)
//! Q5_1   32 elements, 24 bytes   d: f16 | m: f16 | qh: u32 | qs: 16 bytes
//!        q as Q5_0,   y = d * q + m
//! Q8_0   32 elements, 34 bytes   d: f16 | qs: 32 × i8
//!        y = q * d
//!
//! K-quants: 256-element super-blocks of 8 sub-blocks of 32 (Q6_K: 16 of 16).
//! Q4_K  256 elements, 144 bytes  d: f16 | dmin: f16 | scales: 12 bytes | qs: 128 bytes
//!        scales packs 8 six-bit scales sc and 8 six-bit mins m:
//!          byte 0..4:  bits 0-5 sc[0..4],  bits 6-7 the top bits of sc[4..8]
//!          byte 4..8:  bits 0-5 m[0..4],   bits 6-7 the top bits of m[4..8]
//!          byte 8..12: bits 0-3 the low bits of sc[4..8], bits 4-7 the low bits of m[4..8]
//!        sub-block 2g (g = 0..4): low nibbles of qs[32g..32g+32]; 2g+1: their high nibbles
//!        y = (d * sc[s]) * q - dmin * m[s]
//! Q5_K  256 elements, 176 bytes  d: f16 | dmin: f16 | scales: 12 bytes | qh: 32 bytes | qs: 128 bytes
//!        low 4 bits as Q4_K; bit s of qh[l] is bit 4 of element l of sub-block s
//!        y = (d * sc[s]) * q - dmin * m[s]
//! Q6_K  256 elements, 210 bytes  ql: 128 bytes | qh: 64 bytes | scales: 16 × i8 | d: f16
//!        two halves of 128 elements; in half h, element p (0..128):
//!          low 4 bits:  (ql[64h + p % 64] >> 4 * (p / 64)) & 0xF
//!          high 2 bits: (qh[32h + p % 32] >> 2 * (p / 32)) & 3
//!        q = low | high << 4 - 32,   y = (d * scales[e / 16]) * q   (e = 128h + p)
//! ```

use crate::backend::op::{QuantFormat, QuantizedMatrix, GROUP_ROWS};
use rayon::prelude::*;
use std::ops::Range;

/// The decoder of one block of `format`: its bytes to its `format.block_size()` elements.
pub fn block_decoder(format: QuantFormat) -> fn(&[u8], &mut [f32]) {
    match format {
        QuantFormat::Q4_0 => q4_0,
        QuantFormat::Q4_1 => q4_1,
        QuantFormat::Q8_0 => q8_0,
        QuantFormat::Q4_K => q4_k,
        QuantFormat::Q6_K => q6_k,
    }
}

/// Rows `rows` of `w` decoded to f32 into `out` (`rows.len() × cols`, row-major), rows split
/// over threads.
pub fn dequantize_rows(w: &QuantizedMatrix, rows: Range<usize>, out: &mut [f32]) {
    let (cols, format) = (w.shape()[1], w.format());
    let (block, block_bytes, decode) = (format.block_size(), format.block_bytes(), block_decoder(format));
    out[..rows.len() * cols]
        .par_chunks_mut(cols)
        .zip(rows.into_par_iter())
        .with_min_len(GROUP_ROWS)
        .for_each(|(y, r)| {
            let mut bytes = [0u8; MAX_BLOCK_BYTES];
            for (b, yb) in y.chunks_exact_mut(block).enumerate() {
                w.gguf_block(r, b, &mut bytes[..block_bytes]);
                decode(&bytes[..block_bytes], yb);
            }
        });
}

/// Bytes of the largest block of any [`QuantFormat`].
const MAX_BLOCK_BYTES: usize = {
    let (mut max, mut i) = (0, 0);
    while i < QuantFormat::ALL.len() {
        let bytes = QuantFormat::ALL[i].block_bytes();
        if bytes > max {
            max = bytes;
        }
        i += 1;
    }
    max
};

/// The f16 at byte `at` of `b`, as f32 (every block's scales: this runs once per 32 weights).
///
/// Branch-free, where `half`'s software conversion branches on the exponent: the f16's exponent
/// and mantissa bits, moved up 13 places, are an f32 whose exponent is 112 too small (127 - 15)
/// and a multiply by 2¹¹² restores it, exactly, for normal and subnormal f16 alike; infinities
/// and NaNs (f16 exponent 31) get the f32's all-ones exponent instead.
#[inline(always)]
pub fn f16_at(b: &[u8], at: usize) -> f32 {
    let h = u32::from(u16::from_le_bytes([b[at], b[at + 1]]));
    let (sign, magnitude) = ((h & 0x8000) << 16, (h & 0x7fff) << 13);
    const TWO_POW_112: f32 = f32::from_bits((127 + 112) << 23);
    let finite = (f32::from_bits(magnitude) * TWO_POW_112).to_bits();
    let special = magnitude | 0x7f80_0000;
    f32::from_bits(sign | if magnitude >= 0x7c00 << 13 { special } else { finite })
}

/// The 32 four-bit values of a Q4_0/Q4_1/Q5_x block's 16 bytes `qs`, in element order.
fn nibbles(qs: &[u8]) -> impl Iterator<Item = u8> + '_ {
    qs.iter().map(|q| q & 0xF).chain(qs.iter().map(|q| q >> 4))
}

/// The 32 elements of a Q4_0/Q4_1 block, `f(q)` of each nibble of `qs` (element j < 16: low nibble
/// of qs[j], j + 16: its high nibble), written as fixed-size arrays so that the loop vectorises
/// (the `linear_quantized` prefill decodes every weight per call).
#[inline(always)]
fn four_bit_block(qs: &[u8], y: &mut [f32], f: impl Fn(u8) -> f32) {
    let (qs, y): (&[u8; 16], &mut [f32; 32]) = (qs.try_into().expect("16 bytes"), y.try_into().expect("32 elements"));
    let (lo, hi) = y.split_at_mut(16);
    for j in 0..16 {
        lo[j] = f(qs[j] & 0xF);
        hi[j] = f(qs[j] >> 4);
    }
}

pub fn q4_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    four_bit_block(&b[2..18], y, |q| d * (q as i8 - 8) as f32);
}

pub fn q4_1(b: &[u8], y: &mut [f32]) {
    let (d, m) = (f16_at(b, 0), f16_at(b, 2));
    four_bit_block(&b[4..20], y, |q| d * q as f32 + m);
}

/// The 32 five-bit values of a Q5_0/Q5_1 block from its `qh` (4 bytes) and `qs` (16 bytes).
fn five_bits<'a>(qh: &'a [u8], qs: &'a [u8]) -> impl Iterator<Item = u8> + 'a {
    let qh = u32::from_le_bytes([qh[0], qh[1], qh[2], qh[3]]);
    nibbles(qs)
        .enumerate()
        .map(move |(j, q)| q | (((qh >> j) & 1) as u8) << 4)
}

pub fn q5_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    for (y, q) in y.iter_mut().zip(five_bits(&b[2..6], &b[6..22])) {
        *y = d * (q as i8 - 16) as f32;
    }
}

pub fn q5_1(b: &[u8], y: &mut [f32]) {
    let (d, m) = (f16_at(b, 0), f16_at(b, 2));
    for (y, q) in y.iter_mut().zip(five_bits(&b[4..8], &b[8..24])) {
        *y = d * q as f32 + m;
    }
}

pub fn q8_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let (qs, y): (&[u8; 32], &mut [f32; 32]) = (
        b[2..34].try_into().expect("32 bytes"),
        y.try_into().expect("32 elements"),
    );
    for (y, &q) in y.iter_mut().zip(qs) {
        *y = q as i8 as f32 * d;
    }
}

/// Q4_K and Q5_K: `y = (d * sc) * q - dmin * m` over 8 sub-blocks of 32, where the 4 low
/// bits of element l of sub-block s come from `qs` and bit 4 (Q5_K) from bit s of `qh[l]`.
fn k_quant_4_5(b: &[u8], qh: Option<&[u8]>, qs: &[u8], y: &mut [f32]) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    for (s, (sc, m)) in k_scales_mins(&b[4..16]).into_iter().enumerate() {
        let (scale, min) = (d * sc as f32, dmin * m as f32);
        let bytes = &qs[32 * (s / 2)..32 * (s / 2) + 32];
        let shift = 4 * (s % 2);
        for (l, y) in y[32 * s..32 * s + 32].iter_mut().enumerate() {
            let high = qh.map_or(0, |qh| ((qh[l] >> s) & 1) << 4);
            let q = ((bytes[l] >> shift) & 0xF) | high;
            *y = scale * q as f32 - min;
        }
    }
}

pub fn q4_k(b: &[u8], y: &mut [f32]) {
    k_quant_4_5(b, None, &b[16..144], y);
}

pub fn q5_k(b: &[u8], y: &mut [f32]) {
    k_quant_4_5(b, Some(&b[16..48]), &b[48..176], y);
}

pub fn q6_k(b: &[u8], y: &mut [f32]) {
    let (ql, qh, scales) = (&b[0..128], &b[128..192], &b[192..208]);
    let d = f16_at(b, 208);
    for (e, y) in y.iter_mut().enumerate() {
        let (h, p) = (e / 128, e % 128);
        let low = (ql[64 * h + p % 64] >> (4 * (p / 64))) & 0xF;
        let high = (qh[32 * h + p % 32] >> (2 * (p / 32))) & 3;
        let q = (low | high << 4) as i8 - 32;
        *y = (d * scales[e / 16] as i8 as f32) * q as f32;
    }
}

/// The 8 six-bit (scale, min) pairs packed in a Q4_K/Q5_K block's 12 `scales` bytes.
pub fn k_scales_mins(s: &[u8]) -> [(u8, u8); 8] {
    std::array::from_fn(|j| {
        if j < 4 {
            (s[j] & 0x3F, s[j + 4] & 0x3F)
        } else {
            let i = j - 4;
            (
                (s[i + 8] & 0xF) | ((s[i] >> 2) & 0x30),
                (s[i + 8] >> 4) | ((s[i + 4] >> 2) & 0x30),
            )
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every one of the 65536 f16 values against the `half` crate's conversion.
    #[test]
    fn f16_at_matches_half_for_every_value() {
        for bits in 0..=u16::MAX {
            let (got, want) = (f16_at(&bits.to_le_bytes(), 0), half::f16::from_bits(bits).to_f32());
            assert!(
                got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
                "f16 bits {bits:#06x}: {got} against {want}"
            );
        }
    }
}
