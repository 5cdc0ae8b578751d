//! `kiln bench --gguf FILE` and `kiln bench --generate gpt2|nanogpt`: inference speed of a causal
//! language model at batch 1, the way a chat uses it. The model is a Llama from a GGUF file, or a
//! GPT of a preset shape with random weights (GPT-2 124M or nanoGPT's shakespeare_char shape; the
//! speed does not depend on the weights' values). For each compute dtype and prompt length:
//!
//! - **prefill**: one `forward_cached_last` of the whole prompt into an empty KV cache (the LM
//!   head on the last position only, as generation runs it), then the greedy pick of the first new
//!   token from its logits (reported as prompt tokens/s);
//! - **generation**: `new_tokens` steps of one token each, every step reading the cache of the
//!   prompt and the tokens so far and picking the next token greedily (reported as new tokens/s).
//!
//! Each is timed with the host clock around calls that end by reading the logits back, so a GPU's
//! queue is drained inside the timed span. One untimed warm-up (a short prompt and two steps) per
//! dtype, then `reps` timed repetitions, each with a fresh cache; the report gives the median.
//! The prompt is `prompt_len` ids drawn with a fixed seed (the speed does not depend on which ids),
//! and generation never stops at an end-of-sequence token, so every run does the same work.
//! `scripts/transformers_generation_speed.py` measures Hugging
//! Face transformers in exactly this way.
//!
//! The weights ([`LlamaLoad`]): `stored` keeps a GGUF file's quantized projections in their block
//! format ([`Tensor::linear_quantized`], on every device; a GPT has no such form); `f32` computes
//! with f32 weights (a GGUF's dequantized); `bf16` casts them once to bf16 ([`Llama::to_dtype`],
//! [`Gpt::to_dtype`]), activations and the KV cache in bf16, logits in f32.
//!
//! **The ceiling.** Batch-1 generation reads every weight once per token, so it cannot beat
//! `read bandwidth / weight bytes per token` ([`Llama::weight_bytes_per_token`],
//! [`Gpt::weight_bytes_per_token`]). The read bandwidth is measured next to the generation it
//! rates: right before each repetition of a row and once after the last, the best of three reads
//! of a 256 MiB f32 buffer by the kernel benchmark's memory ceiling (a parallel sum, writing
//! nothing); a row's bandwidth is the median of these probes (a shared machine's bandwidth can
//! move by half within seconds, so one probe at the start would rate later rows against another
//! machine, and a probe on one side only of a repetition can miss a change during it). On the CPU only (on
//! Emu it would time the emulator, and a GPU's generation is bound by its launches long before its
//! bandwidth at this size). Each row reports its bandwidth, that ceiling and the fraction of it
//! reached.

use super::gpt::GptModel;
use super::machine::Machine;
use super::timing::Stats;
use crate::model::{CausalLm, Gpt, GptConfig, Llama, LlamaLoad};
use crate::{DType, Device, Error, Result, Rng, Tensor};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The model whose generation is timed.
#[derive(Clone, Debug)]
pub enum GenerationModel {
    /// A Llama read from this GGUF file (`kiln bench --gguf FILE`).
    Gguf(PathBuf),
    /// A GPT of this preset shape with random weights (`kiln bench --generate gpt2|nanogpt`).
    Gpt(GptModel),
}

/// What `kiln bench --gguf` or `--generate` runs.
#[derive(Clone, Debug)]
pub struct GenerationOptions {
    pub model: GenerationModel,
    pub device: Device,
    /// Prompt lengths, each timed separately (default: 128 and 512 for a GGUF file, 16 for a GPT).
    pub prompt_lens: Vec<usize>,
    /// Tokens generated after each prompt (default 128).
    pub new_tokens: usize,
    /// What the weights become (default: as stored, f32, bf16 for a GGUF file; f32, bf16 for a GPT).
    pub dtypes: Vec<LlamaLoad>,
    /// Timed repetitions of each (prompt, generation) pair (default 3).
    pub reps: usize,
}

impl GenerationOptions {
    /// The defaults for a Llama from `gguf`.
    pub fn gguf(gguf: impl AsRef<Path>, device: Device) -> GenerationOptions {
        GenerationOptions {
            model: GenerationModel::Gguf(gguf.as_ref().to_path_buf()),
            device,
            prompt_lens: vec![128, 512],
            new_tokens: 128,
            dtypes: vec![LlamaLoad::AsStored, LlamaLoad::F32, LlamaLoad::BF16],
            reps: 3,
        }
    }

