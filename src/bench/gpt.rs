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
//! On the CPU the benchmark then runs [`METERED_STEPS`] more steps with the GEMM meter on
//! (`backend::cpu::gemm::meter_start`; untimed for the figures above, so the timed steps carry no
//! metering) and reports the matmul share of the step ([`GemmShare`]): the FLOPs of the step's
//! GEMMs, their core time (the wall time of each GEMM call on its thread plus the time its slabs
//! ran on other threads: the cores it held), that time's share of the step's (its wall time × the
//! threads), and the GEMMs' rate per core over the machine's FMA peak per core, measured by a loop
//! of independent FMAs on every thread (`gemm::fma_peak`, before and after the metered steps, the
//! larger reading): **GEMM efficiency = GEMM FLOPs / GEMM core seconds / (FMA peak / threads)**.
//! Beside it, the step's MFU against that FMA peak, and the same figures per GEMM shape (A and B as
//! N = rows contiguous, T = a transposed view).
//!
//! The dtype is f32 on the CPU and Emu, bf16 mixed precision (f32 master weights and AdamW state,
//! as nanoGPT and llm.c train it) on a GPU; `kiln bench --gpt-dtype f32|bf16` overrides it.

use super::roofline::Roofline;
use super::timing::{Clock, Stats};
use crate::model::{Gpt, GptConfig};
use crate::optim::{clip_coefficient, AdamW};
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
    /// The matmul share of the step, on the CPU (module header).
    pub gemm: Option<GemmShare>,
}

/// Steps run with the GEMM meter on, after the timed ones.
pub const METERED_STEPS: usize = 2;

/// The step's GEMMs (module header): their work, their core time and its share of the step's, and
/// their efficiency against the FMA peak; figures are per step (the mean of [`METERED_STEPS`]).
#[derive(Clone, Debug, serde::Serialize)]
pub struct GemmShare {
    /// The machine's f32 FMA peak over all threads, in GFLOP/s (None without an FMA kernel): the
    /// larger of two readings, before and after the metered steps.
    pub fma_peak_gflops: Option<f64>,
    /// Threads the step ran on (rayon's pool).
    pub threads: usize,
    /// Wall time of a metered step, in ms (the meter's own cost included).
    pub step_ms: f64,
    pub calls: f64,
    /// GFLOP of the GEMMs (2·m·n·k per call).
    pub gflop: f64,
    /// Core time of the GEMMs, in ms.
    pub core_ms: f64,
    /// `core_ms` over the step's core time (`step_ms` × `threads`), in percent.
    pub share_pct: f64,
    /// GFLOP/s per core while in a GEMM: `gflop` / `core_ms`.
    pub gflops_per_core: f64,
    /// `gflops_per_core` over the FMA peak per core, in percent.
    pub efficiency_pct: Option<f64>,
    /// The GEMMs' thread CPU time, in ms (`backend::cpu::gemm::GemmRecord::cpu_s`).
    pub cpu_ms: f64,
    /// `efficiency_pct` on thread CPU time: closer to the products' own cost where other processes
    /// share the cores.
    pub efficiency_cpu_pct: Option<f64>,
    /// The step's model FLOPs per second (the timed median) over the FMA peak, in percent.
    pub mfu_fma_pct: Option<f64>,
    /// The same per GEMM shape, the largest core time first.
    pub shapes: Vec<GemmShapeShare>,
}

/// One GEMM shape's part of [`GemmShare`], per step.
#[derive(Clone, Debug, serde::Serialize)]
pub struct GemmShapeShare {
    /// `MxNxK AB kernel`, e.g. `512x50257x768 NT avx512::Zmm<f32>` (A as is, B transposed).
    pub shape: String,
    pub calls: f64,
    pub gflop: f64,
    pub core_ms: f64,
    /// This shape's share of the step's core time, in percent.
    pub share_pct: f64,
    pub efficiency_pct: Option<f64>,
    /// The efficiency on thread CPU time (see [`GemmShare::efficiency_cpu_pct`]).
    pub efficiency_cpu_pct: Option<f64>,
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
    let gemm = match dev {
        Device::Cpu => Some(gemm_share(&mut step, flops)?),
        _ => None,
    };
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
        gemm,
    })
}

