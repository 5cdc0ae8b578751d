//! A [`Llama`] as a Hugging Face folder (`config.json` + `model.safetensors`, as
//! `LlamaForCausalLM.save_pretrained` writes them), its LoRA adapters merged into the weights:
//! what `kiln merge` writes (docs/finetuning.md).
//!
//! Each adapted projection becomes W + s·B·A (s = alpha/r, or alpha/√r with rsLoRA), in f32. A
//! model loaded from GGUF keeps the q and k rows in llama.cpp's order, and so do its merged q and
//! k matrices (B's rows are stored in that order too, see [`super::lora`]); they are written in
//! Hugging Face's order, as transformers' own GGUF reader un-permutes them, so the folder loads
//! in transformers and in [`Llama::from_hf_dir`] with the same logits.

use super::lora::rows_from_gguf;
use super::{Llama, RopeLayout};
use crate::model::io;
use crate::{DType, Device, Error, Result, Tensor};
use serde_json::{json, Value};
use std::path::Path;

/// The model's configuration in a Hugging Face model folder (`LlamaConfig`'s fields, JSON).
pub const HF_CONFIG: &str = "config.json";
/// The weights in a Hugging Face model folder, under their Hugging Face names.
pub const HF_WEIGHTS: &str = "model.safetensors";
/// transformers' generation defaults in a Hugging Face model folder (here: the BOS and EOS ids,
/// so `generate` stops at the end of a turn).
pub const HF_GENERATION_CONFIG: &str = "generation_config.json";

impl Llama {
    /// Every weight by its Hugging Face name, in state-dict order (`model.embed_tokens.weight`,
    /// `model.layers.{i}.self_attn.q_proj.weight`, ..., `model.norm.weight`, `lm_head.weight`
    /// unless tied): f32 on the CPU, each adapter merged into its projection, q and k rows in
    /// Hugging Face's order. A projection kept quantized ([`crate::model::LlamaLoad::AsStored`])
    /// is refused: load the model dequantized to merge it.
    pub fn merged_weights(&self) -> Result<Vec<(String, Tensor)>> {
        let _no_grad = crate::no_grad();
        let quantized: Vec<String> = self
            .layers
            .iter()
            .enumerate()
            .flat_map(|(i, l)| {
                l.projections()
                    .into_iter()
                    .filter(|(_, lin)| lin.quantized.is_some())
                    .map(move |(name, _)| format!("model.layers.{i}.{name}.weight"))
            })
            .chain(
                self.lm_head
                    .iter()
                    .filter(|h| h.quantized.is_some())
                    .map(|_| "lm_head.weight".to_string()),
            )
            .collect();
        if let Some(first) = quantized.first() {
            return Err(Error::invalid(
                "merged_weights",
                format!(
                    "{} projections are kept quantized ({first}, ...); load the model with LlamaLoad::F32 to merge \
                     and export it",
                    quantized.len()
                ),
            ));
        }
        let cpu_f32 = |t: &Tensor| t.to_device(&Device::Cpu)?.to_dtype(DType::F32)?.contiguous();
        let gguf_rows = self.rope_layout == RopeLayout::Interleaved;
        let (n_head, n_kv) = (self.cfg.num_attention_heads, self.cfg.num_key_value_heads);
        let mut merged = Vec::new();
        for (i, block) in self.layers.iter().enumerate() {
            for (name, linear) in block.projections() {
                // w is (out, in); the adapter adds s·B·A, (out, r)·(r, in)
                let mut w = cpu_f32(&linear.weight)?;
                if let Some(lora) = &linear.lora {
                    let delta = cpu_f32(&lora.b)?.matmul(&cpu_f32(&lora.a)?)?;
                    w = w.add(&delta.mul_scalar(lora.scale)?)?;
                }
                if gguf_rows {
                    match name {
                        "self_attn.q_proj" => w = rows_from_gguf(&w, n_head)?,
                        "self_attn.k_proj" => w = rows_from_gguf(&w, n_kv)?,
                        _ => {}
                    }
                }
                merged.push((format!("model.layers.{i}.{name}.weight"), w.contiguous()?));
            }
        }
        // the other weights as they are (the names of the Params walk, llama_params.rs)
        let mut out = Vec::new();
        for (name, t) in self.params() {
            let taken = merged.iter().position(|(n, _)| *n == name);
            let t = match taken {
                Some(at) => merged.swap_remove(at).1,
                None => cpu_f32(&t)?,
            };
            out.push((name, t));
        }
        debug_assert!(merged.is_empty(), "every projection is a parameter");
        io::check_finite(&out, "merged_weights")?;
        Ok(out)
    }