    /// The defaults for a GPT of `model`'s shape: a 16-token prompt, 128 new tokens, f32 and bf16.
    pub fn gpt(model: GptModel, device: Device) -> GenerationOptions {
        GenerationOptions {
            model: GenerationModel::Gpt(model),
            device,
            prompt_lens: vec![16],
            new_tokens: 128,
            dtypes: vec![LlamaLoad::F32, LlamaLoad::BF16],
            reps: 3,
        }
    }
}

/// One dtype at one prompt length.
#[derive(Clone, Debug, serde::Serialize)]
pub struct GenerationRow {
    pub dtype: String,
    pub batch: usize,
    pub prompt_tokens: usize,
    pub new_tokens: usize,
    /// Seconds of the prompt's forward and the first token's pick.
    pub prefill: Stats,
    pub prefill_tokens_per_s: f64,
    /// Seconds of all `new_tokens` one-token steps together.
    pub generation: Stats,
    pub generation_tokens_per_s: f64,
    /// Bytes of weights one generation step reads (the model's `weight_bytes_per_token`).
    pub weight_bytes_per_token: usize,
    /// Read bandwidth in GB/s (10⁹ bytes per second) measured before each repetition and after
    /// the last, their median (None where it is not measured: Emu, a GPU).
    pub read_gbs: Option<f64>,
    /// `read_gbs / weight_bytes_per_token`: the tokens/s at which generation would only read
    /// weights, at the measured bandwidth (None where it is not measured).
    pub ceiling_tokens_per_s: Option<f64>,
    /// `generation_tokens_per_s / ceiling_tokens_per_s`.
    pub fraction_of_ceiling: Option<f64>,
}

/// Everything one `kiln bench --gguf` or `--generate` run measured.
#[derive(Clone, Debug, serde::Serialize)]
pub struct GenerationReport {
    pub model: String,
    pub params: usize,
    pub device: String,
    /// kiln's version, the CPU, its threads and the GPU.
    pub machine: Machine,
    pub timing: &'static str,
    /// The CPU threads kiln's parallel loops use (`RAYON_NUM_THREADS`, else one per core).
    pub threads: usize,
    /// Set when the numbers must not be read as speed (Emu).
    pub warning: Option<String>,
    pub date_unix: u64,
    /// Seconds to open the file and dequantize the weights onto the device, or to initialise a
    /// GPT's (the first dtype's).
    pub load_s: f64,
    /// How each row's read bandwidth was measured (empty where it is not).
    pub read: String,
    pub rows: Vec<GenerationRow>,
}

/// Checks the options, naming the first that cannot run.
fn check(opts: &GenerationOptions, context: usize) -> Result<()> {
    let bad = |msg: String| Err(Error::invalid("bench generation", msg));
    if opts.prompt_lens.is_empty() || opts.prompt_lens.contains(&0) {
        return bad(format!("prompt lengths must be positive, got {:?}", opts.prompt_lens));
    }
    if opts.new_tokens == 0 || opts.reps == 0 || opts.dtypes.is_empty() {
        return bad("new tokens, repetitions and dtypes must not be zero or empty".into());
    }
    let longest = opts.prompt_lens.iter().max().copied().unwrap_or(0) + opts.new_tokens;
    if longest > context {
        return bad(format!(
            "a prompt of {} and {} new tokens make {longest} positions, more than the model's context of {context}",
            longest - opts.new_tokens,
            opts.new_tokens
        ));
    }
    Ok(())
}

/// The id of the largest of the last position's logits; `logits` is (1, V).
fn greedy_last(logits: &Tensor) -> Result<u32> {
    let last = logits.to_vec::<f32>()?;
    Ok(crate::backend::cpu::sample::first_max_index(&last) as u32)
}

/// One prefill of `prompt` and `new_tokens` greedy steps: (prefill seconds, generation seconds).
fn prefill_and_generate<M: CausalLm>(model: &M, prompt: &[u32], new_tokens: usize) -> Result<(f64, f64)> {
    let dev = *model.device();
    let mut cache = model.new_cache();
    let t0 = Instant::now();
    let ids = Tensor::from_vec(prompt.to_vec(), &[1, prompt.len()], &dev)?;
    let mut next = greedy_last(&model.forward_cached_last(&ids, &mut cache)?)?;
    let prefill = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    for _ in 0..new_tokens {
        let ids = Tensor::from_vec(vec![next], &[1, 1], &dev)?;
        next = greedy_last(&model.forward_cached_last(&ids, &mut cache)?)?;
    }
    Ok((prefill, t1.elapsed().as_secs_f64()))
}