/// Runs [`METERED_STEPS`] steps with the GEMM meter on and measures the FMA peak; `flops` is the
/// step's model FLOP rate, for its MFU against that peak.
fn gemm_share(step: &mut impl FnMut(usize) -> Result<()>, flops: f64) -> Result<GemmShare> {
    use crate::backend::cpu::gemm;
    let before = gemm::fma_peak(0.2);
    let threads = rayon::current_num_threads();
    gemm::meter_start();
    let start = std::time::Instant::now();
    let ran = (0..METERED_STEPS).try_for_each(&mut *step);
    let wall = start.elapsed().as_secs_f64();
    let records = gemm::meter_stop();
    ran?;
    // the larger of two readings: a best-of reading is only ever lowered (by another process, a
    // slower clock for a moment), and one reading of the 2-vCPU AMD EPYC ranged 541–578 GFLOP/s
    // from run to run while the GEMMs' core time held within 2% (docs/perf.md)
    let peak = before.zip(gemm::fma_peak(0.2)).map(|(a, b)| a.max(b));
    let per_step = 1.0 / METERED_STEPS as f64;
    let step_core_s = wall * threads as f64;
    let peak_per_core = peak.map(|p| p / threads as f64);
    let efficiency = |flops: f64, core_s: f64| peak_per_core.map(|p| 100.0 * flops / core_s.max(1e-12) / p);
    let shapes = records
        .iter()
        .map(|r| {
            let s = r.shape;
            GemmShapeShare {
                shape: format!("{}x{}x{} {}{} {}", s.m, s.n, s.k, s.a.letter(), s.b.letter(), s.kernel),
                calls: r.calls as f64 * per_step,
                gflop: r.flops * per_step / 1e9,
                core_ms: r.core_s * per_step * 1e3,
                share_pct: 100.0 * r.core_s / step_core_s,
                efficiency_pct: efficiency(r.flops, r.core_s),
                efficiency_cpu_pct: efficiency(r.flops, r.cpu_s),
            }
        })
        .collect();
    let (calls, gemm_flops, core_s, cpu_s) = records.iter().fold((0.0, 0.0, 0.0, 0.0), |(c, f, s, u), r| {
        (c + r.calls as f64, f + r.flops, s + r.core_s, u + r.cpu_s)
    });
    Ok(GemmShare {
        fma_peak_gflops: peak.map(|p| p / 1e9),
        threads,
        step_ms: wall * per_step * 1e3,
        calls: calls * per_step,
        gflop: gemm_flops * per_step / 1e9,
        core_ms: core_s * per_step * 1e3,
        share_pct: 100.0 * core_s / step_core_s,
        gflops_per_core: gemm_flops / core_s.max(1e-12) / 1e9,
        efficiency_pct: efficiency(gemm_flops, core_s),
        cpu_ms: cpu_s * per_step * 1e3,
        efficiency_cpu_pct: efficiency(gemm_flops, cpu_s),
        mfu_fma_pct: peak.map(|p| 100.0 * flops / p),
        shapes,
    })
}

/// One training step on inputs `x` and targets `y`, both (B, T): forward, backward, gradient
/// clipping at norm 1 and an AdamW step (the clipping's scaling fused into it, as in the
/// trainer). Never inlined, so that a profiler can name it: the callgrind recipe of
/// docs/perf.md counts only what runs inside it (`--toggle-collect`).
#[inline(never)]
pub fn train_step(gpt: &Gpt, opt: &mut AdamW, params: &[(String, Tensor)], x: &Tensor, y: &Tensor) -> Result<()> {
    let grads = gpt.loss(x, y)?.backward()?;
    let (_, scale) = clip_coefficient(params, &grads, 1.0)?;
    opt.step_scaled(&grads, scale)
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
