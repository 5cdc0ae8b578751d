//! What the commands that write model text share: the sampling flags (`generate`, `chat`), the
//! compute-dtype flag, and streaming tokens to stdout as they are drawn ([`TokenWriter`],
//! [`stream`]).

use crate::model::{CausalLm, LlamaLoad};
use crate::tokenizer::{StreamDecoder, Tokenizer};
use crate::train::{Finish, Generated, Generator, SampleOptions};
use crate::{DType, Error, Result, Rng};
use clap::{Args, ValueEnum};
use std::io::{StdoutLock, Write};

/// The model's compute dtype on the command line (`--dtype`).
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ComputeDType {
    /// f32 throughout.
    F32,
    /// Mixed precision: bf16 matmuls, attention, layer norms and activations; f32 weights,
    /// optimizer state, kernel statistics and loss.
    Bf16,
}

impl From<ComputeDType> for DType {
    fn from(d: ComputeDType) -> DType {
        match d {
            ComputeDType::F32 => DType::F32,
            ComputeDType::Bf16 => DType::BF16,
        }
    }
}

/// What a GGUF model's weights become on the command line (`chat --dtype`, `bench --dtypes`).
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightsDType {
    /// Dequantized to f32, computing in f32.
    F32,
    /// Dequantized, cast once to bf16; activations and the KV cache in bf16.
    Bf16,
    /// Quantized projections kept in their block format, multiplied with 8-bit activations
    /// (on the CPU, or with the CUDA kernels on cuda and emu); the rest f32, the KV cache f16
    /// (llama.cpp's default).
    Stored,
}

impl From<WeightsDType> for LlamaLoad {
    fn from(d: WeightsDType) -> LlamaLoad {
        match d {
            WeightsDType::F32 => LlamaLoad::F32,
            WeightsDType::Bf16 => LlamaLoad::BF16,
            WeightsDType::Stored => LlamaLoad::AsStored,
        }
    }
}

/// The dtype of a GGUF model's KV cache on the command line (`--kv-dtype`).
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvDType {
    /// f32: no rounding of the keys and values.
    F32,
    /// bf16: half the bytes, 8 significant bits.
    Bf16,
    /// f16: half the bytes, 11 significant bits, values past ±65504 overflow (llama.cpp's default).
    F16,
}

impl From<KvDType> for DType {
    fn from(d: KvDType) -> DType {
        match d {
            KvDType::F32 => DType::F32,
            KvDType::Bf16 => DType::BF16,
            KvDType::F16 => DType::F16,
        }
    }
}

/// How each next token is drawn.
#[derive(Args, Debug, Clone)]
pub struct SampleArgs {
    #[arg(long, default_value_t = 200)]
    pub max_new_tokens: usize,
    /// 0 is greedy decoding.
    #[arg(long, default_value_t = 0.8)]
    pub temperature: f64,
    /// Sample among the k most likely tokens (0: all).
    #[arg(long, default_value_t = 200)]
    pub top_k: usize,
    /// Nucleus sampling: the most likely tokens whose probabilities sum to p (1: all).
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f64,
    #[arg(long, default_value_t = 1337)]
    pub seed: u64,
}

impl SampleArgs {
    /// The options, checked (before a possibly large model is loaded). top-p goes through as
    /// given so that a value above 1 or NaN is refused rather than read as "all".
    pub fn options(&self) -> Result<SampleOptions> {
        let opts = SampleOptions {
            max_new_tokens: self.max_new_tokens,
            temperature: self.temperature,
            top_k: (self.top_k > 0).then_some(self.top_k),
            top_p: Some(self.top_p),
        };
        opts.validate()?;
        Ok(opts)
    }
}

/// The context of the error for a failed write to stdout.
pub const WRITING_STDOUT: &str = "writing to stdout";

/// Writes generated text to stdout as it comes, flushing each piece. Control characters (an
/// undertrained model emits some) could drive the terminal; they are shown as U+FFFD. Newlines
/// and tabs pass. When stdout is closed (a pipe whose reader left: `kiln generate | head -c
/// 100`) writes stop quietly; any other failed write (a full disk) is an error.
pub struct TokenWriter {
    out: StdoutLock<'static>,
    closed: bool,
}

impl TokenWriter {
    pub fn new() -> TokenWriter {
        TokenWriter {
            out: std::io::stdout().lock(),
            closed: false,
        }
    }

    /// Writes `s`; whether stdout is still open.
    pub fn write(&mut self, s: &str) -> Result<bool> {
        if self.closed {
            return Ok(false);
        }
        let shown: String = s
            .chars()
            .map(|c| {
                if c.is_control() && c != '\n' && c != '\t' {
                    '\u{FFFD}'
                } else {
                    c
                }
            })
            .collect();
        match self.out.write_all(shown.as_bytes()).and_then(|()| self.out.flush()) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                self.closed = true;
                Ok(false)
            }
            Err(e) => Err(Error::io(WRITING_STDOUT, e)),
        }
    }
}

impl Default for TokenWriter {
    fn default() -> Self {
        TokenWriter::new()
    }
}

/// The token ids of `prompt`, or a one-token default for an empty prompt.
pub fn encode_prompt(tok: &Tokenizer, prompt: &str) -> Result<Vec<u32>> {
    if prompt.is_empty() {
        return Ok(match tok {
            Tokenizer::Gpt2 => vec![crate::tokenizer::GPT2_EOT],
            _ => tok.encode("\n").unwrap_or_else(|_| vec![0]),
        });
    }
    tok.encode(prompt).map_err(|e| match e {
        Error::Invalid { msg, .. } => Error::Invalid {
            op: "generate",
            msg: format!("cannot encode the prompt: {msg}"),
        },
        other => other,
    })
}

/// Streams the prompt and the continuation `generator` draws to stdout; returns the generated
/// text and the generation's outcome. A closed stdout ends the generation quietly (see
/// [`TokenWriter`]).
pub fn stream<M: CausalLm>(
    generator: &mut Generator<M>,
    tok: &Tokenizer,
    prompt: &str,
    opts: &SampleOptions,
    seed: u64,
) -> Result<(String, Generated)> {
    let ids = encode_prompt(tok, prompt)?;
    let mut out = TokenWriter::new();
    let mut text = String::new();
    if !out.write(prompt)? {
        let nothing = Generated {
            tokens: Vec::new(),
            finish: Finish::Callback,
            reused: 0,
            prefilled: 0,
        };
        return Ok((text, nothing));
    }
    let mut rng = Rng::new(seed);
    let generated = stream_tokens(generator, tok, &ids, opts, &mut rng, &mut out, &mut text)?;
    out.write("\n")?;
    Ok((text, generated))
}

/// Generates after `ids`, writing each piece of text to `out` once its UTF-8 is whole and
/// appending it to `text`.
pub fn stream_tokens<M: CausalLm>(
    generator: &mut Generator<M>,
    tok: &Tokenizer,
    ids: &[u32],
    opts: &SampleOptions,
    rng: &mut Rng,
    out: &mut TokenWriter,
    text: &mut String,
) -> Result<Generated> {
    let mut decoder = StreamDecoder::new();
    let generated = generator.generate(ids, opts, rng, |id| {
        let piece = decoder.push(tok, id);
        text.push_str(&piece);
        out.write(&piece)
    })?;
    let rest = decoder.finish();
    text.push_str(&rest);
    out.write(&rest)?;
    Ok(generated)
}