/// The name of a [`LlamaLoad`] in the table and the JSON.
pub fn weights_name(how: LlamaLoad) -> &'static str {
    match how {
        LlamaLoad::AsStored => "stored",
        LlamaLoad::F32 => "f32",
        LlamaLoad::BF16 => "bf16",
    }
}

/// Bytes [`read_bandwidth`] reads: far beyond any CPU's last-level cache.
const READ_BYTES: usize = 256 << 20;

/// Calls of the memory ceiling per bandwidth probe.
const READS_PER_PROBE: usize = 3;

/// The CPU's read bandwidth in GB/s: the best of [`READS_PER_PROBE`] calls of the kernel
/// benchmark's memory ceiling ([`super::roofline::stream`]) reading [`READ_BYTES`] and writing
/// nothing.
fn read_bandwidth() -> Result<f64> {
    // in huge pages, as the weights a decode step reads (frozen or bf16 ones: `Tensor::packed`)
    let mut stream = super::roofline::stream(&Device::Cpu, READ_BYTES as f64, 0.0, 1, super::roofline::Pages::Huge)?;
    let mut best = f64::INFINITY;
    for i in 0..READS_PER_PROBE {
        let t0 = Instant::now();
        (stream.run)(i)?;
        best = best.min(t0.elapsed().as_secs_f64());
    }
    Ok(READ_BYTES as f64 / best / 1e9)
}

/// A model loaded for one dtype, with what the report needs to know of it.
struct Loaded<M> {
    model: M,
    params: usize,
    weight_bytes_per_token: usize,
}

/// The Llama of `gguf` with its weights as `how` says.
fn load_llama(gguf: &Path, device: &Device, how: LlamaLoad) -> Result<Loaded<Llama>> {
    let mut model = Llama::from_gguf_with(gguf, device, how)?;
    // inference only: frozen, so its weights are laid out for decoding
    model.freeze_base();
    Ok(Loaded {
        params: model.num_params(),
        weight_bytes_per_token: model.weight_bytes_per_token(),
        model,
    })
}

/// A GPT of `cfg`'s shape with random weights, cast once to f32 or bf16 as `how` says.
fn load_gpt(cfg: &GptConfig, device: &Device, how: LlamaLoad) -> Result<Loaded<Gpt>> {
    let dtype = match how {
        LlamaLoad::F32 => DType::F32,
        LlamaLoad::BF16 => DType::BF16,
        LlamaLoad::AsStored => {
            return Err(Error::invalid(
                "bench generation",
                "a GPT has no stored (quantized) weights: its dtypes are f32 and bf16",
            ))
        }
    };
    let mut model = Gpt::new(cfg.clone(), &mut Rng::new(1234), device)?.to_dtype(dtype)?;
    // inference only: frozen, so its weights are laid out for decoding
    model.freeze();
    Ok(Loaded {
        params: model.num_params(),
        weight_bytes_per_token: model.weight_bytes_per_token(),
        model,
    })
}

