//! Training data: text files → token ids (cached next to the run) → a train/val split →
//! random `[B, T]` windows.
//!
//! ```
//! use kiln::data::{Corpus, Dataset, Split};
//! use kiln::tokenizer::Tokenizer;
//! use kiln::{Device, Rng};
//! let corpus = Corpus::from_text("example", "abcdefghij".repeat(20));
//! let tok = Tokenizer::char_from_text(&corpus.text);
//! let data = Dataset::new(tok.encode(&corpus.text)?, 0.1)?;
//! let mut rng = Rng::new(1);
//! let (x, y) = data.batch(Split::Train, 4, 8, &mut rng, &Device::Cpu)?;
//! assert_eq!(x.shape(), &[4, 8]);
//! // targets are the inputs shifted left by one
//! assert_eq!(x.to_vec::<u32>()?[1..8], y.to_vec::<u32>()?[..7]);
//! # Ok::<(), kiln::Error>(())
//! ```

pub mod embedded;

use crate::tokenizer::{fnv1a64, Tokenizer};
use crate::{Device, Error, Result, Rng, Tensor};
use std::path::{Path, PathBuf};

fn data_err(msg: impl Into<String>) -> Error {
    Error::Invalid {
        op: "data",
        msg: msg.into(),
    }
}

/// The text a run trains on, with where it came from.
#[derive(Clone, Debug)]
pub struct Corpus {
    /// Every source concatenated (a newline added between files that lack one).
    pub text: String,
    /// What the text came from: file paths, or `<embedded>`.
    pub sources: Vec<String>,
}

/// The name recorded for the embedded corpus.
pub const EMBEDDED: &str = "<embedded>";

impl Corpus {
    /// A corpus from an in-memory string (`name` is for messages).
    pub fn from_text(name: &str, text: impl Into<String>) -> Corpus {
        Corpus {
            text: text.into(),
            sources: vec![name.to_string()],
        }
    }

    /// kiln's own docs and sources, compiled into the binary.
    pub fn embedded() -> Corpus {
        Corpus {
            text: embedded::text(),
            sources: vec![EMBEDDED.to_string()],
        }
    }

    /// Reads and concatenates UTF-8 text files. A missing, unreadable, empty or non-UTF-8
    /// file is an error naming it; with no paths at all, the embedded corpus is used.
    pub fn from_files(paths: &[PathBuf]) -> Result<Corpus> {
        if paths.is_empty() {
            return Ok(Corpus::embedded());
        }
        let mut text = String::new();
        for path in paths {
            let bytes = std::fs::read(path).map_err(|e| {
                let hint = match e.kind() {
                    std::io::ErrorKind::NotFound => " (no such file)",
                    std::io::ErrorKind::PermissionDenied => " (permission denied)",
                    _ => "",
                };
                Error::Io {
                    context: format!("cannot read data file {}{hint}", path.display()),
                    source: e,
                }
            })?;
            if bytes.is_empty() {
                return Err(data_err(format!(
                    "data file {} is empty; give a file with some text in it",
                    path.display()
                )));
            }
            let s = String::from_utf8(bytes).map_err(|e| {
                data_err(format!(
                    "data file {} is not UTF-8 text (invalid byte at offset {})",
                    path.display(),
                    e.utf8_error().valid_up_to()
                ))
            })?;
            if !text.is_empty() && !text.ends_with('\n') {
                text.push('\n');
            }
            text.push_str(&s);
        }
        Ok(Corpus {
            text,
            sources: paths.iter().map(|p| p.display().to_string()).collect(),
        })
    }

    /// A 64-bit fingerprint of the text, for the token cache.
    pub fn fingerprint(&self) -> u64 {
        fnv1a64(self.text.as_bytes())
    }
}

const CACHE_MAGIC: &[u8; 8] = b"KILNTOK2";
/// Magic, corpus and tokenizer fingerprints, id count, checksum.
const CACHE_HEADER: usize = 8 + 4 * 8;

/// The header of a token cache file: which text and which tokenizer produced it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheKey {
    /// [`Corpus::fingerprint`] of the text that was tokenized.
    pub corpus: u64,
    /// [`Tokenizer::fingerprint`] of the tokenizer that produced the ids.
    pub tokenizer: u64,
}

/// The checksum a token cache stores in its header (and a checkpoint in its `state.json`):
/// xxh3-64 of the key, the id count and the ids, all little-endian.
pub fn cache_checksum(key: CacheKey, ids: &[u32]) -> u64 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(&key.corpus.to_le_bytes());
    h.update(&key.tokenizer.to_le_bytes());
    h.update(&(ids.len() as u64).to_le_bytes());
    for chunk in ids.chunks(4096) {
        let bytes: Vec<u8> = chunk.iter().flat_map(|id| id.to_le_bytes()).collect();
        h.update(&bytes);
    }
    h.digest()
}

