//! Checkpoints: everything needed to generate from a model or to continue its training
//! exactly where it stopped.
//!
//! ```text
//! RUN/checkpoint/
//!   model.safetensors      weights (Hugging Face GPT-2 names, Linear weights [out, in])
//!   optimizer.safetensors  AdamW moments ({name}.exp_avg, {name}.exp_avg_sq) and step
//!   config.json            the model's GptConfig
//!   tokenizer.json         the tokenizer (a character vocabulary is listed in full)
//!   state.json             step, generator states, TrainConfig, data fingerprint (written last)
//! ```
//!
//! A new checkpoint is written into `checkpoint.tmp/` (every file flushed to disk), then
//! swapped in: `checkpoint/ → checkpoint.old/`, `checkpoint.tmp/ → checkpoint/`, and only
//! then is `checkpoint.old/` deleted. A crash at any point leaves one complete checkpoint,
//! which [`find`] picks up.

use super::atomic;
use super::config::TrainConfig;
use crate::model::{io as model_io, Gpt, GptConfig};
use crate::optim::AdamW;
use crate::tokenizer::Tokenizer;
use crate::{Device, Error, Result, Rng};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub const DIR: &str = "checkpoint";
const TMP: &str = "checkpoint.tmp";
const OLD: &str = "checkpoint.old";
pub const MODEL: &str = "model.safetensors";
pub const OPTIMIZER: &str = "optimizer.safetensors";
pub const CONFIG: &str = "config.json";
pub const TOKENIZER: &str = "tokenizer.json";
/// Written last: its presence marks a complete checkpoint.
pub const STATE: &str = "state.json";

/// Which text a run trains on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DataInfo {
    /// File paths as given, or `<embedded>`.
    pub sources: Vec<String>,
    /// Fingerprint of the concatenated text (see [`crate::data::Corpus::fingerprint`]).
    pub corpus_hash: u64,
    /// Tokens in the corpus (train + val).
    pub tokens: usize,
    /// Fingerprint of the window plan file (`TrainConfig::windows`), when the run has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub windows_hash: Option<u64>,
}

/// The training progress stored in `state.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Optimizer steps completed.
    pub step: usize,
    /// State of the generator that draws the training batches.
    pub data_rng: [u64; 4],
    /// State of the generator that draws dropout masks.
    pub dropout_rng: [u64; 4],
    pub train: TrainConfig,
    pub data: DataInfo,
    /// `scratch`, or where a fine-tuned run's weights came from.
    pub init: String,
    /// Training seconds so far (without evaluation and checkpoint time).
    pub train_seconds: f64,
    pub last_train_loss: Option<f64>,
    pub last_val_loss: Option<f64>,
    pub kiln_version: String,
}

fn json_err(what: &Path, e: serde_json::Error) -> Error {
    Error::Invalid {
        op: "checkpoint",
        msg: format!("{} is not valid: {e}", what.display()),
    }
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    serde_json::from_str(&text).map_err(|e| json_err(path, e))
}

fn to_json<T: Serialize>(v: &T) -> Vec<u8> {
    let mut s = serde_json::to_string_pretty(v).expect("checkpoint metadata serialises");
    s.push('\n');
    s.into_bytes()
}

/// Writes a checkpoint of `model`, `opt`, `tokenizer` and `state` under `run_dir`, atomically
/// (see the module docs). Returns the checkpoint folder.
pub fn save(run_dir: &Path, model: &Gpt, opt: &AdamW, tokenizer: &Tokenizer, state: &TrainState) -> Result<PathBuf> {
    let tmp = run_dir.join(TMP);
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(format!("removing the stale {}", tmp.display()), e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| Error::io(format!("creating {}", tmp.display()), e))?;
    model.save_safetensors(&tmp.join(MODEL))?;
    model_io::save_tensors(&tmp.join(OPTIMIZER), &opt.state()?, None)?;
    model_io::write_atomic(&tmp.join(CONFIG), &to_json(model.config()))?;
    model_io::write_atomic(&tmp.join(TOKENIZER), tokenizer.to_json().as_bytes())?;
    model_io::write_atomic(&tmp.join(STATE), &to_json(state))?;
    let target = run_dir.join(DIR);
    atomic::swap_dir(&tmp, &target, &run_dir.join(OLD))?;
    Ok(target)
}