/// The rows of one loaded model: a warm-up, then each prompt length `reps` times, each repetition
/// after a bandwidth probe when `probe` is set.
fn time_model<M: CausalLm>(
    loaded: &Loaded<M>,
    dtype: &str,
    opts: &GenerationOptions,
    probe: bool,
    progress: &mut impl FnMut(&str),
) -> Result<Vec<GenerationRow>> {
    let model = &loaded.model;
    check(opts, model.context_len())?;
    let mut rng = Rng::new(1234);
    let longest = opts.prompt_lens.iter().max().copied().unwrap_or(0);
    let ids: Vec<u32> = (0..longest)
        .map(|_| rng.below(model.vocab_size() as u64) as u32)
        .collect();
    let weight_bytes_per_token = loaded.weight_bytes_per_token;
    progress(&format!("{dtype}: warm-up"));
    prefill_and_generate(model, &ids[..longest.min(16)], 2)?;
    let mut rows = Vec::new();
    for &len in &opts.prompt_lens {
        progress(&format!(
            "{dtype}: prompt of {len} tokens, then {} new, {} times",
            opts.new_tokens, opts.reps
        ));
        let mut probes = Vec::new();
        let mut times = Vec::new();
        // Probes bracket every repetition (one before each, one after the last): this machine's
        // read bandwidth moves within seconds, and one probe can be far from the repetition next
        // to it.
        for _ in 0..opts.reps {
            if probe {
                probes.push(read_bandwidth()?);
            }
            times.push(prefill_and_generate(model, &ids[..len], opts.new_tokens)?);
        }
        if probe {
            probes.push(read_bandwidth()?);
        }
        probes.sort_by(f64::total_cmp);
        let read_gbs = (!probes.is_empty()).then(|| super::timing::median(&probes));
        let ceiling_tokens_per_s = read_gbs.map(|gbs| gbs * 1e9 / weight_bytes_per_token as f64);
        let prefill = Stats::of(&times.iter().map(|t| t.0).collect::<Vec<_>>());
        let generation = Stats::of(&times.iter().map(|t| t.1).collect::<Vec<_>>());
        let generation_tokens_per_s = opts.new_tokens as f64 / generation.median_s;
        rows.push(GenerationRow {
            dtype: dtype.into(),
            batch: 1,
            prompt_tokens: len,
            new_tokens: opts.new_tokens,
            prefill_tokens_per_s: len as f64 / prefill.median_s,
            prefill,
            generation_tokens_per_s,
            generation,
            weight_bytes_per_token,
            read_gbs,
            ceiling_tokens_per_s,
            fraction_of_ceiling: ceiling_tokens_per_s.map(|c| generation_tokens_per_s / c),
        });
    }
    Ok(rows)
}

/// Runs the benchmark; `progress` hears about each measurement as it starts.
pub fn run(opts: &GenerationOptions, mut progress: impl FnMut(&str)) -> Result<GenerationReport> {
    if opts.dtypes.is_empty() {
        return Err(Error::invalid("bench generation", "no weight dtypes to time"));
    }
    let probe = opts.device == Device::Cpu;
    let mut load_s = None;
    let mut rows = Vec::new();
    let mut params = 0;
    let model_name = match &opts.model {
        GenerationModel::Gguf(gguf) => gguf
            .file_name()
            .map_or_else(|| gguf.display().to_string(), |n| n.to_string_lossy().into_owned()),
        GenerationModel::Gpt(which) => format!("{}, random weights", super::gpt::model_config(*which)?.0),
    };
    for &how in &opts.dtypes {
        let name = weights_name(how);
        let t0 = Instant::now();
        match &opts.model {
            GenerationModel::Gguf(gguf) => {
                progress(&format!("loading {} ({name})", gguf.display()));
                let loaded = load_llama(gguf, &opts.device, how)?;
                load_s.get_or_insert(t0.elapsed().as_secs_f64());
                params = loaded.params;
                rows.extend(time_model(&loaded, name, opts, probe, &mut progress)?);
            }
            GenerationModel::Gpt(which) => {
                let (title, cfg) = super::gpt::model_config(*which)?;
                progress(&format!("initialising {title} ({name})"));
                let loaded = load_gpt(&cfg, &opts.device, how)?;
                load_s.get_or_insert(t0.elapsed().as_secs_f64());
                params = loaded.params;
                rows.extend(time_model(&loaded, name, opts, probe, &mut progress)?);
            }
        }
    }
    Ok(GenerationReport {
        model: model_name,
        params,
        device: opts.device.to_string(),
        machine: Machine::this(&opts.device),
        timing: "host clock",
        threads: rayon::current_num_threads(),
        warning: (opts.device == Device::Emu).then(|| {
            "Emu runs the CUDA kernels in a CPU emulator: these timings measure the emulator and say nothing about \
             a GPU's speed"
                .to_string()
        }),
        date_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        load_s: load_s.unwrap_or(0.0),
        read: if probe {
            format!(
                "before each repetition and after the last, the best of {READS_PER_PROBE} parallel sums of a {} MiB f32 buffer on the CPU \
                 (in huge pages where the OS has them, as a bf16 model's weights), {} threads; a row's GB/s is their median",
                READ_BYTES >> 20,
                rayon::current_num_threads()
            )
        } else {
            String::new()
        },
        rows,
    })
}

