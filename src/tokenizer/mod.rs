//! Tokenizers: text ↔ token ids.
//!
//! Three kinds, one enum, serialisable to JSON so every checkpoint carries the tokenizer it
//! was trained with (`tokenizer.json`):
//!
//! - [`Tokenizer::Byte`]: the UTF-8 bytes of the text, 256 ids. Works on any text.
//! - [`Tokenizer::Char`]: one id per distinct character of the training corpus, in sorted
//!   order, as nanoGPT's `shakespeare_char` does. The smallest vocabulary for a given text;
//!   a character outside it cannot be encoded (the error names it).
//! - [`Tokenizer::Gpt2`]: GPT-2's byte-level BPE (`r50k_base`, 50,257 ids), whose
//!   vocabulary ships inside the `tiktoken-rs` crate.
//! - [`Tokenizer::Gguf`]: the byte-level BPE a GGUF model file describes (its vocabulary,
//!   merges, pre-tokenizer, special tokens and chat template), from [`Tokenizer::from_gguf`].
//!
//! ```
//! use kiln::tokenizer::Tokenizer;
//! let tok = Tokenizer::char_from_text("hello world");
//! assert_eq!(tok.vocab_size(), 8); // ' ', d, e, h, l, o, r, w
//! let ids = tok.encode("hello")?;
//! assert_eq!(tok.decode(&ids), "hello");
//! assert!(tok.encode("help!").is_err()); // 'p' and '!' are not in the vocabulary
//! # Ok::<(), kiln::Error>(())
//! ```

mod chat;
mod gguf;

pub use chat::{ChatMessage, ChatTemplate};
pub use gguf::{GgufTokenizer, HF_TOKENIZER, HF_TOKENIZER_CONFIG, TOKEN_TYPE_CONTROL, TOKEN_TYPE_USER_DEFINED};

use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap};
use std::path::Path;

/// A tokenizer. Serialised as `{"kind": "byte"}`, `{"kind": "char", "chars": "..."}`,
/// `{"kind": "gpt2"}` or `{"kind": "gguf", "tokens": [...], "merges": [...], ...}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Tokenizer {
    /// UTF-8 bytes: id = byte value.
    Byte,
    /// Characters: id = index of the character in `chars` (sorted, distinct).
    Char {
        #[serde(with = "chars_as_string")]
        /// The vocabulary: sorted, distinct characters.
        chars: Vec<char>,
    },
    /// GPT-2 BPE (tiktoken's `r50k_base`).
    Gpt2,
    /// The byte-level BPE of a GGUF file.
    Gguf(Box<GgufTokenizer>),
}

/// The GPT-2 vocabulary size (`r50k_base`: 50,000 merges + 256 bytes + `<|endoftext|>`).
pub const GPT2_VOCAB_SIZE: usize = 50257;

/// GPT-2's `<|endoftext|>` id.
pub const GPT2_EOT: u32 = 50256;

/// The kind of tokenizer, as chosen on the command line (`--tokenizer byte|char|gpt2`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenizerKind {
    /// [`Tokenizer::Byte`].
    Byte,
    /// [`Tokenizer::Char`], its vocabulary taken from the corpus.
    Char,
    /// [`Tokenizer::Gpt2`].
    Gpt2,
}

impl std::str::FromStr for TokenizerKind {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "byte" | "bytes" => Ok(TokenizerKind::Byte),
            "char" | "chars" => Ok(TokenizerKind::Char),
            "gpt2" | "r50k_base" => Ok(TokenizerKind::Gpt2),
            _ => Err(Error::Invalid {
                op: "tokenizer",
                msg: format!("unknown tokenizer {s:?}; expected byte, char or gpt2"),
            }),
        }
    }
}

impl std::fmt::Display for TokenizerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TokenizerKind::Byte => "byte",
            TokenizerKind::Char => "char",
            TokenizerKind::Gpt2 => "gpt2",
        })
    }
}

#[cfg(feature = "gpt2-tokenizer")]
fn bpe() -> Result<&'static tiktoken_rs::CoreBPE> {
    // `r50k_base_singleton` panics if the embedded vocabulary fails to parse; build it once
    // ourselves so that failure is an error instead.
    use std::sync::OnceLock;
    static BPE: OnceLock<std::result::Result<tiktoken_rs::CoreBPE, String>> = OnceLock::new();
    BPE.get_or_init(|| tiktoken_rs::r50k_base().map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|e| Error::Invalid {
            op: "tokenizer",
            msg: format!("cannot load the GPT-2 vocabulary (r50k_base): {e}"),
        })
}

