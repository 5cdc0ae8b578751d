//! The byte-level BPE tokenizer a GGUF file describes in its `tokenizer.ggml.*` metadata.
//!
//! ```text
//! tokenizer.ggml.model        "gpt2" (byte-level BPE; "llama" = SentencePiece is not read)
//! tokenizer.ggml.pre          the pre-tokenizer: how text is cut into words before BPE
//! tokenizer.ggml.tokens       [string]  id -> token, spelled in GPT-2's byte alphabet
//!                                       (byte 0x20 ' ' is 'Ġ', 0x0A '\n' is 'Ċ', ...)
//! tokenizer.ggml.token_type   [i32]     1 normal, 2 unknown, 3 control (<|im_start|>),
//!                                       4 user-defined, 5 unused, 6 byte
//! tokenizer.ggml.merges       [string]  "Ġ t", "h e", ...: pairs in priority order
//! tokenizer.ggml.bos_token_id / eos_token_id: u32, add_bos_token / add_eos_token: bool
//! tokenizer.chat_template     Jinja source (see `chat.rs`)
//! ```
//!
//! Encoding runs in Hugging Face's `tokenizers` crate, set up as transformers and llama.cpp
//! set it up for the file: control tokens (type 3) and user-defined ones (type 4) written in
//! the text are matched whole, as single ids, before the rest is pre-tokenized and merged.
//! Decoding maps each token's characters back through the byte alphabet.

use super::chat::{ChatMessage, ChatTemplate};
use crate::gguf::GgufFile;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;
use std::sync::OnceLock;
#[cfg(feature = "gguf-tokenizer")]
use tokenizers::{
    models::bpe::BPE,
    pre_tokenizers::{
        byte_level::ByteLevel,
        digits::Digits,
        sequence::Sequence,
        split::{Split, SplitPattern},
        PreTokenizerWrapper,
    },
    AddedToken, SplitDelimiterBehavior,
};

/// `tokenizer.ggml.token_type` of a control token such as `<|im_start|>`.
pub const TOKEN_TYPE_CONTROL: i32 = 3;
/// `tokenizer.ggml.token_type` of a user-defined token, matched whole but not special.
pub const TOKEN_TYPE_USER_DEFINED: i32 = 4;

/// The split regex of Llama 3's tokenizer (llama.cpp's `llama-bpe`).
#[cfg(feature = "gguf-tokenizer")]
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// The split regex of Qwen2's tokenizer (llama.cpp's `qwen2`): digits one by one.
#[cfg(feature = "gguf-tokenizer")]
const QWEN2_SPLIT: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The pre-tokenizers kiln knows, by `tokenizer.ggml.pre` name.
#[cfg(feature = "gguf-tokenizer")]
const KNOWN_PRE: &str = "default, gpt2, gpt-2, smollm, llama-bpe, llama3, llama-v3, qwen2";

/// What the file says, kept as read (this is what a checkpoint's `tokenizer.json` stores).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Spec {
    pre: String,
    tokens: Vec<String>,
    /// Empty when the file has no `tokenizer.ggml.token_type`.
    token_types: Vec<i32>,
    merges: Vec<String>,
    bos_id: Option<u32>,
    eos_id: Option<u32>,
    add_bos: bool,
    add_eos: bool,
    chat_template: Option<String>,
}

/// A byte-level BPE tokenizer read from a GGUF file. Built through
/// [`super::Tokenizer::from_gguf`]; this type holds the data and the encoder.
///
/// Encoding needs the `gguf-tokenizer` feature (on by default); without it the vocabulary, decoding
/// and the chat template still work and [`GgufTokenizer::encode`] returns an error.
#[derive(Clone, Serialize, Deserialize)]
#[serde(try_from = "Spec", into = "Spec")]
pub struct GgufTokenizer {
    spec: Spec,
    #[cfg_attr(not(feature = "gguf-tokenizer"), allow(dead_code))]
    encoder: Encoder,
}