    /// The `config.json` transformers reads for this model (`LlamaForCausalLM`, f32 weights), with
    /// the given beginning- and end-of-sequence ids (the tokenizer's; the model does not know
    /// them). Both RoPE spellings are written: `rope_parameters` (transformers ≥ 5) and
    /// `rope_theta` (older versions).
    pub fn hf_config(&self, bos_token_id: Option<u32>, eos_token_id: Option<u32>) -> Value {
        let c = &self.cfg;
        json!({
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "attention_bias": false,
            "attention_dropout": 0.0,
            "mlp_bias": false,
            "hidden_act": "silu",
            "hidden_size": c.hidden_size,
            "intermediate_size": c.intermediate_size,
            "num_hidden_layers": c.num_hidden_layers,
            "num_attention_heads": c.num_attention_heads,
            "num_key_value_heads": c.num_key_value_heads,
            "head_dim": c.head_dim(),
            "max_position_embeddings": c.max_position_embeddings,
            "rms_norm_eps": c.rms_norm_eps,
            "rope_theta": c.rope_theta,
            "rope_parameters": {"rope_theta": c.rope_theta, "rope_type": "default"},
            "tie_word_embeddings": c.tie_word_embeddings,
            "vocab_size": c.vocab_size,
            "bos_token_id": bos_token_id,
            "eos_token_id": eos_token_id,
            "pretraining_tp": 1,
            "use_cache": true,
            "torch_dtype": "float32",
            "dtype": "float32",
        })
    }

    /// Writes the model, adapters merged, into the existing folder `dir`: [`HF_CONFIG`]
    /// ([`Llama::hf_config`]), [`HF_GENERATION_CONFIG`] (the BOS and EOS ids, those that are
    /// known) and [`HF_WEIGHTS`] ([`Llama::merged_weights`], f32, with `{"format": "pt"}`
    /// metadata as transformers writes it), each file atomically.
    pub fn save_hf_files(&self, dir: impl AsRef<Path>, bos: Option<u32>, eos: Option<u32>) -> Result<()> {
        let dir = dir.as_ref();
        let weights = self.merged_weights()?;
        let metadata = [("format".to_string(), "pt".to_string())].into_iter().collect();
        io::save_tensors(&dir.join(HF_WEIGHTS), &weights, Some(metadata))?;
        write_hf_json(dir.join(HF_CONFIG), &self.hf_config(bos, eos))?;
        let mut generation = serde_json::Map::new();
        for (key, id) in [("bos_token_id", bos), ("eos_token_id", eos)] {
            if let Some(id) = id {
                generation.insert(key.to_string(), id.into());
            }
        }
        write_hf_json(dir.join(HF_GENERATION_CONFIG), &Value::Object(generation))
    }
}

/// Writes `value` as a JSON file of a Hugging Face folder (pretty, as transformers writes its
/// configs, ending in a newline), atomically.
pub fn write_hf_json(path: impl AsRef<Path>, value: &Value) -> Result<()> {
    let mut text = serde_json::to_string_pretty(value).expect("a serde_json::Value serializes");
    text.push('\n');
    io::write_atomic(path.as_ref(), text.as_bytes())
}