/// Without the `gpt2-tokenizer` feature there is no GPT-2 vocabulary: encoding is an error that
/// says how to get it (and decoding yields nothing, as for an unloadable vocabulary).
#[cfg(not(feature = "gpt2-tokenizer"))]
fn bpe() -> Result<&'static Gpt2Unavailable> {
    Err(Error::Invalid {
        op: "tokenizer",
        msg: "kiln was built without its `gpt2-tokenizer` feature, so it has no GPT-2 vocabulary; \
              enable the feature (it is on by default) to encode or decode with Tokenizer::Gpt2"
            .into(),
    })
}

/// Stands in for tiktoken's `CoreBPE` when the `gpt2-tokenizer` feature is off; never constructed.
#[cfg(not(feature = "gpt2-tokenizer"))]
enum Gpt2Unavailable {}

#[cfg(not(feature = "gpt2-tokenizer"))]
impl Gpt2Unavailable {
    fn encode_ordinary(&self, _text: &str) -> Vec<u32> {
        match *self {}
    }

    fn decode_bytes(&self, _ids: &[u32]) -> Result<Vec<u8>> {
        match *self {}
    }
}

impl Tokenizer {
    /// The tokenizer of kind `kind` for the corpus `text` (only `Char` looks at the text).
    pub fn for_corpus(kind: TokenizerKind, text: &str) -> Tokenizer {
        match kind {
            TokenizerKind::Byte => Tokenizer::Byte,
            TokenizerKind::Char => Tokenizer::char_from_text(text),
            TokenizerKind::Gpt2 => Tokenizer::Gpt2,
        }
    }

    /// The byte-level BPE tokenizer of the GGUF model file at `path` (see [`GgufTokenizer`]).
    /// It adds BOS/EOS to encoded text only if the file's `add_bos_token`/`add_eos_token` say so.
    pub fn from_gguf(path: impl AsRef<Path>) -> Result<Tokenizer> {
        Ok(Tokenizer::Gguf(Box::new(GgufTokenizer::open(path)?)))
    }

    /// The beginning-of-sequence id, if the tokenizer has one.
    pub fn bos_id(&self) -> Option<u32> {
        match self {
            Tokenizer::Gpt2 => Some(GPT2_EOT),
            Tokenizer::Gguf(t) => t.bos_id(),
            Tokenizer::Byte | Tokenizer::Char { .. } => None,
        }
    }

    /// The end-of-sequence id (generation stops there), if the tokenizer has one.
    pub fn eos_id(&self) -> Option<u32> {
        match self {
            Tokenizer::Gpt2 => Some(GPT2_EOT),
            Tokenizer::Gguf(t) => t.eos_id(),
            Tokenizer::Byte | Tokenizer::Char { .. } => None,
        }
    }

    /// `messages` formatted by the model's chat template; an error for a tokenizer without one.
    pub fn apply_chat_template(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        match self {
            Tokenizer::Gguf(t) => t.apply_chat_template(messages, add_generation_prompt),
            other => Err(Error::invalid(
                "chat template",
                format!(
                    "the {} tokenizer has no chat template; chat needs a model that ships one",
                    other.name()
                ),
            )),
        }
    }

    /// A character-level tokenizer whose vocabulary is the sorted distinct characters of `text`.
    pub fn char_from_text(text: &str) -> Tokenizer {
        let set: BTreeSet<char> = text.chars().collect();
        Tokenizer::Char {
            chars: set.into_iter().collect(),
        }
    }

    /// The corpus kind this tokenizer was made as; `None` for one read from a model file.
    pub fn kind(&self) -> Option<TokenizerKind> {
        match self {
            Tokenizer::Byte => Some(TokenizerKind::Byte),
            Tokenizer::Char { .. } => Some(TokenizerKind::Char),
            Tokenizer::Gpt2 => Some(TokenizerKind::Gpt2),
            Tokenizer::Gguf(_) => None,
        }
    }

