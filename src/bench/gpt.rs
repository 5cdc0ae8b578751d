//! The GPT training-step benchmark: forward, backward, gradient clipping and an AdamW step, as
//! `kiln train` does them, on random token ids. Reports ms per step, tokens/s, the achieved
//! FLOP rate and the model FLOPs utilisation (MFU): the achieved rate over the device's measured
//! matmul ceiling in the model's compute dtype (cuBLAS's bf16 rate on a GPU).
//!
//! The FLOPs of a step are PaLM's estimate, as nanoGPT's `estimate_mfu` counts them, per token:
//! 6·N + 12·L·H·Q·T, with N the parameters without the position embeddings (a lookup, no
//! multiply), L layers, H heads of Q dimensions and T the sequence length of the batch.
//! 6·N: every weight multiplies and adds once per token forward (2·N) and twice backward (the
//! gradients of the input and of the weight, 4·N); the tied output head is counted once, as a
//! parameter. 12·L·H·Q·T: attention's Q·Kᵀ and P·V, 2·2·T·Q FLOPs per head and token forward,
//! three times that with the backward; the causal mask's skipped half is counted (as nanoGPT does).
//! The step's other work (layer norms, GELU, softmax, cross-entropy, AdamW) is not counted.
//!
//! The model ([`GptModel`], `kiln bench --gpt-model`):
//! - nanoGPT's shakespeare_char CPU recipe (4 layers, 4 heads, C = 128, context 64, no bias,
//!   vocabulary 65), the CPU's default, batch 12; on Emu at batch 2, context 16 (a smoke test;
//!   its speed means nothing).
//! - GPT-2 124M (vocabulary 50257, 12 layers, 12 heads, C = 768, 1024 positions), the GPU's
//!   default: batch 16 × 1024 on a GPU, 2 × 256 elsewhere (`--gpt-batch 4 --gpt-context 512`
//!   for the larger CPU shape).
//!
//! The dtype is f32 on the CPU and Emu, bf16 mixed precision (f32 master weights and AdamW state,
//! as nanoGPT and llm.c train it) on a GPU; `kiln bench --gpt-dtype f32|bf16` overrides it.

use super::roofline::Roofline;
use super::timing::{Clock, Stats};
use crate::model::{Gpt, GptConfig};
use crate::optim::{clip_grad_norm, AdamW};
use crate::{DType, Device, Error, Result, Rng, Tensor};

/// The result of the training-step benchmark.
#[derive(Clone, Debug, serde::Serialize)]
pub struct GptResult {
    pub model: String,
    pub params: usize,
    pub dtype: String,
    pub batch: usize,
    /// The sequence length of the batch.
    pub context: usize,
    pub step: Stats,
    pub tokens_per_s: f64,
    pub flops_per_token: f64,
    pub tflops: f64,
    /// The achieved rate in GFLOP/s (`tflops` · 1000).
    pub gflops: f64,
    /// Achieved over the matmul ceiling, in percent (None where no ceiling was measured).
    pub mfu_pct: Option<f64>,
}

/// The model the training-step benchmark trains.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GptModel {
    /// nanoGPT's shakespeare_char CPU recipe (4 layers, C = 128, vocabulary 65).
    Nanogpt,
    /// GPT-2 124M (12 layers, C = 768, vocabulary 50257).
    Gpt2,
}

/// `model`'s name and shape: GPT-2 124M (the `gpt2` preset), or nanoGPT's shakespeare_char model
/// (the `tiny` preset with its 65-character vocabulary).
pub fn model_config(model: GptModel) -> Result<(&'static str, GptConfig)> {
    Ok(match model {
        GptModel::Gpt2 => ("GPT-2 124M", GptConfig::preset("gpt2")?),
        GptModel::Nanogpt => (
            "nanoGPT shakespeare_char",
            GptConfig {
                vocab_size: 65,
                ..GptConfig::preset("tiny")?
            },
        ),
    })
}

/// What one benchmark trains: the model's name and configuration, and the batch's shape.
#[derive(Clone, Debug)]
pub struct Workload {
    pub model: String,
    pub cfg: GptConfig,
    pub batch: usize,
    /// The batch's sequence length, at most `cfg.block_size`.
    pub context: usize,
}

