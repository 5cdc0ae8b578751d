//! Dequantization of ggml tensor data to f32.
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

use super::GgmlType;
use crate::backend::cpu::alloc;
use crate::backend::cpu::linear_quantized::k_scales_mins;
use crate::{Error, Result};
use half::{bf16, f16};
use rayon::prelude::*;

/// Blocks handed to one rayon task (enough work to amortise the scheduling).
const BLOCKS_PER_TASK: usize = 256;

/// `data`, a whole number of blocks of type `ty`, dequantized to f32.
pub fn dequantize(ty: GgmlType, data: &[u8]) -> Result<Vec<f32>> {
    let (block, bytes) = (ty.block_size() as usize, ty.type_size() as usize);
    if !data.len().is_multiple_of(bytes) {
        return Err(Error::invalid(
            "dequantize",
            format!(
                "{} bytes of {ty} data are not a whole number of {bytes}-byte blocks",
                data.len()
            ),
        ));
    }
    let block_fn: fn(&[u8], &mut [f32]) = match ty {
        GgmlType::F32 => return Ok(elements(data, |b: &[u8; 4]| f32::from_le_bytes(*b))),
        GgmlType::F16 => return Ok(elements(data, |b: &[u8; 2]| f16::from_le_bytes(*b).to_f32())),
        GgmlType::BF16 => return Ok(elements(data, |b: &[u8; 2]| bf16::from_le_bytes(*b).to_f32())),
        GgmlType::Q4_0 => q4_0,
        GgmlType::Q4_1 => q4_1,
        GgmlType::Q5_0 => q5_0,
        GgmlType::Q5_1 => q5_1,
        GgmlType::Q8_0 => q8_0,
        GgmlType::Q4_K => q4_k,
        GgmlType::Q5_K => q5_k,
        GgmlType::Q6_K => q6_k,
        _ => {
            let known: Vec<String> = super::DEQUANTIZABLE.iter().map(|t| t.to_string()).collect();
            return Err(Error::invalid(
                "dequantize",
                format!(
                    "ggml type {ty} is not supported (kiln dequantizes {})",
                    known.join(", ")
                ),
            ));
        }
    };
    debug_assert!(ty.can_dequantize());
    // 8x the file's bytes for Q4: a model the machine cannot hold in f32 is an error, not an abort
    let mut out = alloc::filled("dequantize", data.len() / bytes * block, 0f32)?;
    out.par_chunks_mut(block * BLOCKS_PER_TASK)
        .zip(data.par_chunks(bytes * BLOCKS_PER_TASK))
        .for_each(|(y, x)| {
            for (yb, xb) in y.chunks_exact_mut(block).zip(x.chunks_exact(bytes)) {
                block_fn(xb, yb);
            }
        });
    Ok(out)
}

/// A plain (one element per block) type: each `N`-byte element converted by `f`.
fn elements<const N: usize>(data: &[u8], f: impl Fn(&[u8; N]) -> f32 + Sync) -> Vec<f32> {
    data.par_chunks(N * 4096)
        .flat_map_iter(|c| c.chunks_exact(N).map(|b| f(b.try_into().expect("chunks of N"))))
        .collect()
}

fn half(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// The 32 four-bit values of a Q4_0/Q4_1/Q5_x block's 16 bytes `qs`, in element order.
fn nibbles(qs: &[u8]) -> impl Iterator<Item = u8> + '_ {
    qs.iter().map(|q| q & 0xF).chain(qs.iter().map(|q| q >> 4))
}

fn q4_0(b: &[u8], y: &mut [f32]) {
    let d = half(b, 0);
    for (y, q) in y.iter_mut().zip(nibbles(&b[2..18])) {
        *y = d * (q as i8 - 8) as f32;
    }
}

fn q4_1(b: &[u8], y: &mut [f32]) {
    let (d, m) = (half(b, 0), half(b, 2));
    for (y, q) in y.iter_mut().zip(nibbles(&b[4..20])) {
        *y = d * q as f32 + m;
    }
}

/// The 32 five-bit values of a Q5_0/Q5_1 block from its `qh` (4 bytes) and `qs` (16 bytes).
fn five_bits<'a>(qh: &'a [u8], qs: &'a [u8]) -> impl Iterator<Item = u8> + 'a {
    let qh = u32::from_le_bytes([qh[0], qh[1], qh[2], qh[3]]);
    nibbles(qs)
        .enumerate()
        .map(move |(j, q)| q | (((qh >> j) & 1) as u8) << 4)
}

fn q5_0(b: &[u8], y: &mut [f32]) {
    let d = half(b, 0);
    for (y, q) in y.iter_mut().zip(five_bits(&b[2..6], &b[6..22])) {
        *y = d * (q as i8 - 16) as f32;
    }
}

fn q5_1(b: &[u8], y: &mut [f32]) {
    let (d, m) = (half(b, 0), half(b, 2));
    for (y, q) in y.iter_mut().zip(five_bits(&b[4..8], &b[8..24])) {
        *y = d * q as f32 + m;
    }
}

fn q8_0(b: &[u8], y: &mut [f32]) {
    let d = half(b, 0);
    for (y, &q) in y.iter_mut().zip(&b[2..34]) {
        *y = q as i8 as f32 * d;
    }
}

/// Q4_K and Q5_K: `y = (d * sc) * q - dmin * m` over 8 sub-blocks of 32, where the 4 low
/// bits of element l of sub-block s come from `qs` and bit 4 (Q5_K) from bit s of `qh[l]`.
fn k_quant_4_5(b: &[u8], qh: Option<&[u8]>, qs: &[u8], y: &mut [f32]) {
    let (d, dmin) = (half(b, 0), half(b, 2));
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

fn q4_k(b: &[u8], y: &mut [f32]) {
    k_quant_4_5(b, None, &b[16..144], y);
}

fn q5_k(b: &[u8], y: &mut [f32]) {
    k_quant_4_5(b, Some(&b[16..48]), &b[48..176], y);
}

fn q6_k(b: &[u8], y: &mut [f32]) {
    let (ql, qh, scales) = (&b[0..128], &b[128..192], &b[192..208]);
    let d = half(b, 208);
    for (e, y) in y.iter_mut().enumerate() {
        let (h, p) = (e / 128, e % 128);
        let low = (ql[64 * h + p % 64] >> (4 * (p / 64))) & 0xF;
        let high = (qh[32 * h + p % 32] >> (2 * (p / 32))) & 3;
        let q = (low | high << 4) as i8 - 32;
        *y = (d * scales[e / 16] as i8 as f32) * q as f32;
    }
}