/// The readable table.
pub fn table(r: &GenerationReport) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "kiln bench generation: {} ({:.1}M parameters) on {}, {} threads, batch 1, greedy; loaded in {:.1} s",
        r.model,
        r.params as f64 / 1e6,
        r.device,
        r.threads,
        r.load_s
    );
    let _ = writeln!(s, "machine: {}", r.machine.line());
    if let Some(w) = &r.warning {
        let _ = writeln!(s, "WARNING: {w}");
    }
    if !r.read.is_empty() {
        let _ = writeln!(s, "read GB/s: {}; ceiling = that / weight MB per token", r.read);
    }
    let _ = writeln!(
        s,
        "{:<6} {:>7} {:>5} {:>11} {:>13} {:>11} {:>10} {:>8} {:>8} {:>13} {:>10} {:>4}",
        "dtype",
        "prompt",
        "new",
        "prefill ms",
        "prompt tok/s",
        "generate ms",
        "new tok/s",
        "MB/token",
        "read GB/s",
        "ceiling tok/s",
        "% ceiling",
        "reps"
    );
    let or_dash = |x: Option<f64>, scale: f64| x.map_or("-".to_string(), |x| format!("{:.1}", x * scale));
    for row in &r.rows {
        let _ = writeln!(
            s,
            "{:<6} {:>7} {:>5} {:>11.1} {:>13.1} {:>11.1} {:>10.2} {:>8.1} {:>8} {:>13} {:>10} {:>4}",
            row.dtype,
            row.prompt_tokens,
            row.new_tokens,
            row.prefill.median_s * 1e3,
            row.prefill_tokens_per_s,
            row.generation.median_s * 1e3,
            row.generation_tokens_per_s,
            row.weight_bytes_per_token as f64 / 1e6,
            or_dash(row.read_gbs, 1.0),
            or_dash(row.ceiling_tokens_per_s, 1.0),
            or_dash(row.fraction_of_ceiling, 100.0),
            row.prefill.reps
        );
    }
    s
}

/// The report as pretty JSON.
pub fn json(r: &GenerationReport) -> String {
    serde_json::to_string_pretty(r).expect("a report serialises")
}

/// The report as a chart, like the kernels' ([`super::report::bar_chart`]): a bar per row, its
/// generation tokens/s as a percentage of the read-bandwidth ceiling (a row without a measured
/// ceiling, on Emu or a GPU, gets its rate and no bar); the prompt rates are in the table and the
/// JSON, against no ceiling.
pub fn svg(r: &GenerationReport) -> String {
    use super::report::{bar_chart, Bar, KILN_COLOR};
    let bars: Vec<Bar> = r
        .rows
        .iter()
        .map(|row| {
            let pct = row.fraction_of_ceiling.map(|f| 100.0 * f);
            let value = match (row.ceiling_tokens_per_s, pct) {
                (Some(ceiling), Some(pct)) => {
                    format!("{:.1} of {ceiling:.1} tokens/s, {pct:.1}%", row.generation_tokens_per_s)
                }
                _ => format!("{:.1} tokens/s, no ceiling", row.generation_tokens_per_s),
            };
            Bar {
                label: format!("{}, prompt {}", row.dtype, row.prompt_tokens),
                pct,
                value,
                color: KILN_COLOR,
            }
        })
        .collect();
    let mut notes = vec![r.machine.line()];
    notes.extend(r.warning.clone());
    notes.push(format!(
        "{} ({:.1}M parameters), {} threads, batch 1, greedy, {} new tokens after each prompt",
        r.model,
        r.params as f64 / 1e6,
        r.threads,
        r.rows.first().map_or(0, |row| row.new_tokens)
    ));
    if !r.read.is_empty() {
        notes.push(format!(
            "ceiling: the weight bytes a token reads at the read bandwidth measured beside it ({})",
            r.read
        ));
    }
    bar_chart(
        &format!("kiln bench generation on {}: tokens/s / ceiling", r.device),
        &notes,
        &[(KILN_COLOR, "kiln's generation tokens/s")],
        &bars,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_that_cannot_run_are_named() {
        let ok = GenerationOptions::gguf("m.gguf", Device::Cpu);
        assert!(check(&ok, 8192).is_ok());
        let e = check(&ok, 600).unwrap_err().to_string();
        assert!(e.contains("640 positions") && e.contains("context of 600"), "{e}");
        let zero = GenerationOptions {
            prompt_lens: vec![128, 0],
            ..ok.clone()
        };
        assert!(check(&zero, 8192).unwrap_err().to_string().contains("[128, 0]"));
    }
}
