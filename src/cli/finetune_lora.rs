//! `kiln finetune --gguf FILE --data FILE... --lora-rank R --out DIR` trains a LoRA adapter for
//! a Llama-architecture GGUF model (docs/finetuning.md), and `kiln finetune --resume --out DIR`
//! continues such a run. The data is read with the file's tokenizer and chat template
//! ([`crate::train::lora`]), the loop is [`crate::train::lora_finetune`], and the adapter lands in
//! `DIR/adapter/` as a PEFT folder that `kiln chat --lora`, `kiln generate --lora`, `kiln merge`
//! and `PeftModel.from_pretrained` read.

use crate::model::{Llama, LlamaLoad};
use crate::nn::{LoraConfig, DEFAULT_LORA_TARGETS};
use crate::tokenizer::Tokenizer;
use crate::train::lora::{pack_windows, read_examples, Example};
use crate::train::lora_checkpoint::{self, LoraRun, Window};
use crate::train::lora_finetune::{finetune_lora, resume_lora, ADAPTER_DIR};
use crate::train::{console, human, RunOptions, TrainConfig};
use crate::{Error, Result};
use clap::Args;
use std::path::{Path, PathBuf};

/// The flags of `kiln finetune --gguf`. Those that shape the adapter or the data conflict with
/// `--from` (a GPT, no adapter) and `--resume` (the run keeps its own).
#[derive(Args, Debug)]
pub struct LoraArgs {
    /// A Llama-architecture GGUF model to train a LoRA adapter for (instead of --from); its
    /// tokenizer and chat template read the data.
    #[arg(long, conflicts_with = "resume")]
    pub gguf: Option<PathBuf>,
    /// With --gguf: the rank r of each adapter [8].
    #[arg(long, conflicts_with_all = ["from", "resume"])]
    pub lora_rank: Option<usize>,
    /// With --gguf: alpha; the adapters' update is scaled by alpha / r [the rank: scale 1].
    #[arg(long, conflicts_with_all = ["from", "resume"])]
    pub lora_alpha: Option<f64>,
    /// With --gguf: the projections that get an adapter, from q_proj, k_proj, v_proj, o_proj,
    /// gate_proj, up_proj, down_proj [q_proj,k_proj,v_proj,o_proj].
    #[arg(long, value_delimiter = ',', conflicts_with_all = ["from", "resume"])]
    pub lora_targets: Vec<String>,
    /// With --gguf: dropout on the adapters' input while training [0].
    #[arg(long, conflicts_with_all = ["from", "resume"])]
    pub lora_dropout: Option<f64>,
    /// With --gguf: tokens per training window [128, at most the model's context].
    #[arg(long, conflicts_with_all = ["from", "resume"])]
    pub block_size: Option<usize>,
    /// With --gguf: gradient checkpointing (keep each block's input only and compute the block
    /// again in the backward: less memory, about one more forward of compute).
    #[arg(long, conflicts_with_all = ["from", "resume"])]
    pub recompute: bool,
    /// With --gguf: what the frozen base weights become: q keeps the projections in the file's
    /// quantized blocks (QLoRA-style: decoded to f32 in each product of a training batch),
    /// bf16 or f32 dequantizes them (bf16 computes in bf16 unless --dtype f32 is given) [f32].
    #[arg(long, value_enum, conflicts_with_all = ["from", "resume"])]
    pub base_dtype: Option<BaseDType>,
}

/// `--base-dtype`: the base model's weights while an adapter trains.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum BaseDType {
    /// As stored in the file (quantized blocks stay quantized).
    Q,
    /// Dequantized to bf16; the model computes in bf16.
    Bf16,
    /// Dequantized to f32.
    F32,
}

impl From<BaseDType> for LlamaLoad {
    fn from(d: BaseDType) -> LlamaLoad {
        match d {
            BaseDType::Q => LlamaLoad::AsStored,
            BaseDType::Bf16 => LlamaLoad::BF16,
            BaseDType::F32 => LlamaLoad::F32,
        }
    }
}

/// The examples of every `data` file, read with `tok`.
fn read_all(data: &[PathBuf], tok: &Tokenizer) -> Result<Vec<Example>> {
    let mut examples = Vec::new();
    for path in data {
        examples.extend(read_examples(path, tok)?);
    }
    Ok(examples)
}

