//! Checkpoints: everything needed to generate from a model or to continue its training
//! exactly where it stopped.
//!
//! ```text
//! RUN/checkpoint/
//!   model.safetensors      weights (Hugging Face GPT-2 names, Linear weights [out, in])
//!   optimizer.safetensors  AdamW moments ({name}.exp_avg, {name}.exp_avg_sq) and step
//!   config.json            the model's GptConfig
//!   tokenizer.json         the tokenizer (a character vocabulary is listed in full)
//!   state.json             step, generator states, TrainConfig, data fingerprint, checksums
//!                          (written last)
//! ```
//!
//! `state.json` records a checksum (xxh3-64) of `model.safetensors`, of `optimizer.safetensors`
//! and of the run's token cache; [`load`], [`load_optimizer`] and the resumed run's token
//! reader check them, so a flipped bit is an error naming the file, never a silent change.
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
use crate::{Device, Error, Result, Rng, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The folder, inside a run folder, that holds the latest complete checkpoint.
pub const DIR: &str = "checkpoint";
/// Where a new checkpoint is staged before it replaces [`DIR`].
pub const TMP: &str = "checkpoint.tmp";
/// The previous checkpoint, kept while a new one is swapped in.
pub const OLD: &str = "checkpoint.old";
/// The model's weights in the checkpoint folder (safetensors, kiln's names).
pub const MODEL: &str = "model.safetensors";
/// AdamW's moments and step in the checkpoint folder (safetensors).
pub const OPTIMIZER: &str = "optimizer.safetensors";
/// The model's [`crate::model::GptConfig`] in the checkpoint folder (JSON).
pub const CONFIG: &str = "config.json";
/// The tokenizer in the checkpoint folder ([`Tokenizer::to_json`]).
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
    /// The run's settings.
    pub train: TrainConfig,
    /// The text the run trains on.
    pub data: DataInfo,
    /// `scratch`, or where a fine-tuned run's weights came from.
    pub init: String,
    /// Training seconds so far (without evaluation and checkpoint time).
    pub train_seconds: f64,
    /// The training loss of the last step, if any step ran.
    pub last_train_loss: Option<f64>,
    /// The validation loss of the last evaluation, if any ran.
    pub last_val_loss: Option<f64>,
    /// The kiln version that wrote the checkpoint (`CARGO_PKG_VERSION`).
    pub kiln_version: String,
    /// Checksums of the run's data, `{file name: "xxh3:HEX"}`: of the bytes of
    /// [`MODEL`] and [`OPTIMIZER`] (set by [`save`]), and of the token cache's key and ids
    /// ([`crate::data::cache_checksum`]). Empty in checkpoints written before kiln kept them,
    /// which load unchecked.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub checksums: BTreeMap<String, String>,
}

/// A checksum as `state.json` records it.
pub fn checksum_text(hash: u64) -> String {
    format!("xxh3:{hash:016x}")
}

/// The checksum of a file's bytes as `state.json` records it.
pub fn checksum(bytes: &[u8]) -> String {
    checksum_text(xxhash_rust::xxh3::xxh3_64(bytes))
}

/// Checks `actual` (see [`checksum_text`]) against the checksum `state` records for the file
/// `path` (none recorded: an older checkpoint, accepted).
pub fn verify(state: &TrainState, path: &Path, actual: &str) -> Result<()> {
    verify_against(&state.checksums, path, actual)
}

/// [`verify`] against a map of recorded checksums (`{file name: "xxh3:HEX"}`), for any
/// checkpoint that keeps one (the LoRA runs' too).
pub fn verify_against(checksums: &BTreeMap<String, String>, path: &Path, actual: &str) -> Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    match checksums.get(&name) {
        Some(want) if want != actual => Err(Error::Invalid {
            op: "checkpoint",
            msg: format!(
                "{} is damaged: its checksum is {actual}, but {STATE} recorded {want} when it was written; \
                 restore it from a copy of the run folder",
                path.display()
            ),
        }),
        _ => Ok(()),
    }
}

