//! Whether a command's memory can fit before it starts: an estimate of what training,
//! generation or a benchmark will hold at its peak, checked against the memory the OS says is
//! available (`MemAvailable` of /proc/meminfo; elsewhere the check is skipped). A run that
//! cannot fit is refused with the estimate, instead of starting and being killed (or aborting
//! on an allocation) minutes later.
//!
//! The estimates count the large buffers only, so they are lower bounds: a refused run could
//! never have fit, and one that passes may still come close (allocation stays fallible
//! everywhere else: `Error::OutOfMemory`).

use crate::error::human_bytes;
use crate::model::GptConfig;
use crate::{DType, Device, Error, Result};

/// Named byte counts that add up to an estimate.
#[derive(Clone, Debug, Default)]
pub struct Estimate {
    /// Each part's name and its size in bytes.
    pub parts: Vec<(&'static str, u128)>,
}

impl Estimate {
    /// The sum of the parts, in bytes.
    pub fn total(&self) -> u128 {
        self.parts.iter().map(|&(_, b)| b).sum()
    }

    /// `7.28 TiB (weights, gradients and AdamW moments 1.2 GiB, activations ...)`.
    pub fn describe(&self) -> String {
        let parts: Vec<String> = self
            .parts
            .iter()
            .map(|&(what, b)| format!("{what} {}", human_bytes(b)))
            .collect();
        format!("{} ({})", human_bytes(self.total()), parts.join(", "))
    }
}

/// Parameters of a model of shape `cfg`, in u128 (no overflow for any config).
fn params(cfg: &GptConfig) -> u128 {
    let (c, v, t, l) = (
        cfg.n_embd as u128,
        cfg.vocab_size as u128,
        cfg.block_size as u128,
        cfg.n_layer as u128,
    );
    // per block: two layer norms, qkv, the attention projection, the MLP (biases left out)
    v * c + t * c + l * (4 * c + 12 * c * c)
}

/// Training with micro-batches of `batch_size` sequences of `cfg.block_size` tokens.
pub fn training(cfg: &GptConfig, batch_size: usize, dtype: DType) -> Estimate {
    let p = params(cfg);
    let (b, t, c, v, l) = (
        batch_size as u128,
        cfg.block_size as u128,
        cfg.n_embd as u128,
        cfg.vocab_size as u128,
        cfg.n_layer as u128,
    );
    let act = dtype.size_in_bytes() as u128;
    let copy = if dtype == DType::F32 { 0 } else { act * p }; // the weights cast to the compute dtype
    Estimate {
        parts: vec![
            // f32 weights, gradients, and AdamW's two moments
            ("weights, gradients and AdamW moments", 16 * p + copy),
            // per layer the graph keeps about 16 (B, T, C) tensors for backward (layer norms, qkv,
            // attention output, projections, the 4C-wide MLP and its GELU)
            ("activations", l * 16 * b * t * c * act),
            // the logits, their softmax in the loss, and the logits' gradient, in f32
            ("logits", 3 * b * t * v * 4),
        ],
    }
}

/// Generation from a model of shape `cfg` (the weights, the KV cache, and one row of logits).
pub fn generation(cfg: &GptConfig) -> Estimate {
    let (t, c, l) = (cfg.block_size as u128, cfg.n_embd as u128, cfg.n_layer as u128);
    Estimate {
        parts: vec![
            ("weights", 4 * params(cfg)),
            ("KV cache", 2 * l * t * c * 4),
            ("activations", 16 * t * c * 4 + 4 * cfg.vocab_size as u128),
        ],
    }
}

/// A benchmark case of `dims` (MxNxK: the two operands and the product; ROWSxCOLS: an input, an
/// output and one more of each for backward), in f32.
pub fn bench_case(dims: &[usize]) -> Estimate {
    let d: Vec<u128> = dims.iter().map(|&x| x as u128).collect();
    let elements = match d.as_slice() {
        [m, n, k] => m * k + k * n + m * n,
        other => 3 * other.iter().product::<u128>(),
    };
    Estimate {
        parts: vec![("buffers", 4 * elements)],
    }
}

/// Bytes of memory available to a new allocation now, where the OS says (Linux's `MemAvailable`).
pub fn available_bytes() -> Option<u128> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u128 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Refuses `what` on `device` when `estimate` is more than the host has available. Host memory
/// backs the CPU and the emulator; a GPU's own memory is not checked here (its allocations
/// fail cleanly with the driver's out-of-memory error).
pub fn check_fits(what: &str, estimate: &Estimate, device: &Device) -> Result<()> {
    if matches!(device, Device::Cuda(_)) {
        return Ok(());
    }
    let Some(available) = available_bytes() else {
        return Ok(());
    };
    check_against(what, estimate, available)
}

fn check_against(what: &str, estimate: &Estimate, available: u128) -> Result<()> {
    if estimate.total() > available {
        return Err(Error::Invalid {
            op: "kiln",
            msg: format!(
                "{what} needs at least {}, but only {} of memory is available; \
                 use a smaller model, batch or size",
                estimate.describe(),
                human_bytes(available)
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_estimate_counts_gpt2_as_nanogpt_does() {
        // 124M parameters with biases; the estimate leaves biases out (85k of them)
        let gpt2 = GptConfig::preset("gpt2").unwrap();
        let p = params(&gpt2);
        assert!((124_439_808 - 100_000..=124_439_808).contains(&(p as usize)), "{p}");
        // 16 bytes per parameter for weights, gradients and moments
        assert_eq!(training(&gpt2, 1, DType::F32).parts[0].1, 16 * p);
    }

    #[test]
    fn absurd_sizes_are_refused_with_the_estimate() {
        let tiny = GptConfig::preset("tiny").unwrap();
        let err = check_against("training", &training(&tiny, 1_000_000_000_000, DType::F32), 24 << 30)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("training needs at least") && err.contains("activations"),
            "{err}"
        );
        assert!(err.contains("24.00 GiB"), "{err}");
        // usize::MAX sequences do not overflow the estimate
        assert!(training(&tiny, usize::MAX, DType::F32).total() > u64::MAX as u128);
        assert!(check_against("bench", &bench_case(&[100_000, 100_000]), 24 << 30).is_err());
        // the default tiny run fits in a few MiB
        assert!(check_against("training", &training(&tiny, 12, DType::F32), 256 << 20).is_ok());
    }
}