/// Hugging Face's BPE tokenizer, set up by [`build_encoder`].
#[cfg(feature = "gguf-tokenizer")]
type Encoder = tokenizers::Tokenizer;
/// Nothing: without the `gguf-tokenizer` feature there is no encoder.
#[cfg(not(feature = "gguf-tokenizer"))]
#[derive(Clone)]
struct Encoder;

impl PartialEq for GgufTokenizer {
    fn eq(&self, other: &Self) -> bool {
        self.spec == other.spec
    }
}

impl Eq for GgufTokenizer {}

impl std::fmt::Debug for GgufTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufTokenizer")
            .field("pre", &self.spec.pre)
            .field("tokens", &self.spec.tokens.len())
            .field("merges", &self.spec.merges.len())
            .field("bos_id", &self.spec.bos_id)
            .field("eos_id", &self.spec.eos_id)
            .field("add_bos", &self.spec.add_bos)
            .finish()
    }
}

impl From<GgufTokenizer> for Spec {
    fn from(t: GgufTokenizer) -> Spec {
        t.spec
    }
}

impl TryFrom<Spec> for GgufTokenizer {
    type Error = Error;
    fn try_from(spec: Spec) -> Result<GgufTokenizer> {
        let encoder = build_encoder(&spec)?;
        Ok(GgufTokenizer { spec, encoder })
    }
}

fn tokenizer_error(msg: impl Into<String>) -> Error {
    Error::Invalid {
        op: "tokenizer",
        msg: msg.into(),
    }
}