fn json_err(what: &Path, e: serde_json::Error) -> Error {
    Error::Invalid {
        op: "checkpoint",
        msg: format!("{} is not valid: {e}", what.display()),
    }
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let bytes = read_file(path)?;
    serde_json::from_slice(&bytes).map_err(|e| json_err(path, e))
}

fn read_file(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::io(format!("reading {}", path.display()), e))
}

/// Parses the bytes of a `state.json` (`path` names it in errors): JSON of a [`TrainState`]
/// whose training settings pass [`TrainConfig::validate`]. Never panics, whatever the bytes.
pub fn parse_state(bytes: &[u8], path: &Path) -> Result<TrainState> {
    let state: TrainState = serde_json::from_slice(bytes).map_err(|e| json_err(path, e))?;
    state.train.validate().map_err(|e| Error::Invalid {
        op: "checkpoint",
        msg: format!("{} holds settings kiln refuses: {e}", path.display()),
    })?;
    Ok(state)
}

fn to_json<T: Serialize>(v: &T) -> Vec<u8> {
    let mut s = serde_json::to_string_pretty(v).expect("checkpoint metadata serialises");
    s.push('\n');
    s.into_bytes()
}

/// Writes a checkpoint of `model`, `opt`, `tokenizer` and `state` under `run_dir`, atomically
/// (see the module docs). Returns the checkpoint folder.
pub fn save(run_dir: &Path, model: &Gpt, opt: &AdamW, tokenizer: &Tokenizer, state: &TrainState) -> Result<PathBuf> {
    save_with_optimizer_state(run_dir, model, &opt.state()?, tokenizer, state)
}

/// [`save`] with the optimizer state given as [`AdamW::state`]'s named tensors: what a
/// ZeRO-sharded optimizer gathers from the ranks, so that its checkpoint is that of one AdamW.
pub fn save_with_optimizer_state(
    run_dir: &Path,
    model: &Gpt,
    opt_state: &[(String, Tensor)],
    tokenizer: &Tokenizer,
    state: &TrainState,
) -> Result<PathBuf> {
    let tmp = run_dir.join(TMP);
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(format!("removing the stale {}", tmp.display()), e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| Error::io(format!("creating {}", tmp.display()), e))?;
    let model_bytes = model.safetensors_bytes()?;
    let opt_bytes = model_io::serialize_tensors(opt_state, None)?;
    let mut state = state.clone();
    state.checksums.insert(MODEL.into(), checksum(&model_bytes));
    state.checksums.insert(OPTIMIZER.into(), checksum(&opt_bytes));
    model_io::write_atomic(&tmp.join(MODEL), &model_bytes)?;
    model_io::write_atomic(&tmp.join(OPTIMIZER), &opt_bytes)?;
    model_io::write_atomic(&tmp.join(CONFIG), &to_json(model.config()))?;
    model_io::write_atomic(&tmp.join(TOKENIZER), tokenizer.to_json().as_bytes())?;
    model_io::write_atomic(&tmp.join(STATE), &to_json(&state))?;
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
    /// The checkpoint folder it was read from.
    pub dir: PathBuf,
    /// The model, on the device asked for.
    pub model: Gpt,
    /// The tokenizer the model was trained with.
    pub tokenizer: Tokenizer,
    /// The training progress, to resume from.
    pub state: TrainState,
}