    /// `byte`, `char`, `gpt2` or `gguf`.
    pub fn name(&self) -> &'static str {
        match self {
            Tokenizer::Byte => "byte",
            Tokenizer::Char { .. } => "char",
            Tokenizer::Gpt2 => "gpt2",
            Tokenizer::Gguf(_) => "gguf",
        }
    }

    /// The number of distinct ids; a model's `vocab_size` must be at least this.
    pub fn vocab_size(&self) -> usize {
        match self {
            Tokenizer::Byte => 256,
            Tokenizer::Char { chars } => chars.len(),
            Tokenizer::Gpt2 => GPT2_VOCAB_SIZE,
            Tokenizer::Gguf(t) => t.vocab_size(),
        }
    }

    /// A short description for logs: `byte (256 ids)`, `char (65 ids)`, `gpt2 (50257 ids)`.
    pub fn describe(&self) -> String {
        format!("{} ({} ids)", self.name(), self.vocab_size())
    }

    /// Token ids of `text`. For a character vocabulary, characters outside it are an error
    /// that lists every one of them.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        match self {
            Tokenizer::Byte => Ok(text.bytes().map(u32::from).collect()),
            Tokenizer::Char { chars } => {
                let index: HashMap<char, u32> = chars.iter().enumerate().map(|(i, &c)| (c, i as u32)).collect();
                let mut ids = Vec::with_capacity(text.len());
                let mut unknown = BTreeSet::new();
                for c in text.chars() {
                    match index.get(&c) {
                        Some(&id) => ids.push(id),
                        None => {
                            unknown.insert(c);
                        }
                    }
                }
                if unknown.is_empty() {
                    Ok(ids)
                } else {
                    let list: Vec<String> = unknown.iter().map(|c| format!("{c:?}")).collect();
                    Err(Error::Invalid {
                        op: "tokenizer",
                        msg: format!(
                            "the text has {} character(s) outside this character vocabulary of {} ({}): {}",
                            unknown.len(),
                            chars.len(),
                            preview_vocab(chars),
                            list.join(", ")
                        ),
                    })
                }
            }
            // Ordinary encoding: "<|endoftext|>" in user text is plain text, not the special id.
            Tokenizer::Gpt2 => Ok(bpe()?.encode_ordinary(text)),
            // Control tokens such as "<|im_start|>" in the text are their single ids.
            Tokenizer::Gguf(t) => t.encode(text),
        }
    }

    /// The bytes that `ids` stand for (every id must be below `vocab_size`; larger ids, which
    /// an untrained model with a padded vocabulary may sample, decode to nothing).
    pub fn decode_bytes(&self, ids: &[u32]) -> Vec<u8> {
        match self {
            Tokenizer::Byte => ids.iter().filter(|&&i| i < 256).map(|&i| i as u8).collect(),
            Tokenizer::Char { chars } => {
                let s: String = ids.iter().filter_map(|&i| chars.get(i as usize)).collect();
                s.into_bytes()
            }
            Tokenizer::Gpt2 => match bpe() {
                Ok(bpe) => ids
                    .iter()
                    .filter(|&&i| (i as usize) < GPT2_VOCAB_SIZE)
                    .flat_map(|&i| bpe.decode_bytes(&[i]).unwrap_or_default())
                    .collect(),
                Err(_) => Vec::new(),
            },
            Tokenizer::Gguf(t) => ids.iter().flat_map(|&i| t.token_bytes(i)).collect(),
        }
    }

    /// The text of `ids`; byte sequences that are not valid UTF-8 become U+FFFD.
    pub fn decode(&self, ids: &[u32]) -> String {
        String::from_utf8_lossy(&self.decode_bytes(ids)).into_owned()
    }

    /// A 64-bit fingerprint of the tokenizer (kind and vocabulary), for the token cache.
    pub fn fingerprint(&self) -> u64 {
        let json = serde_json::to_string(self).expect("a tokenizer always serialises");
        fnv1a64(json.as_bytes())
    }

    /// Writes the tokenizer as JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a tokenizer always serialises")
    }

    /// Reads a tokenizer written by [`Tokenizer::to_json`].
    pub fn from_json(json: &str) -> Result<Tokenizer> {
        let tok: Tokenizer = serde_json::from_str(json).map_err(|e| Error::Invalid {
            op: "tokenizer",
            msg: format!("cannot parse the tokenizer JSON: {e}"),
        })?;
        if let Tokenizer::Char { chars } = &tok {
            if chars.is_empty() || chars.windows(2).any(|w| w[0] >= w[1]) {
                return Err(Error::Invalid {
                    op: "tokenizer",
                    msg: "a character vocabulary must be non-empty, sorted and without repeats".into(),
                });
            }
        }
        Ok(tok)
    }
}

