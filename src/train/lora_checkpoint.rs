//! Checkpoints of a LoRA run (`kiln finetune --gguf`, [`super::lora_finetune`]): what
//! `kiln finetune --resume` needs to continue the run exactly where it stopped.
//!
//! ```text
//! RUN/checkpoint/
//!   adapter_config.json, adapter_model.safetensors   the adapter (a PEFT folder, as RUN/adapter/)
//!   optimizer.safetensors  AdamW moments ({PEFT name}.exp_avg, {PEFT name}.exp_avg_sq) and step
//!   state.json             step, the batch generator's state, TrainConfig, the run's GGUF file,
//!                          data and window size with their checksums, checksums of the files
//!                          above (written last)
//! ```
//!
//! Written as the GPT trainer's checkpoints are ([`super::checkpoint`], whose names, checksums and
//! folder swap it shares): staged in `checkpoint.tmp/`, then swapped in, so a crash leaves one
//! complete checkpoint. The dropout masks of step s are drawn from a generator seeded by the
//! run's seed and s ([`dropout_seed`]), so they need no saved state.

use super::atomic;
use super::checkpoint::{self, checksum, checksum_text, DIR, OLD, OPTIMIZER, STATE, TMP};
use super::config::TrainConfig;
use crate::model::{io as model_io, Llama, LlamaLoad};
use crate::optim::AdamW;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

/// One packed training window: ids and targets of one length ([`super::lora::pack_windows`]).
pub type Window = (Vec<u32>, Vec<u32>);

/// What fixes a LoRA run's computation besides its [`TrainConfig`] and adapter shape: the model
/// file, the data and how it was cut. A resumed run must find the same.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LoraRun {
    /// The GGUF model file (its absolute path when it can be found).
    pub gguf: String,
    /// Its checksum ([`file_checksum`]).
    pub gguf_checksum: String,
    /// The data files (absolute paths when they can be found).
    pub sources: Vec<String>,
    /// Tokens per window.
    pub block_size: usize,
    /// The number of windows (training and validation).
    pub windows: usize,
    /// The checksum of every window's ids and targets ([`windows_checksum`]): the data, the
    /// tokenizer, the chat template and the packing together.
    pub windows_checksum: String,
    /// Gradient checkpointing (changes no number, kept so a resumed run does the same).
    pub recompute: bool,
    /// What the base model's weights were loaded as (`--base-dtype`); runs from before the flag
    /// were f32.
    #[serde(default)]
    pub base: LlamaLoad,
}

impl LoraRun {
    /// The description of a run on the GGUF file `gguf` and the `windows` cut from `sources`.
    pub fn new(
        gguf: &Path,
        sources: &[PathBuf],
        windows: &[Window],
        recompute: bool,
        base: LlamaLoad,
    ) -> Result<LoraRun> {
        let absolute = |p: &Path| {
            std::fs::canonicalize(p)
                .unwrap_or_else(|_| p.to_path_buf())
                .display()
                .to_string()
        };
        Ok(LoraRun {
            gguf: absolute(gguf),
            gguf_checksum: file_checksum(gguf)?,
            sources: sources.iter().map(|p| absolute(p)).collect(),
            block_size: windows.first().map_or(0, |w| w.0.len()),
            windows: windows.len(),
            windows_checksum: windows_checksum(windows),
            recompute,
            base,
        })
    }
}

/// The progress of a LoRA run, stored in `state.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LoraState {
    /// Optimizer steps completed.
    pub step: usize,
    /// The state of the generator that draws the training batches.
    pub data_rng: [u64; 4],
    /// The optimizer and schedule settings the run was started with.
    pub train: TrainConfig,
    /// The model, adapter and data the run was started with.
    pub run: LoraRun,
    /// Training seconds so far (without evaluation and checkpoint time).
    pub train_seconds: f64,
    /// The kiln version that wrote the checkpoint.
    pub kiln_version: String,
    /// Checksums of the adapter's weights and of the optimizer file, `{file name: "xxh3:HEX"}`.
    pub checksums: BTreeMap<String, String>,
}