impl GgufTokenizer {
    /// Reads the tokenizer of the GGUF file at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<GgufTokenizer> {
        Self::from_file(&GgufFile::open(path)?)
    }

    /// Reads the tokenizer of an opened GGUF file.
    pub fn from_file(file: &GgufFile) -> Result<GgufTokenizer> {
        let format = |what: String| Error::Format {
            file: file.name().to_string(),
            what,
        };
        let model: &str = file.get("tokenizer.ggml.model")?;
        if model != "gpt2" {
            return Err(format(format!(
                "tokenizer.ggml.model is {model:?}; kiln reads byte-level BPE tokenizers (\"gpt2\") only"
            )));
        }
        let tokens: Vec<&str> = file.get("tokenizer.ggml.tokens")?;
        let token_types: Vec<i32> = file.get_opt("tokenizer.ggml.token_type")?.unwrap_or_default();
        if !token_types.is_empty() && token_types.len() != tokens.len() {
            return Err(format(format!(
                "tokenizer.ggml.token_type has {} entries for {} tokens",
                token_types.len(),
                tokens.len()
            )));
        }
        let merges: Vec<&str> = file.get("tokenizer.ggml.merges")?;
        let n_tokens = tokens.len();
        let id = |key: &str| -> Result<Option<u32>> {
            let id: Option<u32> = file.get_opt(key)?;
            match id {
                Some(i) if i as usize >= n_tokens => Err(format(format!(
                    "{key} is {i}, outside the vocabulary of {n_tokens} tokens"
                ))),
                _ => Ok(id),
            }
        };
        let spec = Spec {
            pre: file
                .get_opt::<&str>("tokenizer.ggml.pre")?
                .unwrap_or("default")
                .to_string(),
            tokens: tokens.into_iter().map(String::from).collect(),
            token_types,
            merges: merges.into_iter().map(String::from).collect(),
            bos_id: id("tokenizer.ggml.bos_token_id")?,
            eos_id: id("tokenizer.ggml.eos_token_id")?,
            add_bos: file.get_opt("tokenizer.ggml.add_bos_token")?.unwrap_or(false),
            add_eos: file.get_opt("tokenizer.ggml.add_eos_token")?.unwrap_or(false),
            chat_template: file.get_opt::<&str>("tokenizer.chat_template")?.map(String::from),
        };
        let encoder = build_encoder(&spec).map_err(|e| format(e.to_string()))?;
        Ok(GgufTokenizer { spec, encoder })
    }

    /// The number of tokens (ids are below it).
    pub fn vocab_size(&self) -> usize {
        self.spec.tokens.len()
    }

    /// The pre-tokenizer's name (`tokenizer.ggml.pre`).
    pub fn pre_tokenizer(&self) -> &str {
        &self.spec.pre
    }

    /// The beginning-of-sequence id (`tokenizer.ggml.bos_token_id`), if the file has one.
    pub fn bos_id(&self) -> Option<u32> {
        self.spec.bos_id
    }

    /// The end-of-sequence id (`tokenizer.ggml.eos_token_id`), if the file has one.
    pub fn eos_id(&self) -> Option<u32> {
        self.spec.eos_id
    }

    /// The spelling of token `id` in the file (`"Ġthe"`, `"<|im_end|>"`).
    pub fn token(&self, id: u32) -> Option<&str> {
        self.spec.tokens.get(id as usize).map(String::as_str)
    }

    /// The token ids of `text`: BOS first if `add_bos_token` says so, EOS last if
    /// `add_eos_token` does; control tokens in the text become their single ids.
    #[cfg(feature = "gguf-tokenizer")]
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let encoding = self
            .encoder
            .encode(text, false)
            .map_err(|e| tokenizer_error(format!("cannot encode the text: {e}")))?;
        let bos = self.spec.bos_id.filter(|_| self.spec.add_bos);
        let eos = self.spec.eos_id.filter(|_| self.spec.add_eos);
        Ok(bos
            .into_iter()
            .chain(encoding.get_ids().iter().copied())
            .chain(eos)
            .collect())
    }

    /// Always an error: encoding needs the `gguf-tokenizer` feature.
    #[cfg(not(feature = "gguf-tokenizer"))]
    pub fn encode(&self, _text: &str) -> Result<Vec<u32>> {
        Err(tokenizer_error(
            "kiln was built without its `gguf-tokenizer` feature, so it cannot encode with a GGUF file's BPE; \
             enable the feature (it is on by default)",
        ))
    }

    /// The bytes of token `id`: its characters mapped back through the byte alphabet, or
    /// its UTF-8 text for a user-defined token or one spelled outside the alphabet (none for
    /// an id outside the vocabulary).
    pub fn token_bytes(&self, id: u32) -> Vec<u8> {
        let Some(token) = self.spec.tokens.get(id as usize) else {
            return Vec::new();
        };
        let user_defined = self.spec.token_types.get(id as usize) == Some(&TOKEN_TYPE_USER_DEFINED);
        match spelled_bytes(token) {
            Some(bytes) if !user_defined => bytes,
            _ => token.as_bytes().to_vec(),
        }
    }

    /// The chat template's source, if the file has one.
    pub fn chat_template(&self) -> Option<&str> {
        self.spec.chat_template.as_deref()
    }

    /// `messages` rendered by the file's chat template (see [`ChatTemplate::render`]).
    pub fn apply_chat_template(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        let source = self.chat_template().ok_or_else(|| {
            tokenizer_error("this GGUF file has no chat template (tokenizer.chat_template); it cannot format a chat")
        })?;
        let token = |id: Option<u32>| id.and_then(|i| self.token(i)).unwrap_or("");
        ChatTemplate::new(source, token(self.spec.bos_id), token(self.spec.eos_id))?
            .render(messages, add_generation_prompt)
    }
}

/// The tokenizer of a Hugging Face model folder (the `tokenizers` library's JSON).
pub const HF_TOKENIZER: &str = "tokenizer.json";
/// transformers' settings of that tokenizer: its class, special tokens and chat template.
pub const HF_TOKENIZER_CONFIG: &str = "tokenizer_config.json";