/// The first few characters of a vocabulary, for error messages.
fn preview_vocab(chars: &[char]) -> String {
    let shown: String = chars.iter().take(40).collect();
    if chars.len() > 40 {
        format!("{shown:?}…")
    } else {
        format!("{shown:?}")
    }
}

/// FNV-1a, 64-bit: a tiny stable hash (the same on every platform and Rust version).
pub(crate) fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Turns a stream of token ids into text pieces as soon as they are complete UTF-8, so a
/// character split over several byte or BPE tokens is printed whole.
#[derive(Debug, Default)]
pub struct StreamDecoder {
    pending: Vec<u8>,
}

impl StreamDecoder {
    /// A decoder with nothing pending.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one token; returns the text that became complete (possibly empty).
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> String {
        self.pending.extend(tok.decode_bytes(&[id]));
        self.take_complete()
    }

    /// The rest, with any incomplete sequence as U+FFFD.
    pub fn finish(&mut self) -> String {
        let s = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        s
    }

    fn take_complete(&mut self) -> String {
        let mut out = String::new();
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(s) => {
                    out.push_str(s);
                    self.pending.clear();
                    return out;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    out.push_str(std::str::from_utf8(&self.pending[..valid]).expect("valid prefix"));
                    match e.error_len() {
                        // Invalid bytes: replace them and go on.
                        Some(bad) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            self.pending.drain(..valid + bad);
                        }
                        // An incomplete sequence at the end: wait for more bytes.
                        None => {
                            self.pending.drain(..valid);
                            return out;
                        }
                    }
                }
            }
        }
    }
}

/// `Vec<char>` as one JSON string, which is far easier to read than an array of strings.
mod chars_as_string {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(chars: &[char], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&chars.iter().collect::<String>())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<char>, D::Error> {
        Ok(String::deserialize(d)?.chars().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_decoder_waits_for_whole_characters() {
        let tok = Tokenizer::Byte;
        let mut d = StreamDecoder::new();
        let ids = tok.encode("é!").unwrap(); // 0xC3 0xA9 '!'
        assert_eq!(d.push(&tok, ids[0]), "");
        assert_eq!(d.push(&tok, ids[1]), "é");
        assert_eq!(d.push(&tok, ids[2]), "!");
        assert_eq!(d.push(&tok, 0xFF), "\u{FFFD}");
        assert_eq!(d.push(&tok, 0xC3), "");
        assert_eq!(d.finish(), "\u{FFFD}");
    }

    #[test]
    #[cfg(not(feature = "gpt2-tokenizer"))]
    fn gpt2_without_its_feature_is_an_error_naming_it() {
        let e = Tokenizer::Gpt2.encode("hello").unwrap_err().to_string();
        assert!(e.contains("`gpt2-tokenizer` feature"), "{e}");
        assert_eq!(Tokenizer::Gpt2.decode(&[31373]), "");
    }

    #[test]
    #[cfg(not(feature = "gguf-tokenizer"))]
    fn gguf_without_its_feature_decodes_but_does_not_encode() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/llama-chat/model.gguf");
        let tok = Tokenizer::from_gguf(path).unwrap();
        let e = tok.encode("hello").unwrap_err().to_string();
        assert!(e.contains("`gguf-tokenizer` feature"), "{e}");
        // A token spelled in plain ASCII letters stands for those bytes in GPT-2's byte alphabet.
        let Tokenizer::Gguf(g) = &tok else { unreachable!() };
        let (id, word) = (0..tok.vocab_size() as u32)
            .find_map(|id| {
                g.token(id)
                    .filter(|t| t.len() > 1 && t.bytes().all(|b| b.is_ascii_alphabetic()))
                    .map(|t| (id, t))
            })
            .expect("the fixture's vocabulary has an ASCII word");
        assert_eq!(tok.decode(&[id]), word);
        assert!(tok
            .apply_chat_template(&[ChatMessage::user("hi")], true)
            .unwrap()
            .contains("hi"));
    }

    #[test]
    fn fnv_is_stable() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