/// The complete checkpoint folder at `path`: `path` itself if it is one, else
/// `path/checkpoint`, else `path/checkpoint.old` (left by a crash mid-swap).
pub fn find(path: &Path) -> Result<PathBuf> {
    let (direct, main, old) = (path.to_path_buf(), path.join(DIR), path.join(OLD));
    if let Some(p) = atomic::pick_complete(&[&direct, &main, &old], STATE) {
        return Ok(p.to_path_buf());
    }
    let why = if !path.exists() {
        "it does not exist".to_string()
    } else if main.exists() {
        format!("{} has no {STATE}: the checkpoint is incomplete", main.display())
    } else {
        format!("it holds no {DIR}/ folder and no {STATE}")
    };
    Err(Error::Invalid {
        op: "checkpoint",
        msg: format!("no checkpoint at {}: {why}", path.display()),
    })
}

/// A loaded checkpoint.
pub struct Loaded {
    pub dir: PathBuf,
    pub model: Gpt,
    pub tokenizer: Tokenizer,
    pub state: TrainState,
}

/// Reads the model configuration, tokenizer and training state of the checkpoint at `dir`.
pub fn read_meta(dir: &Path) -> Result<(GptConfig, Tokenizer, TrainState)> {
    let cfg: GptConfig = read_json(&dir.join(CONFIG))?;
    cfg.validate()?;
    let tok_path = dir.join(TOKENIZER);
    let tok_text =
        std::fs::read_to_string(&tok_path).map_err(|e| Error::io(format!("reading {}", tok_path.display()), e))?;
    let tokenizer = Tokenizer::from_json(&tok_text)?;
    if tokenizer.vocab_size() > cfg.vocab_size {
        return Err(Error::Invalid {
            op: "checkpoint",
            msg: format!(
                "{}: the tokenizer has {} ids but the model only {} (vocab_size)",
                dir.display(),
                tokenizer.vocab_size(),
                cfg.vocab_size
            ),
        });
    }
    let state: TrainState = read_json(&dir.join(STATE))?;
    check_batch(&state.train, &cfg, &dir.join(STATE))?;
    Ok((cfg, tokenizer, state))
}

/// The most tokens in one micro-batch a saved run may ask for (2^31: 8 GiB of u32 ids alone);
/// a larger one is a corrupt or edited state.json.
const MAX_BATCH_TOKENS: usize = 1 << 31;

/// Checks that a saved run's micro-batch is of a sane size, before anything is sized by it.
fn check_batch(train: &TrainConfig, cfg: &GptConfig, path: &Path) -> Result<()> {
    let bad = |msg: String| Error::Invalid {
        op: "checkpoint",
        msg: format!("{}: {msg}", path.display()),
    };
    let tokens = train.batch_size.checked_mul(cfg.block_size);
    if train.batch_size == 0 || tokens.is_none_or(|t| t > MAX_BATCH_TOKENS) {
        return Err(bad(format!(
            "batch_size {} x block_size {} is not between 1 and {MAX_BATCH_TOKENS} tokens per micro-batch; the file is corrupt",
            train.batch_size, cfg.block_size
        )));
    }
    Ok(())
}

/// Loads the model of the checkpoint at `path` (a run folder or a checkpoint folder) onto `dev`.
pub fn load(path: &Path, dev: &Device) -> Result<Loaded> {
    let dir = find(path)?;
    let (cfg, tokenizer, state) = read_meta(&dir)?;
    let weights = dir.join(MODEL);
    model_io::check_config_matches(&cfg, &model_io::read_shapes(&weights)?, &weights.display().to_string())?;
    // The initial values are overwritten; a fixed seed keeps this cheap and deterministic.
    let mut model = Gpt::new(cfg, &mut Rng::new(0), dev)?;
    model.load_safetensors(&dir.join(MODEL))?;
    Ok(Loaded {
        dir,
        model,
        tokenizer,
        state,
    })
}

/// Restores the optimizer state saved next to the model.
pub fn load_optimizer(dir: &Path, opt: &mut AdamW, dev: &Device) -> Result<()> {
    let (tensors, _) = model_io::load_tensors(&dir.join(OPTIMIZER), dev)?;
    opt.load_state(&tensors)
}