/// The bytes of a token cache file:
///
/// ```text
/// "KILNTOK2"  corpus fingerprint u64  tokenizer fingerprint u64  count u64  checksum u64  ids u32 × count
/// ```
///
/// all little-endian; the checksum is [`cache_checksum`].
pub fn token_cache_bytes(key: CacheKey, ids: &[u32]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(CACHE_HEADER + 4 * ids.len());
    bytes.extend_from_slice(CACHE_MAGIC);
    bytes.extend_from_slice(&key.corpus.to_le_bytes());
    bytes.extend_from_slice(&key.tokenizer.to_le_bytes());
    bytes.extend_from_slice(&(ids.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&cache_checksum(key, ids).to_le_bytes());
    for id in ids {
        bytes.extend_from_slice(&id.to_le_bytes());
    }
    bytes
}

/// Parses the bytes of a token cache file (`source` names it in errors): its key and ids.
/// Anything but a complete, intact file whose ids are all below `vocab` is an error saying
/// what is wrong: another format, a size that disagrees with the count, a checksum that does
/// not match (a flipped bit), an id outside the vocabulary.
pub fn parse_token_cache(bytes: &[u8], source: &str, vocab: usize) -> Result<(CacheKey, Vec<u32>)> {
    let damaged = |why: String| data_err(format!("token cache {source} is damaged: {why}"));
    if bytes.len() < CACHE_HEADER || &bytes[..8] != CACHE_MAGIC {
        return Err(damaged(format!(
            "it does not start with a {CACHE_HEADER}-byte {} header",
            String::from_utf8_lossy(CACHE_MAGIC)
        )));
    }
    let word = |i: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&bytes[8 + 8 * i..16 + 8 * i]);
        u64::from_le_bytes(w)
    };
    let key = CacheKey {
        corpus: word(0),
        tokenizer: word(1),
    };
    let (count, stored) = (word(2), word(3));
    let body = &bytes[CACHE_HEADER..];
    if !body.len().is_multiple_of(4) || body.len() as u64 / 4 != count {
        return Err(damaged(format!(
            "its header counts {count} ids, but {} bytes of ids follow (truncated?)",
            body.len()
        )));
    }
    let ids: Vec<u32> = body
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let computed = cache_checksum(key, &ids);
    if computed != stored {
        return Err(damaged(format!(
            "its checksum is {computed:016x}, the header records {stored:016x}"
        )));
    }
    if let Some((i, &id)) = ids.iter().enumerate().find(|&(_, &id)| id as usize >= vocab) {
        return Err(damaged(format!(
            "token {i} is id {id}, outside the vocabulary of {vocab} ids"
        )));
    }
    Ok((key, ids))
}

/// Reads a token cache: `Ok(None)` if the file is absent or was made from other text or
/// another tokenizer (`want`; `None` accepts any key), an error naming the file if it is
/// damaged (see [`parse_token_cache`]).
pub fn read_token_cache(path: &Path, want: Option<CacheKey>, vocab: usize) -> Result<Option<(CacheKey, Vec<u32>)>> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(format!("reading token cache {}", path.display()), e)),
    };
    let (key, ids) = parse_token_cache(&bytes, &path.display().to_string(), vocab)?;
    Ok(want.is_none_or(|w| w == key).then_some((key, ids)))
}

/// Writes a token cache atomically.
pub fn write_token_cache(path: &Path, key: CacheKey, ids: &[u32]) -> Result<()> {
    crate::model::io::write_atomic(path, &token_cache_bytes(key, ids))
}

/// Token ids of `corpus` under `tok`, read from the cache file `cache` when it was made
/// from the same text and tokenizer, else computed and written there (`cache = None`: no
/// caching; a damaged cache is recomputed from the text and rewritten). Returns the ids and
/// whether the cache was used.
pub fn tokenize_cached(corpus: &Corpus, tok: &Tokenizer, cache: Option<&Path>) -> Result<(Vec<u32>, bool)> {
    let key = CacheKey {
        corpus: corpus.fingerprint(),
        tokenizer: tok.fingerprint(),
    };
    if let Some(path) = cache {
        if let Ok(Some((_, ids))) = read_token_cache(path, Some(key), tok.vocab_size()) {
            return Ok((ids, true));
        }
    }
    let ids = tok.encode(&corpus.text).map_err(|e| match e {
        Error::Invalid { msg, .. } => data_err(format!("cannot tokenize {}: {msg}", corpus.sources.join(", "))),
        other => other,
    })?;
    if ids.is_empty() {
        return Err(data_err(format!("{} produced no tokens", corpus.sources.join(", "))));
    }
    if let Some(path) = cache {
        write_token_cache(path, key, &ids)?;
    }
    Ok((ids, false))
}