/// Reads the model configuration, tokenizer and training state of the checkpoint at `dir`.
pub fn read_meta(dir: &Path) -> Result<(GptConfig, Tokenizer, TrainState)> {
    let in_file = |path: &Path, e: Error| Error::Invalid {
        op: "checkpoint",
        msg: format!("{}: {e}", path.display()),
    };
    let cfg_path = dir.join(CONFIG);
    let cfg: GptConfig = read_json(&cfg_path)?;
    cfg.validate().map_err(|e| in_file(&cfg_path, e))?;
    let tok_path = dir.join(TOKENIZER);
    let tok_text =
        std::fs::read_to_string(&tok_path).map_err(|e| Error::io(format!("reading {}", tok_path.display()), e))?;
    let tokenizer = Tokenizer::from_json(&tok_text).map_err(|e| in_file(&tok_path, e))?;
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
    let state_path = dir.join(STATE);
    let state = parse_state(&read_file(&state_path)?, &state_path)?;
    check_batch(&state.train, &cfg, &state_path)?;
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
///
/// Readers take no lock, so a training run may swap in a new checkpoint while this reads: a
/// read that fails (a file gone, or files of two checkpoints, which their checksums tell)
/// while the checkpoint it finds changed under it is tried again. The checkpoint is its folder
/// and its `state.json`: between the swap's two renames `checkpoint/` is gone and [`find`] gives
/// `checkpoint.old/`, whose state is still the one read before, so the state alone would call a
/// read that lost its folder a lasting failure.
pub fn load(path: &Path, dev: &Device) -> Result<Loaded> {
    let state_now = || {
        find(path)
            .ok()
            .and_then(|d| std::fs::read(d.join(STATE)).ok().map(|s| (d, s)))
    };
    let mut tries = 0;
    loop {
        let before = state_now();
        match load_once(path, dev) {
            Ok(loaded) => return Ok(loaded),
            Err(e) => {
                tries += 1;
                if tries >= 5 || state_now() == before {
                    return Err(e);
                }
            }
        }
    }
}

fn load_once(path: &Path, dev: &Device) -> Result<Loaded> {
    let dir = find(path)?;
    let (cfg, tokenizer, state) = read_meta(&dir)?;
    let weights = dir.join(MODEL);
    model_io::check_config_matches(&cfg, &model_io::read_shapes(&weights)?, &weights.display().to_string())?;
    // The initial values are overwritten; a fixed seed keeps this cheap and deterministic.
    let mut model = Gpt::new(cfg, &mut Rng::new(0), dev)?;
    let path = dir.join(MODEL);
    let bytes = read_file(&path)?;
    verify(&state, &path, &checksum(&bytes))?;
    model.load_safetensors_bytes(&bytes, &path.display().to_string())?;
    Ok(Loaded {
        dir,
        model,
        tokenizer,
        state,
    })
}

/// Restores the optimizer state saved next to the model, checked against `state`: its
/// checksum, and its step count (one optimizer step per training step).
pub fn load_optimizer(dir: &Path, state: &TrainState, opt: &mut AdamW, dev: &Device) -> Result<()> {
    load_optimizer_checked(dir, &state.checksums, state.step, opt, dev)
}

/// [`load_optimizer`] for any checkpoint: [`OPTIMIZER`] in `dir`, checked against the recorded
/// `checksums` and the checkpoint's `step`.
pub fn load_optimizer_checked(
    dir: &Path,
    checksums: &BTreeMap<String, String>,
    step: usize,
    opt: &mut AdamW,
    dev: &Device,
) -> Result<()> {
    let path = dir.join(OPTIMIZER);
    let bytes = read_file(&path)?;
    verify_against(checksums, &path, &checksum(&bytes))?;
    let (tensors, _) = model_io::parse_tensors(&bytes, &path.display().to_string(), dev)?;
    opt.load_state(&tensors).map_err(|e| Error::Invalid {
        op: "checkpoint",
        msg: format!("{}: {e}", path.display()),
    })?;
    if opt.step_count() != step as u64 {
        return Err(Error::Invalid {
            op: "checkpoint",
            msg: format!(
                "{} has taken {} steps, but {STATE} is at step {step}: the files belong to different checkpoints",
                path.display(),
                opt.step_count(),
            ),
        });
    }
    Ok(())
}
