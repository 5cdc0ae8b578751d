//! `kiln merge --gguf FILE --lora DIR --out FOLDER`: a Llama-architecture GGUF model with a LoRA
//! adapter merged into its weights, written as a Hugging Face folder (`config.json`,
//! `generation_config.json`, `model.safetensors` (f32, Hugging Face's names and q/k row order),
//! and the GGUF file's tokenizer as `tokenizer.json` + `tokenizer_config.json`) that transformers'
//! `AutoModelForCausalLM.from_pretrained(FOLDER)` / `AutoTokenizer.from_pretrained(FOLDER)` and
//! kiln's `Llama::from_hf_dir` load (docs/finetuning.md, "Merging an adapter").
//!
//! The folder is written whole or not at all: staged in a sibling folder, then renamed into
//! place. An existing `--out` that holds anything is refused unless `--force` is given (then it
//! is replaced, the old folder kept aside until the new one is in place).

use crate::gguf::GgufFile;
use crate::model::{io, write_hf_json, Llama, HF_CONFIG, HF_GENERATION_CONFIG, HF_WEIGHTS};
use crate::tokenizer::{GgufTokenizer, HF_TOKENIZER, HF_TOKENIZER_CONFIG};
use crate::train::{atomic, console, human};
use crate::{Device, Error, Result};
use clap::Args;
use std::path::{Path, PathBuf};

#[derive(Args, Debug)]
pub struct MergeArgs {
    /// The Llama-architecture GGUF model the adapter was trained on.
    #[arg(long)]
    pub gguf: PathBuf,
    /// The LoRA adapter folder (adapter_config.json + adapter_model.safetensors, as `kiln finetune`
    /// or Hugging Face PEFT writes it).
    #[arg(long, value_name = "DIR")]
    pub lora: PathBuf,
    /// The Hugging Face folder to write (config.json, generation_config.json, model.safetensors in
    /// f32, and the tokenizer as tokenizer.json + tokenizer_config.json); it must not exist or be
    /// empty, unless --force.
    #[arg(long, value_name = "FOLDER")]
    pub out: PathBuf,
    /// Replace --out even if it holds files.
    #[arg(long)]
    pub force: bool,
}

pub fn cmd_merge(a: MergeArgs) -> Result<()> {
    check_out(&a.out, a.force)?;
    let mut model = Llama::from_gguf(&a.gguf, &Device::Cpu)?;
    model.load_adapter(&a.lora)?;
    // the tokenizer's ids for config.json, where the file has them, and the tokenizer itself
    let file = GgufFile::open(&a.gguf)?;
    let bos = file.get_opt::<u32>("tokenizer.ggml.bos_token_id")?;
    let eos = file.get_opt::<u32>("tokenizer.ggml.eos_token_id")?;
    let tokenizer = match file.get_opt::<&str>("tokenizer.ggml.model")? {
        Some(_) => Some(GgufTokenizer::from_file(&file)?),
        None => None,
    };
    drop(file);
    let context = model.config().max_position_embeddings;
    let name = a
        .out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let parent = atomic::parent_dir(&a.out);
    let pid = std::process::id();
    let staged = parent.join(format!(".{name}.merge-tmp-{pid}"));
    let backup = parent.join(format!(".{name}.merge-old-{pid}"));
    let written = std::fs::create_dir(&staged)
        .map_err(|e| Error::io(format!("creating {}", staged.display()), e))
        .and_then(|()| model.save_hf_files(&staged, bos, eos))
        .and_then(|()| match &tokenizer {
            Some(t) => save_tokenizer(t, &staged, context),
            None => Ok(()),
        })
        .and_then(|()| atomic::swap_dir(&staged, &a.out, &backup));
    if let Err(e) = written {
        let _ = std::fs::remove_dir_all(&staged);
        return Err(e);
    }
    let cfg = model.lora_config().expect("load_adapter set it");
    let bytes = std::fs::metadata(a.out.join(HF_WEIGHTS)).map_or(0, |m| m.len());
    let tokenizer_files = match tokenizer {
        Some(_) => format!(", {HF_TOKENIZER} and {HF_TOKENIZER_CONFIG}"),
        None => " (the GGUF file has no tokenizer, so the folder has none)".to_string(),
    };
    console::out(&format!(
        "merged {} (LoRA rank {}, alpha {}, on {}) into {}: wrote {} ({} parameters, {}B), {}, {}{}",
        a.lora.display(),
        cfg.rank,
        cfg.alpha,
        cfg.targets.join(","),
        a.gguf.display(),
        a.out.join(HF_WEIGHTS).display(),
        human(model.num_params() as f64),
        human(bytes as f64),
        HF_CONFIG,
        HF_GENERATION_CONFIG,
        tokenizer_files
    ));
    Ok(())
}

/// Writes the GGUF file's tokenizer into `dir` as Hugging Face's [`HF_TOKENIZER`] and
/// [`HF_TOKENIZER_CONFIG`] (`model_max_length` the model's `context`), each file atomically.
fn save_tokenizer(tokenizer: &GgufTokenizer, dir: &Path, context: usize) -> Result<()> {
    let mut json = tokenizer.hf_tokenizer_json()?;
    json.push('\n');
    io::write_atomic(&dir.join(HF_TOKENIZER), json.as_bytes())?;
    write_hf_json(dir.join(HF_TOKENIZER_CONFIG), &tokenizer.hf_tokenizer_config(context))
}

/// `--out` must be a folder that does not exist or is empty, unless `force`; never a file.
fn check_out(out: &Path, force: bool) -> Result<()> {
    let bad = |msg: String| Err(Error::invalid("merge", msg));
    if out.file_name().is_none() {
        return bad(format!("--out {} must name a folder", out.display()));
    }
    if !out.exists() {
        return Ok(());
    }
    if !out.is_dir() {
        return bad(format!("--out {} is a file, not a folder", out.display()));
    }
    let mut entries = std::fs::read_dir(out).map_err(|e| Error::io(format!("listing {}", out.display()), e))?;
    if entries.next().is_some() && !force {
        return bad(format!(
            "--out {} is not empty; choose another folder, or give --force to replace it",
            out.display()
        ));
    }
    Ok(())
}