/// Which part of the data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    /// The first part of the ids, that the model trains on.
    Train,
    /// The rest, held out to measure the validation loss.
    Val,
}

impl Split {
    fn name(self) -> &'static str {
        match self {
            Split::Train => "training",
            Split::Val => "validation",
        }
    }
}

/// Token ids split by position: the first part trains, the rest validates (nanoGPT's 90/10).
#[derive(Clone, Debug)]
pub struct Dataset {
    /// The training ids: the first ⌊n·(1 − val_fraction)⌋ of the corpus.
    pub train: Vec<u32>,
    /// The validation ids: the rest.
    pub val: Vec<u32>,
}

impl Dataset {
    /// Splits `ids` as nanoGPT does: the first ⌊n·(1 − val_fraction)⌋ tokens train, the rest
    /// validate.
    pub fn new(mut ids: Vec<u32>, val_fraction: f64) -> Result<Dataset> {
        if !(0.0..1.0).contains(&val_fraction) {
            return Err(data_err(format!(
                "the validation fraction must be in [0, 1), got {val_fraction}"
            )));
        }
        let n_train = (ids.len() as f64 * (1.0 - val_fraction)) as usize;
        let val = ids.split_off(n_train);
        Ok(Dataset { train: ids, val })
    }

    /// The ids of `split`.
    pub fn split(&self, split: Split) -> &[u32] {
        match split {
            Split::Train => &self.train,
            Split::Val => &self.val,
        }
    }

    /// Checks that both splits hold at least one window of `block` inputs plus its target.
    pub fn check_block(&self, block: usize) -> Result<()> {
        for split in [Split::Train, Split::Val] {
            self.window_starts_below(split, block)?;
        }
        Ok(())
    }

    /// The bound on window starts in `split`: a window of `block` inputs starting at `i`
    /// needs the tokens up to `i + block` (its last target).
    fn window_starts_below(&self, split: Split, block: usize) -> Result<usize> {
        let len = self.split(split).len();
        if len <= block {
            return Err(data_err(format!(
                "the {} split has {len} tokens, but one window of context {block} needs {}; \
                 give more text or a smaller --block-size",
                split.name(),
                block + 1
            )));
        }
        Ok(len - block)
    }

    fn check_starts(&self, split: Split, starts: &[usize], block: usize) -> Result<()> {
        let below = self.window_starts_below(split, block)?;
        match starts.iter().find(|&&i| i >= below) {
            Some(bad) => Err(data_err(format!(
                "a window of the {} split starts at {bad}, but with context {block} its {} tokens \
                 allow starts below {below}",
                split.name(),
                below + block
            ))),
            None => Ok(()),
        }
    }

    /// `batch` random windows of `block` tokens from `split`: inputs `[B, T]` and targets
    /// `[B, T]` (the next token at each position), both U32, from [`Dataset::draw_starts`].
    pub fn batch(
        &self,
        split: Split,
        batch: usize,
        block: usize,
        rng: &mut Rng,
        dev: &Device,
    ) -> Result<(Tensor, Tensor)> {
        let starts = self.draw_starts(split, batch, block, rng)?;
        self.windows(split, &starts, block, dev)
    }

    /// The starts of `batch` random windows of `block` tokens in `split`, each drawn uniformly
    /// from `0..len - block` with `rng`, one draw per row in row order (so the first rows of a
    /// bigger batch are the rows of a smaller one, and data-parallel ranks can slice it).
    pub fn draw_starts(&self, split: Split, batch: usize, block: usize, rng: &mut Rng) -> Result<Vec<usize>> {
        let below = self.window_starts_below(split, block)? as u64;
        Ok((0..batch).map(|_| rng.below(below) as usize).collect())
    }

    /// The windows of `block` tokens of `split` that start at `starts`: inputs and targets,
    /// `[starts.len(), block]` U32 each.
    pub fn windows(&self, split: Split, starts: &[usize], block: usize, dev: &Device) -> Result<(Tensor, Tensor)> {
        self.check_starts(split, starts, block)?;
        let data = self.split(split);
        let mut x = Vec::with_capacity(starts.len() * block);
        let mut y = Vec::with_capacity(starts.len() * block);
        for &i in starts {
            x.extend_from_slice(&data[i..i + block]);
            y.extend_from_slice(&data[i + 1..i + block + 1]);
        }
        Ok((
            Tensor::from_vec(x, &[starts.len(), block], dev)?,
            Tensor::from_vec(y, &[starts.len(), block], dev)?,
        ))
    }
}

