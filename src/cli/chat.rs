//! `kiln chat --gguf FILE` and `kiln generate --gguf FILE`: a Llama-architecture GGUF model
//! (SmolLM2-135M-Instruct, ...) with the tokenizer and chat template the file carries.
//!
//! A chat keeps the conversation as messages. Each turn renders all of it with the model's chat
//! template (plus the generation prompt, `<|im_start|>assistant\n` for SmolLM2), encodes it, and
//! streams the answer until the file's end-of-sequence token (`<|im_end|>`) or
//! `--max-new-tokens`. The KV cache is kept between turns: the new rendering starts with the
//! previous turns' tokens, so only the tokens after the shared prefix are read again
//! ([`Generator`]).

use super::generation::{stream, stream_tokens, ComputeDType, KvDType, SampleArgs, TokenWriter, WeightsDType};
use crate::model::{CausalLm, Llama, LlamaLoad};
use crate::tokenizer::{ChatMessage, Tokenizer};
use crate::train::{console, human, ContextFull, Finish, Generator, SampleOptions};
use crate::{DType, Device, Error, Result, Rng};
use clap::Args;
use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};

#[derive(Args, Debug)]
pub struct ChatArgs {
    /// A Llama-architecture GGUF file with a tokenizer and a chat template
    /// (`./scripts/fetch-smollm2.sh` fetches SmolLM2-135M-Instruct and prints its path).
    #[arg(long)]
    pub gguf: PathBuf,
    /// A LoRA adapter folder (adapter_config.json + adapter_model.safetensors, as `kiln finetune`
    /// or Hugging Face PEFT writes it) applied to the model.
    #[arg(long, value_name = "DIR")]
    pub lora: Option<PathBuf>,
    /// Answer this one message and exit (without it: a chat on stdin, one message per line,
    /// Ctrl-D to leave).
    #[arg(long)]
    pub prompt: Option<String>,
    /// The system message (without it: the template's default, if it has one).
    #[arg(long)]
    pub system: Option<String>,
    #[command(flatten)]
    pub sample: SampleArgs,
    /// cpu, emu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// What the weights become: f32 (dequantized), bf16 (dequantized, cast to bf16 once,
    /// activations and KV cache in bf16), or stored (quantized projections kept in their block
    /// format, multiplied with 8-bit activations as llama.cpp does, on every device; the KV cache
    /// in f16, as llama.cpp's).
    #[arg(long, value_enum, default_value = "f32")]
    pub dtype: WeightsDType,
    /// The KV cache's dtype: f32, bf16 or f16 (default: the compute dtype's, f16 with --dtype
    /// stored). A 16-bit cache halves the bytes a decode step reads from it.
    #[arg(long, value_enum)]
    pub kv_dtype: Option<KvDType>,
    /// Print each turn's rendered prompt, how many of its tokens came from the KV cache, and the
    /// answer's token ids to stderr.
    #[arg(long)]
    pub verbose: bool,
}

/// The model of the GGUF file at `path` (whose tokenizer is `tok`) with the LoRA adapter folder
/// `lora` if given, computing in `dtype` on `device`, its KV cache in `kv` (the model's default,
/// [`Llama::kv_dtype`], when `None`).
fn load(
    path: &Path,
    lora: Option<&Path>,
    tok: &Tokenizer,
    device: &str,
    dtype: WeightsDType,
    kv: Option<KvDType>,
) -> Result<Llama> {
    let dev: Device = device.parse()?;
    // bf16 is cast after the adapter is attached, so that the adapter is cast with the model
    let how = match dtype {
        WeightsDType::Stored => LlamaLoad::AsStored,
        WeightsDType::F32 | WeightsDType::Bf16 => LlamaLoad::F32,
    };
    let mut model = Llama::from_gguf_with(path, &dev, how)?;
    // inference only: frozen, so its weights are laid out for decoding
    model.freeze_base();
    if let Some(dir) = lora {
        model.load_adapter(dir)?;
        if let Some(cfg) = model.lora_config() {
            console::err(&format!(
                "adapter {}: rank {}, alpha {}, on {}",
                dir.display(),
                cfg.rank,
                cfg.alpha,
                cfg.targets.join(",")
            ));
        }
    }
    if dtype == WeightsDType::Bf16 {
        model.set_dtype(DType::BF16)?;
    }
    if let Some(kv) = kv {
        model.set_kv_dtype(kv.into())?;
    }
    let cfg = model.config();
    console::err(&format!(
        "{}: {} parameters ({} layers, width {}, {} query / {} key-value heads, context {}); tokenizer {}; \
         computing in {} on {dev}, KV cache in {}",
        path.display(),
        human(model.num_params() as f64),
        cfg.num_hidden_layers,
        cfg.hidden_size,
        cfg.num_attention_heads,
        cfg.num_key_value_heads,
        cfg.max_position_embeddings,
        tok.describe(),
        model.dtype(),
        model.kv_dtype()
    ));
    Ok(model)
}

/// A generator for `model` that stops at the tokenizer's end-of-sequence token and at the end
/// of the model's context.
fn generator(model: &Llama, tok: &Tokenizer) -> Result<Generator<Llama>> {
    let stop: Vec<u32> = tok.eos_id().into_iter().collect();
    Ok(Generator::new(model)?
        .stop_at(&stop)
        .when_context_full(ContextFull::Stop))
}

