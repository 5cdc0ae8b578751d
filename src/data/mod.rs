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

const CACHE_MAGIC: &[u8; 8] = b"KILNTOK1";
const CACHE_HEADER: usize = 8 + 3 * 8;

/// The header of a token cache file: which text and which tokenizer produced it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheKey {
    pub corpus: u64,
    pub tokenizer: u64,
}

/// Reads a token cache; `None` if it is absent, foreign, damaged, or made from other
/// text or another tokenizer (`want`; `None` accepts any key).
pub fn read_token_cache(path: &Path, want: Option<CacheKey>) -> Option<(CacheKey, Vec<u32>)> {
    let bytes = std::fs::read(path).ok()?;
    if bytes.len() < CACHE_HEADER || &bytes[..8] != CACHE_MAGIC {
        return None;
    }
    let word = |i: usize| u64::from_le_bytes(bytes[8 + 8 * i..16 + 8 * i].try_into().expect("8 bytes"));
    let key = CacheKey {
        corpus: word(0),
        tokenizer: word(1),
    };
    let count = word(2) as usize;
    if want.is_some_and(|w| w != key) || bytes.len() != CACHE_HEADER + 4 * count {
        return None;
    }
    let ids = bytes[CACHE_HEADER..]
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes")))
        .collect();
    Some((key, ids))
}

/// Writes a token cache atomically.
pub fn write_token_cache(path: &Path, key: CacheKey, ids: &[u32]) -> Result<()> {
    let mut bytes = Vec::with_capacity(CACHE_HEADER + 4 * ids.len());
    bytes.extend_from_slice(CACHE_MAGIC);
    bytes.extend_from_slice(&key.corpus.to_le_bytes());
    bytes.extend_from_slice(&key.tokenizer.to_le_bytes());
    bytes.extend_from_slice(&(ids.len() as u64).to_le_bytes());
    for id in ids {
        bytes.extend_from_slice(&id.to_le_bytes());
    }
    crate::model::io::write_atomic(path, &bytes)
}

/// Token ids of `corpus` under `tok`, read from the cache file `cache` when it was made
/// from the same text and tokenizer, else computed and written there (`cache = None`: no
/// caching). Returns the ids and whether the cache was used.
pub fn tokenize_cached(corpus: &Corpus, tok: &Tokenizer, cache: Option<&Path>) -> Result<(Vec<u32>, bool)> {
    let key = CacheKey {
        corpus: corpus.fingerprint(),
        tokenizer: tok.fingerprint(),
    };
    if let Some(path) = cache {
        if let Some((_, ids)) = read_token_cache(path, Some(key)) {
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
    Train,
    Val,
}

/// Token ids split by position: the first part trains, the rest validates (nanoGPT's 90/10).
#[derive(Clone, Debug)]
pub struct Dataset {
    pub train: Vec<u32>,
    pub val: Vec<u32>,
}

impl Dataset {
    /// Splits `ids`: the last `val_fraction` of the tokens (rounded down) is the validation set.
    pub fn new(mut ids: Vec<u32>, val_fraction: f64) -> Result<Dataset> {
        if !(0.0..1.0).contains(&val_fraction) {
            return Err(data_err(format!(
                "the validation fraction must be in [0, 1), got {val_fraction}"
            )));
        }
        let n_train = ids.len() - (ids.len() as f64 * val_fraction) as usize;
        let val = ids.split_off(n_train);
        Ok(Dataset { train: ids, val })
    }

    pub fn split(&self, split: Split) -> &[u32] {
        match split {
            Split::Train => &self.train,
            Split::Val => &self.val,
        }
    }

    /// Checks that both splits hold at least one window of `block` inputs plus its target.
    pub fn check_block(&self, block: usize) -> Result<()> {
        for (name, s) in [("training", &self.train), ("validation", &self.val)] {
            if s.len() <= block {
                return Err(data_err(format!(
                    "the {name} split has {} tokens, but one window of context {block} needs {}; \
                     give more text or a smaller --block-size",
                    s.len(),
                    block + 1
                )));
            }
        }
        Ok(())
    }

    /// `batch` random windows of `block` tokens from `split`: inputs `[B, T]` and targets
    /// `[B, T]` (the next token at each position), both U32. Each window start is drawn
    /// uniformly from `0..len - block` with `rng`, one draw per row.
    pub fn batch(
        &self,
        split: Split,
        batch: usize,
        block: usize,
        rng: &mut Rng,
        dev: &Device,
    ) -> Result<(Tensor, Tensor)> {
        let data = self.split(split);
        if data.len() <= block {
            self.check_block(block)?;
        }
        let mut x = Vec::with_capacity(batch * block);
        let mut y = Vec::with_capacity(batch * block);
        for _ in 0..batch {
            let i = rng.below((data.len() - block) as u64) as usize;
            x.extend_from_slice(&data[i..i + block]);
            y.extend_from_slice(&data[i + 1..i + block + 1]);
        }
        Ok((
            Tensor::from_vec(x, &[batch, block], dev)?,
            Tensor::from_vec(y, &[batch, block], dev)?,
        ))
    }
}
