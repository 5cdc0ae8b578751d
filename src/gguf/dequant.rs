//! Dequantization of ggml tensor data to f32: the block decoders (and the layouts, drawn byte by
//! byte) are in src/backend/cpu/dequantize.rs; this file splits a tensor's blocks over threads.

use super::GgmlType;
use crate::backend::cpu::alloc;
use crate::backend::cpu::dequantize::{q4_0, q4_1, q4_k, q5_0, q5_1, q5_k, q6_k, q8_0};
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