/// Trains a new adapter as the flags `l` say, on `data`, with the run's settings `cfg`
/// (`lora_train_config` in cli/mod.rs).
pub fn cmd_finetune_lora(l: &LoraArgs, data: &[PathBuf], cfg: TrainConfig, opts: &RunOptions) -> Result<()> {
    let Some(gguf) = &l.gguf else {
        return Err(Error::Invalid {
            op: "kiln",
            msg: "give --from DIR or --gguf FILE".into(),
        });
    };
    let rank = l.lora_rank.unwrap_or(8);
    let mut lora = LoraConfig::new(rank, l.lora_alpha.unwrap_or(rank as f64));
    if !l.lora_targets.is_empty() {
        lora.targets = l.lora_targets.clone();
    } else {
        lora.targets = DEFAULT_LORA_TARGETS.map(String::from).to_vec();
    }
    lora.dropout = l.lora_dropout.unwrap_or(0.0);
    lora.validate()?;
    let tok = Tokenizer::from_gguf(gguf)?;
    let examples = read_all(data, &tok)?;
    let base = l.base_dtype.map_or(LlamaLoad::F32, LlamaLoad::from);
    let mut model = Llama::from_gguf_with(gguf, &opts.device, base)?;
    let block = l.block_size.unwrap_or(128).min(model.config().max_position_embeddings);
    let windows = pack_windows(&examples, block);
    if windows.is_empty() {
        return Err(Error::invalid(
            "finetune",
            format!(
                "the data gives no training window of {block} tokens: it needs more tokens than --block-size, with \
                 some of them trained (assistant tokens for chat data)"
            ),
        ));
    }
    let run = LoraRun::new(gguf, data, &windows, l.recompute, base)?;
    model.add_lora(&lora, cfg.seed)?;
    describe(&model, &run, examples.len(), &cfg, opts);
    let losses = finetune_lora(&mut model, &windows, &cfg, &run, opts)?;
    done(&losses, opts)
}

/// Continues the LoRA run in `opts.out_dir` from its checkpoint: the model file, the data and the
/// window size its state recorded, read again and checked; `change` applies the optimisation flags.
pub fn resume_finetune_lora(opts: &RunOptions, change: impl FnOnce(&mut TrainConfig)) -> Result<()> {
    let (_, state) = lora_checkpoint::read_state(&opts.out_dir)?;
    let saved = &state.run;
    let gguf = Path::new(&saved.gguf);
    let data: Vec<PathBuf> = saved.sources.iter().map(PathBuf::from).collect();
    let tok = Tokenizer::from_gguf(gguf)?;
    let examples = read_all(&data, &tok)?;
    let windows: Vec<Window> = pack_windows(&examples, saved.block_size);
    let run = LoraRun::new(gguf, &data, &windows, saved.recompute, saved.base)?;
    let mut model = Llama::from_gguf_with(gguf, &opts.device, saved.base)?;
    let losses = resume_lora(&mut model, &windows, &run, opts, change)?;
    done(&losses, opts)
}

/// The line that opens a run: model, adapter, data, settings.
fn describe(model: &Llama, run: &LoraRun, examples: usize, cfg: &TrainConfig, opts: &RunOptions) {
    let lora = model.lora_config().expect("the adapters were added");
    let trained: usize = model.lora_params().iter().map(|(_, t)| t.numel()).sum();
    console::out(&format!(
        "fine-tuning {}: LoRA rank {}, alpha {} on {} ({} trainable parameters of {}); {examples} examples, {} windows \
         of {} tokens (a fraction {} held out for validation); {} steps of {} windows, lr {:.1e}, on {}",
        run.gguf,
        lora.rank,
        lora.alpha,
        lora.targets.join(","),
        human(trained as f64),
        human(model.num_params() as f64),
        run.windows,
        run.block_size,
        cfg.val_fraction,
        cfg.steps,
        cfg.batch_size,
        cfg.lr,
        opts.device
    ));
}

/// The closing line.
fn done(losses: &[f64], opts: &RunOptions) -> Result<()> {
    console::out(&format!(
        "loss {:.4} -> {:.4}; adapter in {}",
        losses.first().copied().unwrap_or(f64::NAN),
        losses.last().copied().unwrap_or(f64::NAN),
        opts.out_dir.join(ADAPTER_DIR).display()
    ));
    Ok(())
}