/// The seed of the adapters' dropout masks at step `step` (1-based) of a run seeded with `seed`.
pub fn dropout_seed(seed: u64, step: usize) -> u64 {
    (seed ^ 0xD80_0F00).wrapping_add((step as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

/// The checksum of a file's bytes, read in pieces (a model file is large).
pub fn file_checksum(path: &Path) -> Result<String> {
    let io = |e| Error::io(format!("reading {}", path.display()), e);
    let mut file = std::fs::File::open(path).map_err(io)?;
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(checksum_text(hasher.digest()))
}

/// The checksum of the windows' ids and targets, in order (little-endian u32s).
pub fn windows_checksum(windows: &[Window]) -> String {
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    for (ids, targets) in windows {
        for &x in ids.iter().chain(targets) {
            hasher.update(&x.to_le_bytes());
        }
    }
    checksum_text(hasher.digest())
}

/// Writes a checkpoint of `model`'s adapters, `opt` and `state` under `run_dir`, atomically
/// (see the module docs). Returns the checkpoint folder.
pub fn save(run_dir: &Path, model: &Llama, opt: &AdamW, state: &LoraState) -> Result<PathBuf> {
    let tmp = run_dir.join(TMP);
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(format!("removing the stale {}", tmp.display()), e))?;
    }
    model.save_adapter(&tmp)?;
    let adapter_path = tmp.join(crate::model::ADAPTER_WEIGHTS);
    let adapter_bytes =
        std::fs::read(&adapter_path).map_err(|e| Error::io(format!("reading {}", adapter_path.display()), e))?;
    let opt_bytes = model_io::serialize_tensors(&opt.state()?, None)?;
    let mut state = state.clone();
    state
        .checksums
        .insert(crate::model::ADAPTER_WEIGHTS.into(), checksum(&adapter_bytes));
    state.checksums.insert(OPTIMIZER.into(), checksum(&opt_bytes));
    model_io::write_atomic(&tmp.join(OPTIMIZER), &opt_bytes)?;
    let mut json = serde_json::to_string_pretty(&state).expect("a LoraState serializes");
    json.push('\n');
    model_io::write_atomic(&tmp.join(STATE), json.as_bytes())?;
    let target = run_dir.join(DIR);
    atomic::swap_dir(&tmp, &target, &run_dir.join(OLD))?;
    Ok(target)
}

/// The complete checkpoint of the LoRA run in `run_dir` ([`checkpoint::find`]) and its state.
pub fn read_state(run_dir: &Path) -> Result<(PathBuf, LoraState)> {
    let dir = checkpoint::find(run_dir)?;
    let path = dir.join(STATE);
    let bytes = std::fs::read(&path).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    let state: LoraState = serde_json::from_slice(&bytes).map_err(|e| {
        Error::invalid(
            "checkpoint",
            format!(
                "{} is not the state of a LoRA run (kiln finetune --gguf): {e}; a GPT run resumes with kiln train --resume",
                path.display()
            ),
        )
    })?;
    state.train.validate().map_err(|e| {
        Error::invalid(
            "checkpoint",
            format!("{} holds settings kiln refuses: {e}", path.display()),
        )
    })?;
    Ok((dir, state))
}

/// Loads the checkpoint's adapter into `model` (whose base is the run's GGUF model), checking
/// its weights against the checksum `state` recorded.
pub fn load_adapter(dir: &Path, state: &LoraState, model: &mut Llama) -> Result<()> {
    let path = dir.join(crate::model::ADAPTER_WEIGHTS);
    let bytes = std::fs::read(&path).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    checkpoint::verify_against(&state.checksums, &path, &checksum(&bytes))?;
    model.load_adapter(dir)
}

/// Restores the optimizer state of the checkpoint in `dir` into `opt`, made over
/// `model.lora_params()` after [`load_adapter`] (see [`checkpoint::load_optimizer_checked`]).
pub fn load_optimizer(dir: &Path, state: &LoraState, opt: &mut AdamW, model: &Llama) -> Result<()> {
    checkpoint::load_optimizer_checked(dir, &state.checksums, state.step, opt, model.device())
}
