//! `kiln finetune --gguf FILE --data FILE... --lora-rank R --out DIR`: trains a LoRA adapter for
//! a Llama-architecture GGUF model (docs/finetuning.md). The data is read with the file's
//! tokenizer and chat template ([`crate::train::lora`]), the loop is
//! [`crate::train::lora_finetune`], and the adapter lands in `DIR/adapter/` as a PEFT folder that
//! `kiln chat --lora`, `kiln generate --lora` and `PeftModel.from_pretrained` read.

use crate::model::Llama;
use crate::nn::{LoraConfig, DEFAULT_LORA_TARGETS};
use crate::tokenizer::Tokenizer;
use crate::train::lora::{pack_windows, read_examples};
use crate::train::lora_finetune::{finetune_lora, ADAPTER_DIR};
use crate::train::{console, human, RunOptions, TrainConfig};
use crate::{DType, Error, Result};
use clap::Args;
use std::path::PathBuf;

/// The flags of `kiln finetune --gguf`.
#[derive(Args, Debug)]
pub struct LoraArgs {
    /// A Llama-architecture GGUF model to train a LoRA adapter for (instead of --from); its
    /// tokenizer and chat template read the data.
    #[arg(long)]
    pub gguf: Option<PathBuf>,
    /// With --gguf: the rank r of each adapter.
    #[arg(long, default_value_t = 8, requires = "gguf")]
    pub lora_rank: usize,
    /// With --gguf: alpha; the adapters' update is scaled by alpha / r [the rank: scale 1].
    #[arg(long, requires = "gguf")]
    pub lora_alpha: Option<f64>,
    /// With --gguf: the projections that get an adapter, from q_proj, k_proj, v_proj, o_proj,
    /// gate_proj, up_proj, down_proj.
    #[arg(long, value_delimiter = ',', default_values_t = DEFAULT_LORA_TARGETS.map(String::from), requires = "gguf")]
    pub lora_targets: Vec<String>,
    /// With --gguf: dropout on the adapters' input while training.
    #[arg(long, default_value_t = 0.0, requires = "gguf")]
    pub lora_dropout: f64,
    /// With --gguf: tokens per training window [128, at most the model's context].
    #[arg(long, requires = "gguf")]
    pub block_size: Option<usize>,
    /// With --gguf: gradient checkpointing (keep each block's input only and compute the block
    /// again in the backward: less memory, about one more forward of compute).
    #[arg(long, requires = "gguf")]
    pub recompute: bool,
}

/// Trains an adapter as the flags `l` say, on `data`, with the run's settings `cfg`
/// (`lora_train_config` in cli/mod.rs) and compute dtype.
pub fn cmd_finetune_lora(
    l: &LoraArgs,
    data: &[PathBuf],
    cfg: TrainConfig,
    dtype: Option<DType>,
    opts: &RunOptions,
) -> Result<()> {
    let Some(gguf) = &l.gguf else {
        return Err(Error::Invalid {
            op: "kiln",
            msg: "give --from DIR or --gguf FILE".into(),
        });
    };
    let mut lora = LoraConfig::new(l.lora_rank, l.lora_alpha.unwrap_or(l.lora_rank as f64));
    lora.targets = l.lora_targets.clone();
    lora.dropout = l.lora_dropout;
    lora.validate()?;
    let tok = Tokenizer::from_gguf(gguf)?;
    let mut examples = Vec::new();
    for path in data {
        examples.extend(read_examples(path, &tok)?);
    }
    let mut model = Llama::from_gguf(gguf, &opts.device)?;
    let block = l.block_size.unwrap_or(128).min(model.config().max_position_embeddings);
    let windows = pack_windows(&examples, block);
    if let Some(d) = dtype {
        model.set_dtype(d)?;
    }
    model.set_recompute(l.recompute);
    model.add_lora(&lora, cfg.seed)?;
    let trained: usize = model.lora_params().iter().map(|(_, t)| t.numel()).sum();
    console::out(&format!(
        "fine-tuning {}: LoRA rank {}, alpha {} on {} ({} trainable parameters of {}); {} examples, {} windows \
         of {block} tokens; {} steps of {} windows, lr {:.1e}, on {}",
        gguf.display(),
        lora.rank,
        lora.alpha,
        lora.targets.join(","),
        human(trained as f64),
        human(model.num_params() as f64),
        examples.len(),
        windows.len(),
        cfg.steps,
        cfg.batch_size,
        cfg.lr,
        opts.device
    ));
    let losses = finetune_lora(&mut model, &windows, &cfg, &opts.out_dir)?;
    console::out(&format!(
        "loss {:.4} -> {:.4}; adapter in {}",
        losses.first().copied().unwrap_or(f64::NAN),
        losses.last().copied().unwrap_or(f64::NAN),
        opts.out_dir.join(ADAPTER_DIR).display()
    ));
    Ok(())
}