impl GgufTokenizer {
    /// This tokenizer as Hugging Face's `tokenizer.json` ([`HF_TOKENIZER`]): the encoder kiln
    /// encodes with (the same BPE, pre-tokenizer and whole-matched tokens), plus the byte-level
    /// decoder and a post-processor that adds BOS / EOS where `add_bos_token` / `add_eos_token`
    /// say so, as [`GgufTokenizer::encode`] does. The `tokenizers` library and
    /// transformers' `AutoTokenizer` read it.
    #[cfg(feature = "gguf-tokenizer")]
    pub fn hf_tokenizer_json(&self) -> Result<String> {
        use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
        use tokenizers::processors::template::TemplateProcessing;
        let mut encoder = self.encoder.clone();
        encoder.with_decoder(Some(ByteLevelDecoder::default()));
        // "$A" framed by the BOS and EOS tokens that encoding adds; a pair is framed likewise
        let added = |id: Option<u32>, add: bool| id.filter(|_| add).and_then(|i| Some((self.token(i)?, i)));
        let (bos, eos) = (
            added(self.spec.bos_id, self.spec.add_bos),
            added(self.spec.eos_id, self.spec.add_eos),
        );
        let frame = |seq: &str| -> Vec<String> {
            bos.iter()
                .map(|(t, _)| t.to_string())
                .chain([seq.to_string()])
                .chain(eos.iter().map(|(t, _)| t.to_string()))
                .collect()
        };
        let pair: Vec<String> = frame("$A:0").into_iter().chain(frame("$B:1")).collect();
        let template = TemplateProcessing::builder()
            .try_single(frame("$A:0"))
            .and_then(|b| b.try_pair(pair))
            .map_err(|e| tokenizer_error(format!("cannot build the post-processor's template: {e}")))?
            .special_tokens(bos.into_iter().chain(eos).collect::<Vec<_>>())
            .build()
            .map_err(|e| tokenizer_error(format!("cannot build the post-processor: {e}")))?;
        encoder.with_post_processor(Some(template));
        encoder
            .to_string(true)
            .map_err(|e| tokenizer_error(format!("cannot write the tokenizer as JSON: {e}")))
    }

    /// transformers' `tokenizer_config.json` ([`HF_TOKENIZER_CONFIG`]) for the tokenizer of
    /// `hf_tokenizer_json` (feature `gguf-tokenizer`): the fast tokenizer class, the BOS and EOS tokens,
    /// whether encoding adds them, and the chat template. `model_max_length` is the model's context.
    pub fn hf_tokenizer_config(&self, model_max_length: usize) -> serde_json::Value {
        let token = |id: Option<u32>| id.and_then(|i| self.token(i));
        let mut config = serde_json::json!({
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": token(self.spec.bos_id),
            "eos_token": token(self.spec.eos_id),
            "add_bos_token": self.spec.add_bos,
            "add_eos_token": self.spec.add_eos,
            "clean_up_tokenization_spaces": false,
            "model_max_length": model_max_length,
        });
        if let Some(template) = &self.spec.chat_template {
            config["chat_template"] = template.clone().into();
        }
        config
    }
}

/// GPT-2's byte alphabet: byte b is written as character `alphabet()[b]` (printable ASCII and
/// Latin-1 stand for themselves; the rest, space and control bytes included, map to U+0100..).
fn alphabet() -> &'static ([char; 256], HashMap<char, u8>) {
    static ALPHABET: OnceLock<([char; 256], HashMap<char, u8>)> = OnceLock::new();
    ALPHABET.get_or_init(|| {
        let mut chars = ['\0'; 256];
        let mut next = 256u32;
        for b in 0..=255u8 {
            let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
            chars[b as usize] = if printable {
                b as char
            } else {
                next += 1;
                char::from_u32(next - 1).expect("U+0100..U+0143 are chars")
            };
        }
        let bytes = chars.iter().enumerate().map(|(b, &c)| (c, b as u8)).collect();
        (chars, bytes)
    })
}

/// The bytes a token spelled in the byte alphabet stands for (`None` if it uses another character).
fn spelled_bytes(token: &str) -> Option<Vec<u8>> {
    let (_, bytes) = alphabet();
    token.chars().map(|c| bytes.get(&c).copied()).collect()
}

/// `token`, respelled in the byte alphabet if it is not already (as transformers does).
#[cfg(feature = "gguf-tokenizer")]
fn in_alphabet(token: &str) -> String {
    if spelled_bytes(token).is_some() {
        token.to_string()
    } else {
        let (chars, _) = alphabet();
        token.bytes().map(|b| chars[b as usize]).collect()
    }
}