/// The workload benchmarked on `dev`: `model`, `batch` and `context` override the device's
/// defaults (module header). A context longer than the model's positions is an error.
pub fn workload(
    dev: &Device,
    model: Option<GptModel>,
    batch: Option<usize>,
    context: Option<usize>,
) -> Result<Workload> {
    let model = model.unwrap_or(match dev {
        Device::Cuda(_) => GptModel::Gpt2,
        _ => GptModel::Nanogpt,
    });
    let (title, shape) = model_config(model)?;
    let (name, cfg, default_batch, default_context) = match (model, dev) {
        (GptModel::Gpt2, Device::Cuda(_)) => (title, shape, 16, 1024),
        (GptModel::Gpt2, _) => (title, shape, 2, 256),
        (GptModel::Nanogpt, Device::Emu) => (
            "nanoGPT shakespeare_char shape, context 16",
            GptConfig {
                block_size: 16,
                ..shape
            },
            2,
            16,
        ),
        (GptModel::Nanogpt, _) => ("nanoGPT shakespeare_char CPU recipe", shape, 12, 64),
    };
    let (batch, context) = (batch.unwrap_or(default_batch), context.unwrap_or(default_context));
    if batch == 0 || context == 0 || context > cfg.block_size {
        return Err(Error::invalid(
            "bench",
            format!(
                "the GPT step's batch {batch} x context {context} needs a positive batch and a \
                 context of 1 to the {name}'s {} positions",
                cfg.block_size
            ),
        ));
    }
    Ok(Workload {
        model: name.into(),
        cfg,
        batch,
        context,
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

/// FLOPs of one training step per token (forward and backward) of a model with `params`
/// parameters on sequences of `context` tokens: 6·N + 12·L·H·Q·T (module header).
pub fn flops_per_token(cfg: &GptConfig, params: usize, context: usize) -> f64 {
    let n = (params - cfg.block_size * cfg.n_embd) as f64;
    let (l, h, q) = (cfg.n_layer, cfg.n_head, cfg.head_dim());
    6.0 * n + 12.0 * (l * h * q * context) as f64
}

/// Times `steps` training steps of `work` in `dtype` after one untimed warm-up step.
pub fn bench_gpt(
    dev: &Device,
    clock: &Clock,
    roofline: &Roofline,
    steps: usize,
    work: Workload,
    dtype: DType,
) -> Result<GptResult> {
    // as the training loop: freed activation buffers stay in the process for the next step
    crate::backend::cpu::retain_freed_memory();
    let Workload {
        model,
        cfg,
        batch: b,
        context: t,
    } = work;
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
        train_step(&gpt, &mut opt, &params, x, y)
    };
    step(0)?;
    let stats = Stats::of(&clock.time(steps.max(1), &mut step)?);
    let tokens_per_s = (b * t) as f64 / stats.median_s;
    let per_token = flops_per_token(&cfg, gpt.num_params(), t);
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
        gflops: flops / 1e9,
        mfu_pct: roofline.peak_flops(dtype).map(|p| 100.0 * flops / p),
    })
}

/// One training step on inputs `x` and targets `y`, both (B, T): forward, backward, gradient
/// clipping at norm 1 and an AdamW step. Never inlined, so that a profiler can name it: the
/// callgrind recipe of docs/perf.md counts only what runs inside it (`--toggle-collect`).
#[inline(never)]
pub fn train_step(gpt: &Gpt, opt: &mut AdamW, params: &[(String, Tensor)], x: &Tensor, y: &Tensor) -> Result<()> {
    let mut grads = gpt.loss(x, y)?.backward()?;
    clip_grad_norm(params, &mut grads, 1.0)?;
    opt.step(&grads)
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
        assert_eq!(flops_per_token(&cfg, 124_439_808, 1024), 855_166_464.0);
        // at 256 tokens the attention term is a quarter: 741,920,256 + 12·12·12·64·256
        // (28,311,552)
        assert_eq!(flops_per_token(&cfg, 124_439_808, 256), 770_231_808.0);
    }

    #[test]
    fn workloads_default_per_device_and_bad_contexts_are_named() {
        let w = workload(&Device::Cpu, Some(GptModel::Gpt2), None, None).unwrap();
        assert_eq!((w.model.as_str(), w.batch, w.context), ("GPT-2 124M", 2, 256));
        let w = workload(&Device::Cpu, None, None, None).unwrap();
        assert_eq!((w.batch, w.context, w.cfg.n_embd), (12, 64, 128));
        let w = workload(&Device::Cpu, Some(GptModel::Gpt2), Some(4), Some(512)).unwrap();
        assert_eq!((w.batch, w.context), (4, 512));
        let err = workload(&Device::Cpu, None, None, Some(65)).unwrap_err().to_string();
        assert!(err.contains("context 65") && err.contains("64 positions"), "{err}");
        assert!(workload(&Device::Cpu, None, Some(0), None).is_err());
    }
}