/// A recorded data order: the window starts of every training micro-batch and of every
/// evaluation's batches. `kiln train --windows FILE` takes its batches from one instead of
/// drawing them, so that it can replay another program's run (nanoGPT's, say) window for
/// window. The file is JSON:
///
/// ```json
/// {"train": [[3, 90211, ...], ...],
///  "eval": {"0": {"train": [[...], ...], "val": [[...], ...]}, "250": {...}}}
/// ```
///
/// `train` holds one list of starts per micro-batch, in the order the run takes them;
/// `eval` maps each evaluation's step to its batches on each split. Starts are offsets into
/// their split (nanoGPT's `ix` in `get_batch`).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowPlan {
    /// The window starts of each training micro-batch, in the order the run takes them.
    pub train: Vec<Vec<usize>>,
    #[serde(default)]
    /// The batches of the evaluation at each step (by step number).
    pub eval: std::collections::BTreeMap<usize, EvalWindows>,
}

/// One evaluation's batches: the window starts of each batch, per split.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalWindows {
    /// The window starts of each evaluation batch on the training split.
    pub train: Vec<Vec<usize>>,
    /// The window starts of each evaluation batch on the validation split.
    pub val: Vec<Vec<usize>>,
}

impl WindowPlan {
    /// Reads a plan, naming the file in any error. Returns it with a fingerprint of the
    /// file's bytes, so that a resumed run can tell whether the file changed.
    pub fn read(path: &Path) -> Result<(WindowPlan, u64)> {
        let bytes =
            std::fs::read(path).map_err(|e| Error::io(format!("cannot read window plan {}", path.display()), e))?;
        let plan = serde_json::from_slice(&bytes).map_err(|e| {
            data_err(format!(
                "window plan {}: {e} (expected {{\"train\": [[start, ...], ...], \"eval\": {{\"STEP\": {{\"train\": [...], \"val\": [...]}}}}}})",
                path.display()
            ))
        })?;
        Ok((plan, fnv1a64(&bytes)))
    }

    /// Checks that the plan covers a run before it starts: `train_batches` training batches and,
    /// at each of `eval_steps`, `eval_iters` batches of each split; every batch `batch`
    /// windows, every start inside its split.
    pub fn check(
        &self,
        data: &Dataset,
        block: usize,
        batch: usize,
        train_batches: usize,
        eval_steps: &[usize],
        eval_iters: usize,
    ) -> Result<()> {
        if self.train.len() < train_batches {
            return Err(data_err(format!(
                "the window plan holds {} training batches, but the run takes {train_batches}",
                self.train.len()
            )));
        }
        // every batch `batch` windows, every start inside its split
        let check_batches = |what: &str, split: Split, batches: &[Vec<usize>]| -> Result<()> {
            for (i, starts) in batches.iter().enumerate() {
                if starts.len() != batch {
                    return Err(data_err(format!(
                        "the window plan's {what}, batch {i}, has {} windows, expected --batch-size {batch}",
                        starts.len()
                    )));
                }
                data.check_starts(split, starts, block).map_err(|e| match e {
                    Error::Invalid { msg, .. } => data_err(format!("the window plan's {what}, batch {i}: {msg}")),
                    other => other,
                })?;
            }
            Ok(())
        };
        check_batches("training batches", Split::Train, &self.train[..train_batches])?;
        for &step in eval_steps {
            let Some(e) = self.eval.get(&step) else {
                return Err(data_err(format!(
                    "the window plan has no evaluation batches for step {step} (the run evaluates at steps {eval_steps:?})"
                )));
            };
            for (split, batches) in [(Split::Train, &e.train), (Split::Val, &e.val)] {
                let what = format!("evaluation at step {step} ({})", split.name());
                if batches.len() != eval_iters {
                    return Err(data_err(format!(
                        "the window plan's {what} holds {} batches, expected --eval-iters {eval_iters}",
                        batches.len()
                    )));
                }
                check_batches(&what, split, batches)?;
            }
        }
        Ok(())
    }

    /// The starts of evaluation batch `i` of `split` at `step` (after [`WindowPlan::check`]).
    pub fn eval_batch(&self, step: usize, split: Split, i: usize) -> &[usize] {
        let e = &self.eval[&step];
        match split {
            Split::Train => &e.train[i],
            Split::Val => &e.val[i],
        }
    }
}