fn context_full(n_ctx: usize, what: &str) -> Error {
    Error::invalid(
        "chat",
        format!("{what} filled the model's context of {n_ctx} positions (llama.context_length)"),
    )
}

/// `kiln generate --gguf FILE [--lora DIR]`: continues `prompt` (no chat template) until the file's
/// end-of-sequence token or `opts.max_new_tokens`.
#[allow(clippy::too_many_arguments)] // the command's flags
pub fn generate_gguf(
    path: &Path,
    lora: Option<&Path>,
    prompt: &str,
    opts: &SampleOptions,
    seed: u64,
    device: &str,
    dtype: ComputeDType,
    kv: Option<KvDType>,
) -> Result<()> {
    let tok = Tokenizer::from_gguf(path)?;
    let dtype = match dtype {
        ComputeDType::F32 => WeightsDType::F32,
        ComputeDType::Bf16 => WeightsDType::Bf16,
    };
    let model = load(path, lora, &tok, device, dtype, kv)?;
    let mut gen = generator(&model, &tok)?;
    let (_, generated) = stream(&mut gen, &tok, prompt, opts, seed)?;
    if generated.finish == Finish::ContextFull {
        return Err(context_full(model.context_len(), "the text"));
    }
    Ok(())
}

/// `kiln chat`.
pub fn cmd_chat(a: ChatArgs) -> Result<()> {
    let opts = a.sample.options()?;
    let mut messages: Vec<ChatMessage> = a.system.iter().map(ChatMessage::system).collect();
    // a file without a template is refused before its weights are read
    let tok = Tokenizer::from_gguf(&a.gguf)?;
    tok.apply_chat_template(&[ChatMessage::user("")], true)?;
    let model = load(&a.gguf, a.lora.as_deref(), &tok, &a.device, a.dtype, a.kv_dtype)?;
    let mut chat = Chat {
        tok: &tok,
        gen: generator(&model, &tok)?,
        rng: Rng::new(a.sample.seed),
        out: TokenWriter::new(),
        opts,
        verbose: a.verbose,
        turn: 0,
    };
    if let Some(prompt) = a.prompt {
        chat.turn(&mut messages, prompt)?;
        return Ok(());
    }
    let stdin = std::io::stdin();
    let interactive = stdin.is_terminal();
    if interactive {
        console::err("type a message and press Enter; Ctrl-D leaves");
    }
    let mut line = String::new();
    loop {
        if interactive {
            // a prompt on the terminal; a stderr that cannot take it is no reason to stop
            let _ = write!(std::io::stderr(), "> ").and_then(|()| std::io::stderr().flush());
        }
        line.clear();
        let n = stdin
            .lock()
            .read_line(&mut line)
            .map_err(|e| Error::io("reading a message from stdin", e))?;
        if n == 0 {
            return Ok(()); // end of input (Ctrl-D)
        }
        let message = line.trim_end_matches(['\n', '\r']);
        if message.trim().is_empty() {
            continue;
        }
        if !chat.turn(&mut messages, message.to_string())? {
            return Ok(()); // stdout was closed
        }
    }
}

/// The state a chat keeps between turns (the messages are kept by the caller).
struct Chat<'t> {
    tok: &'t Tokenizer,
    gen: Generator<Llama>,
    rng: Rng,
    out: TokenWriter,
    opts: SampleOptions,
    verbose: bool,
    turn: usize,
}

impl Chat<'_> {
    /// Adds the user's `message`, streams the answer and adds it to `messages`; false when
    /// stdout is closed.
    fn turn(&mut self, messages: &mut Vec<ChatMessage>, message: String) -> Result<bool> {
        self.turn += 1;
        messages.push(ChatMessage::user(message));
        let rendered = self.tok.apply_chat_template(messages, true)?;
        let ids = self.tok.encode(&rendered)?;
        let n_ctx = self.gen.context_len();
        if ids.len() >= n_ctx {
            return Err(Error::invalid(
                "chat",
                format!(
                    "the conversation is {} tokens, and the model's context holds {n_ctx} positions \
                     (llama.context_length): no room for an answer; start a new chat",
                    ids.len()
                ),
            ));
        }
        if self.verbose {
            console::err(&format!(
                "[turn {}] prompt, {} tokens:\n{rendered}\n[turn {}] end of prompt",
                self.turn,
                ids.len(),
                self.turn
            ));
        }
        let mut text = String::new();
        let g = stream_tokens(
            &mut self.gen,
            self.tok,
            &ids,
            &self.opts,
            &mut self.rng,
            &mut self.out,
            &mut text,
        )?;
        let open = self.out.write("\n")? && g.finish != Finish::Callback;
        if self.verbose {
            console::err(&format!(
                "[turn {}] {} prompt tokens reused from the KV cache, {} read; answer ids {:?}; finish {:?}",
                self.turn, g.reused, g.prefilled, g.tokens, g.finish
            ));
        }
        messages.push(ChatMessage::assistant(self.tok.decode(&g.tokens)));
        if g.finish == Finish::ContextFull {
            return Err(context_full(n_ctx, "the conversation"));
        }
        Ok(open)
    }
}
