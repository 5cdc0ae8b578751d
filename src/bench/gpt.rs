//! The GPT training-step benchmark: forward, backward, gradient clipping and an AdamW step, as
//! `kiln train` does them, on random token ids. Reports tokens/s and the model FLOPs utilisation
//! (MFU): the model's FLOPs per token (PaLM's estimate, as nanoGPT's `estimate_mfu`:
//! 6·N + 12·L·H·Q·T, N the parameters without the position embeddings) times tokens/s, over the
//! device's measured matmul ceiling in the model's compute dtype (cuBLAS's bf16 rate on a GPU).
//!
//! - Cuda: GPT-2 124M (vocabulary 50257, context 1024) in bf16 mixed precision (f32 master weights
//!   and AdamW state), as nanoGPT and llm.c train it.
//! - Cpu: nanoGPT's shakespeare_char CPU recipe (4 layers, 4 heads, C = 128, context 64, batch 12,
//!   no bias, vocabulary 65), f32.
//! - Emu: the same small model at batch 2, context 16, f32 (a smoke test; its speed means nothing).
//!
//! `kiln bench --gpt-dtype f32|bf16` overrides the dtype on any device.

use super::roofline::Roofline;
use super::timing::{Clock, Stats};
use crate::model::{Gpt, GptConfig};
use crate::optim::{clip_grad_norm, AdamW};
use crate::{DType, Device, Result, Rng, Tensor};

/// The result of the training-step benchmark.
#[derive(Clone, Debug, serde::Serialize)]
pub struct GptResult {
    pub model: String,
    pub params: usize,
    pub dtype: String,
    pub batch: usize,
    pub context: usize,
    pub step: Stats,
    pub tokens_per_s: f64,
    pub flops_per_token: f64,
    pub tflops: f64,
    /// Achieved over the matmul ceiling, in percent (None where no ceiling was measured).
    pub mfu_pct: Option<f64>,
}

/// The model and batch benchmarked on `dev` (`batch` overrides the device's default).
pub fn workload(dev: &Device, batch: Option<usize>) -> Result<(String, GptConfig, usize)> {
    let nanogpt = GptConfig {
        vocab_size: 65,
        ..GptConfig::preset("tiny")?
    };
    Ok(match dev {
        Device::Cuda(_) => ("GPT-2 124M".into(), GptConfig::preset("gpt2")?, batch.unwrap_or(16)),
        Device::Cpu => (
            "nanoGPT shakespeare_char CPU recipe".into(),
            nanogpt,
            batch.unwrap_or(12),
        ),
        Device::Emu => (
            "nanoGPT shakespeare_char shape, context 16".into(),
            GptConfig {
                block_size: 16,
                ..nanogpt
            },
            batch.unwrap_or(2),
        ),
    })
}

/// The step's compute dtype unless asked otherwise: bf16 on a GPU (tensor cores), f32 elsewhere
/// (the CPU computes bf16 in f32, so bf16 only adds casts there).
pub fn default_dtype(dev: &Device) -> DType {
    match dev {
        Device::Cuda(_) => DType::BF16,
        _ => DType::F32,
    }
}

/// FLOPs of one training step per token (forward and backward).
pub fn flops_per_token(cfg: &GptConfig, params: usize) -> f64 {
    let n = (params - cfg.block_size * cfg.n_embd) as f64;
    let (l, h, q, t) = (cfg.n_layer, cfg.n_head, cfg.head_dim(), cfg.block_size);
    6.0 * n + 12.0 * (l * h * q * t) as f64
}

/// Times `steps` training steps in `dtype` after one untimed warm-up step.
pub fn bench_gpt(
    dev: &Device,
    clock: &Clock,
    roofline: &Roofline,
    steps: usize,
    batch: Option<usize>,
    dtype: DType,
) -> Result<GptResult> {
    // as the training loop: freed activation buffers stay in the process for the next step
    crate::backend::cpu::retain_freed_memory();
    let (model, cfg, b) = workload(dev, batch)?;
    let t = cfg.block_size;
    let mut rng = Rng::new(1337);
    let mut gpt = Gpt::new(cfg.clone(), &mut rng, dev)?;
    gpt.set_dtype(dtype)?;
    let params = gpt.params();
    let mut opt = AdamW::new(params.clone(), 6e-4, (0.9, 0.95), 1e-8, 0.1)?;
    // a few batches of random ids, rotated
    let batches = (0..4)
        .map(|_| {
            let ids: Vec<u32> = (0..b * (t + 1))
                .map(|_| rng.below(cfg.vocab_size as u64) as u32)
                .collect();
            let seq = Tensor::from_vec(ids, &[b, t + 1], dev)?;
            Ok((seq.narrow(1, 0, t)?.contiguous()?, seq.narrow(1, 1, t)?.contiguous()?))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut step = |i: usize| -> Result<()> {
        let (x, y) = &batches[i % batches.len()];
        let mut grads = gpt.loss(x, y)?.backward()?;
        clip_grad_norm(&params, &mut grads, 1.0)?;
        opt.step(&grads)
    };
    step(0)?;
    let stats = Stats::of(&clock.time(steps.max(1), &mut step)?);
    let tokens_per_s = (b * t) as f64 / stats.median_s;
    let per_token = flops_per_token(&cfg, gpt.num_params());
    let flops = per_token * tokens_per_s;
    Ok(GptResult {
        model,
        params: gpt.num_params(),
        dtype: dtype.as_str().into(),
        batch: b,
        context: t,
        step: stats,
        tokens_per_s,
        flops_per_token: per_token,
        tflops: flops / 1e12,
        mfu_pct: roofline.peak_flops(dtype).map(|p| 100.0 * flops / p),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpt2_flops_per_token_match_nanogpt() {
        // GPT-2 124M: 124,439,808 parameters (tied head counted once), 123.65M without wpe as
        // nanoGPT prints; 6·123,653,376 + 12·12·12·64·1024 = 855,166,464 FLOPs per token.
        let cfg = GptConfig::preset("gpt2").unwrap();
        assert_eq!(cfg.num_params(), 124_439_808);
        assert_eq!(flops_per_token(&cfg, 124_439_808), 855_166_464.0);
    }
}