/// The pre-tokenizer named `pre`, as llama.cpp (`llama-vocab.cpp`) defines it.
#[cfg(feature = "gguf-tokenizer")]
fn pre_tokenizer(pre: &str) -> Result<PreTokenizerWrapper> {
    let byte_level = |use_regex: bool| ByteLevel::new(false, false, use_regex);
    let split_then_bytes = |regex: &str| -> Result<PreTokenizerWrapper> {
        let split = Split::new(
            SplitPattern::Regex(regex.into()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(|e| tokenizer_error(format!("the {pre:?} split regex does not compile: {e}")))?;
        Ok(Sequence::new(vec![split.into(), byte_level(false).into()]).into())
    };
    match pre {
        // GPT-2's regex, built into the byte-level pre-tokenizer.
        "default" | "gpt2" | "gpt-2" => Ok(byte_level(true).into()),
        // SmolLM: every digit on its own, then GPT-2's regex.
        "smollm" => Ok(Sequence::new(vec![Digits::new(true).into(), byte_level(true).into()]).into()),
        "llama-bpe" | "llama3" | "llama-v3" => split_then_bytes(LLAMA3_SPLIT),
        "qwen2" => split_then_bytes(QWEN2_SPLIT),
        other => Err(tokenizer_error(format!(
            "tokenizer.ggml.pre is {other:?}, a pre-tokenizer kiln does not know (it knows {KNOWN_PRE})"
        ))),
    }
}

#[cfg(feature = "gguf-tokenizer")]
fn build_encoder(spec: &Spec) -> Result<Encoder> {
    let vocab: tokenizers::models::bpe::Vocab = spec
        .tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (in_alphabet(t), i as u32))
        .collect();
    let merges = spec
        .merges
        .iter()
        .enumerate()
        .map(|(i, m)| match m.split_once(' ') {
            Some((a, b)) if !a.is_empty() && !b.is_empty() && !b.contains(' ') => Ok((a.to_string(), b.to_string())),
            _ => Err(tokenizer_error(format!(
                "merge {i} is {m:?}, not two tokens separated by one space"
            ))),
        })
        .collect::<Result<Vec<_>>>()?;
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(|e| tokenizer_error(format!("cannot build the BPE model: {e}")))?;
    let mut encoder = tokenizers::Tokenizer::new(bpe);
    encoder.with_pre_tokenizer(Some(pre_tokenizer(&spec.pre)?));

    let typed = |ty: i32| {
        spec.tokens
            .iter()
            .zip(&spec.token_types)
            .filter(move |(_, &t)| t == ty)
            .map(|(token, _)| token.as_str())
    };
    // Tokens matched whole in the text. One spelled outside the byte alphabet is a mislabel in
    // the file (transformers skips them too): the model's merges never produce it.
    let whole = |ty: i32, special: bool| -> Vec<AddedToken> {
        typed(ty)
            .filter(|t| spelled_bytes(t).is_some())
            .map(|t| AddedToken::from(t, special).normalized(false))
            .collect()
    };
    encoder
        .add_special_tokens(whole(TOKEN_TYPE_CONTROL, true))
        .map_err(|e| tokenizer_error(format!("cannot add the control tokens: {e}")))?;
    encoder
        .add_tokens(whole(TOKEN_TYPE_USER_DEFINED, false))
        .map_err(|e| tokenizer_error(format!("cannot add the user-defined tokens: {e}")))?;
    Ok(encoder)
}

/// Without the `gguf-tokenizer` feature there is no encoder to build (encoding is an error).
#[cfg(not(feature = "gguf-tokenizer"))]
fn build_encoder(_spec: &Spec) -> Result<Encoder> {
    Ok(Encoder)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alphabet_is_gpt2s() {
        let (chars, bytes) = alphabet();
        assert_eq!(chars[b' ' as usize], 'Ġ');
        assert_eq!(chars[b'\n' as usize], 'Ċ');
        assert_eq!(chars[b'a' as usize], 'a');
        assert_eq!(chars[0], 'Ā');
        assert_eq!(bytes.len(), 256, "the alphabet is a bijection");
    }
}
