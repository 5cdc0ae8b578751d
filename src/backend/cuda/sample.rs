//! Launch wrapper for kernels/sample.cu: one block per row of logits draws that row's token id on
//! the device; only the ids (4 bytes a row) and the uniform numbers (8 bytes a row) cross over.

use super::launch::{Args, LaunchConfig};
use super::{kernel, CudaStorage};
use crate::backend::op::SampleParams;
use crate::tensor::dtype::DType;
use crate::{Error, Result};

/// Threads per block of kernels/sample.cu (its SAMPLE_THREADS).
const THREADS: u32 = 1024;

/// The id the kernel writes for a row with a NaN logit (its SAMPLE_NAN).
pub const NAN_ROW: u32 = u32::MAX;
/// The id the kernel writes for a row whose logits are all −∞ (its SAMPLE_NO_MASS).
pub const NO_MASS_ROW: u32 = u32::MAX - 1;

/// One id per row of `s` (f32, contiguous rows of `vocab` ≥ 1 elements), row i drawn with
/// `uniforms[i]` in [0, 1); a row with a NaN logit gives [`NAN_ROW`], one with every logit −∞
/// [`NO_MASS_ROW`] (the caller turns them into errors). `params` are valid.
pub fn sample(s: &CudaStorage, vocab: usize, params: &SampleParams, uniforms: &[f64]) -> Result<Vec<u32>> {
    if s.dtype() != DType::F32 {
        return Err(Error::invalid(
            "sample",
            format!("the kernel takes f32 logits, got {}", s.dtype()),
        ));
    }
    let rows = uniforms.len();
    let vocab32 = u32::try_from(vocab)
        .ok()
        .filter(|&v| v < NO_MASS_ROW && v > 0)
        .ok_or_else(|| {
            Error::invalid(
                "sample",
                format!("a vocabulary of {vocab} tokens is outside 1..{NO_MASS_ROW}"),
            )
        })?;
    let top_k = u32::try_from(params.top_k).unwrap_or(0).min(vocab32);
    if rows == 0 {
        return Ok(Vec::new());
    }
    let dev = s.cuda_device();
    let u = CudaStorage::from_host(&s.device(), uniforms)?;
    let ids = CudaStorage::alloc(dev, DType::U32, rows)?;
    let mut args = Args::new();
    args.push(s.ptr())
        .push(u.ptr())
        .push(ids.ptr())
        .push(vocab32)
        .push(params.temperature)
        .push(top_k)
        .push(params.top_p);
    let launch = LaunchConfig {
        grid: [u32::try_from(rows).unwrap_or(u32::MAX), 1, 1], // over the grid limit: an error
        block: [THREADS, 1, 1],
        dyn_smem: 0,
    };
    dev.launch(kernel("sample", "sample_f32")?, launch, &mut args)?;
    ids.read_host(0, rows)
}
