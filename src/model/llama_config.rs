//! [`LlamaConfig`]: the hyper-parameters that fix a Llama-architecture model's shape, read from a
//! Hugging Face `config.json` or from a GGUF file's `llama.*` metadata.

use crate::gguf::GgufFile;
use crate::{Error, Result};
use std::path::Path;

/// The shape of a Llama-architecture model (`LlamaForCausalLM`; SmolLM2 is one).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LlamaConfig {
    /// Number of token ids (rows of the embedding table and of the logits).
    pub vocab_size: usize,
    /// Width of the residual stream, C.
    pub hidden_size: usize,
    /// Width of the SwiGLU feed-forward's hidden layer.
    pub intermediate_size: usize,
    /// Number of transformer blocks.
    pub num_hidden_layers: usize,
    /// Query heads, nh.
    pub num_attention_heads: usize,
    /// Key/value heads, nkv (grouped-query attention: nh / nkv query heads share one).
    pub num_key_value_heads: usize,
    /// The base of the rotary embedding's frequencies: θ_i = pos · rope_theta^(−2i/hs).
    pub rope_theta: f64,
    /// RMSNorm's epsilon.
    pub rms_norm_eps: f64,
    /// The context the model was trained for (positions beyond it are refused).
    pub max_position_embeddings: usize,
    /// The LM head is the token embedding (no separate `lm_head.weight`).
    pub tie_word_embeddings: bool,
}

impl LlamaConfig {
    /// Checks that the numbers describe a model that can be built.
    pub fn validate(&self) -> Result<()> {
        let fail = |msg: String| Err(Error::invalid("LlamaConfig", msg));
        for (name, v) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("max_position_embeddings", self.max_position_embeddings),
        ] {
            if v == 0 {
                return fail(format!("{name} must be at least 1"));
            }
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return fail(format!(
                "hidden_size ({}) must be a multiple of num_attention_heads ({})",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if !self.num_attention_heads.is_multiple_of(self.num_key_value_heads) {
            return fail(format!(
                "num_attention_heads ({}) must be a multiple of num_key_value_heads ({})",
                self.num_attention_heads, self.num_key_value_heads
            ));
        }
        if !self.head_dim().is_multiple_of(2) {
            return fail(format!(
                "the head width hidden_size / num_attention_heads = {} must be even (RoPE rotates pairs)",
                self.head_dim()
            ));
        }
        if self.vocab_size > u32::MAX as usize {
            return fail(format!(
                "vocab_size {} does not fit token ids of type u32",
                self.vocab_size
            ));
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 1.0) {
            return fail(format!("rope_theta must be finite and > 1, got {}", self.rope_theta));
        }
        if !(self.rms_norm_eps.is_finite() && self.rms_norm_eps > 0.0) {
            return fail(format!(
                "rms_norm_eps must be finite and > 0, got {}",
                self.rms_norm_eps
            ));
        }
        Ok(())
    }

    /// Width of one attention head, hs = hidden_size / num_attention_heads.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// The number of parameters a model of this shape has (a tied head counted once).
    pub fn num_params(&self) -> usize {
        let (c, hs) = (self.hidden_size, self.head_dim());
        let kv = self.num_key_value_heads * hs;
        let attn = c * c + 2 * c * kv + c * c;
        let mlp = 3 * c * self.intermediate_size;
        let block = attn + mlp + 2 * c;
        let head = if self.tie_word_embeddings {
            0
        } else {
            self.vocab_size * c
        };
        self.vocab_size * c + self.num_hidden_layers * block + c + head
    }

    /// A config from a Hugging Face `config.json` of a `LlamaForCausalLM`. Options that change
    /// what the network computes and that kiln does not implement (rope scaling, biases, another
    /// activation, a head width other than hidden_size / num_attention_heads) are refused by name.
    pub fn from_hf_json(path: impl AsRef<Path>) -> Result<LlamaConfig> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        let bad = |msg: String| Error::invalid("LlamaConfig::from_hf_json", format!("{}: {msg}", path.display()));
        let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(format!("not valid JSON: {e}")))?;
        let field = |key: &str| json.get(key).filter(|v| !v.is_null());
        let usize_field = |key: &str| -> Result<usize> {
            field(key)
                .and_then(|v| v.as_u64())
                .and_then(|v| usize::try_from(v).ok())
                .ok_or_else(|| bad(format!("missing or non-integer field {key}")))
        };
        let f64_field = |key: &str, default: f64| -> Result<f64> {
            match field(key) {
                None => Ok(default),
                Some(v) => v
                    .as_f64()
                    .ok_or_else(|| bad(format!("field {key} is {v}, not a number"))),
            }
        };
        if let Some(t) = field("model_type") {
            if t.as_str() != Some("llama") {
                return Err(bad(format!(
                    "model_type {t} is not supported (kiln's Llama is \"llama\")"
                )));
            }
        }
        if let Some(act) = field("hidden_act") {
            if act.as_str() != Some("silu") {
                return Err(bad(format!(
                    "hidden_act {act} is not supported (kiln's Llama uses \"silu\")"
                )));
            }
        }
        // transformers ≥ 5 writes {"rope_theta", "rope_type"} under rope_parameters; older
        // versions a top-level rope_theta and, for the scaled variants, rope_scaling
        let rope = field("rope_parameters").or_else(|| field("rope_scaling"));
        if let Some(rope) = rope {
            let kind = rope
                .get("rope_type")
                .or_else(|| rope.get("type"))
                .and_then(|v| v.as_str());
            if kind.is_some_and(|k| k != "default") {
                return Err(bad(format!(
                    "RoPE {rope} is not supported (only plain, \"default\" RoPE)"
                )));
            }
        }
        let rope_theta = match rope.and_then(|r| r.get("rope_theta")) {
            Some(v) => v
                .as_f64()
                .ok_or_else(|| bad(format!("rope_theta is {v}, not a number")))?,
            None => f64_field("rope_theta", 10000.0)?,
        };
        for key in ["attention_bias", "mlp_bias"] {
            if field(key).and_then(|v| v.as_bool()) == Some(true) {
                return Err(bad(format!(
                    "{key} = true is not supported (kiln's Llama has no biases)"
                )));
            }
        }
        let num_attention_heads = usize_field("num_attention_heads")?;
        let cfg = LlamaConfig {
            vocab_size: usize_field("vocab_size")?,
            hidden_size: usize_field("hidden_size")?,
            intermediate_size: usize_field("intermediate_size")?,
            num_hidden_layers: usize_field("num_hidden_layers")?,
            num_attention_heads,
            // absent: multi-head attention (HF's default)
            num_key_value_heads: match field("num_key_value_heads") {
                None => num_attention_heads,
                Some(_) => usize_field("num_key_value_heads")?,
            },
            rope_theta,
            rms_norm_eps: f64_field("rms_norm_eps", 1e-6)?,
            max_position_embeddings: usize_field("max_position_embeddings")?,
            // HF's PretrainedConfig default is true
            tie_word_embeddings: field("tie_word_embeddings").and_then(|v| v.as_bool()).unwrap_or(true),
        };
        if let Some(hd) = field("head_dim") {
            if hd.as_u64() != Some(cfg.head_dim() as u64) {
                return Err(bad(format!(
                    "head_dim {hd} is not supported (kiln's Llama uses hidden_size / num_attention_heads = {})",
                    cfg.hidden_size / cfg.num_attention_heads.max(1)
                )));
            }
        }
        cfg.validate().map_err(|e| bad(e.to_string()))?;
        Ok(cfg)
    }
}

impl LlamaConfig {
    /// A config from a GGUF file's `llama.*` metadata (`general.architecture` must be "llama").
    /// Missing optional keys take llama.cpp's defaults (key/value heads = query heads, RoPE base
    /// 10000); the vocabulary is `llama.vocab_size`, else the tokenizer's token count, else the
    /// rows of `token_embd.weight`; the head is tied when the file has no `output.weight`.
    pub fn from_gguf(file: &GgufFile) -> Result<LlamaConfig> {
        let bad = |msg: String| Error::invalid("LlamaConfig::from_gguf", format!("{}: {msg}", file.name()));
        let arch: &str = file.get("general.architecture")?;
        if arch != "llama" {
            return Err(bad(format!(
                "general.architecture is {arch:?}; kiln's Llama reads \"llama\" files"
            )));
        }
        let int = |key: &str| file.get::<usize>(key);
        if let Some(n) = file.get_opt::<u64>("llama.expert_count")? {
            if n > 0 {
                return Err(bad(format!(
                    "llama.expert_count is {n}: mixture-of-experts models are not supported"
                )));
            }
        }
        if let Some(kind) = file.get_opt::<&str>("llama.rope.scaling.type")? {
            if kind != "none" {
                return Err(bad(format!(
                    "llama.rope.scaling.type {kind:?} is not supported (only plain RoPE)"
                )));
            }
        }
        let num_attention_heads = int("llama.attention.head_count")?;
        let vocab_size = match file.get_opt::<usize>("llama.vocab_size")? {
            Some(v) => v,
            None => match file.metadata().get("tokenizer.ggml.tokens") {
                Some(_) => file.get::<Vec<&str>>("tokenizer.ggml.tokens")?.len(),
                None => file.tensor_info("token_embd.weight")?.shape()[0],
            },
        };
        let cfg = LlamaConfig {
            vocab_size,
            hidden_size: int("llama.embedding_length")?,
            intermediate_size: int("llama.feed_forward_length")?,
            num_hidden_layers: int("llama.block_count")?,
            num_attention_heads,
            num_key_value_heads: file
                .get_opt::<usize>("llama.attention.head_count_kv")?
                .unwrap_or(num_attention_heads),
            rope_theta: file.get_opt::<f32>("llama.rope.freq_base")?.map_or(10000.0, decimal),
            rms_norm_eps: decimal(file.get::<f32>("llama.attention.layer_norm_rms_epsilon")?),
            max_position_embeddings: int("llama.context_length")?,
            tie_word_embeddings: !file.tensors().iter().any(|t| t.name == "output.weight"),
        };
        cfg.validate().map_err(|e| bad(e.to_string()))?;
        if let Some(d) = file.get_opt::<usize>("llama.rope.dimension_count")? {
            if d != cfg.head_dim() {
                return Err(bad(format!(
                    "llama.rope.dimension_count {d} is not supported (kiln rotates whole heads of width {})",
                    cfg.head_dim()
                )));
            }
        }
        Ok(cfg)
    }
}

/// The f64 of the shortest decimal that rounds to `x`: GGUF stores these as f32, and the
/// converter wrote the decimal of config.json (1e-5 is stored as 9.99999974738e-6; read back as
/// 1e-5, so the config equals the Hugging Face one).
fn decimal(x: f32) -> f64 {
    x.to_string().parse().unwrap_or(f64::from(x))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn smollm2_135m() -> LlamaConfig {
        LlamaConfig {
            vocab_size: 49152,
            hidden_size: 576,
            intermediate_size: 1536,
            num_hidden_layers: 30,
            num_attention_heads: 9,
            num_key_value_heads: 3,
            rope_theta: 100000.0,
            rms_norm_eps: 1e-5,
            max_position_embeddings: 8192,
            tie_word_embeddings: true,
        }
    }

    #[test]
    fn smollm2_135m_has_the_parameter_count_transformers_gives() {
        // transformers 5.25: LlamaForCausalLM(this config).num_parameters() == 134,515,008
        assert_eq!(smollm2_135m().num_params(), 134_515_008);
    }

    #[test]
    fn gqa_heads_must_divide() {
        let cfg = LlamaConfig {
            num_key_value_heads: 4,
            ..smollm2_135m()
        };
        let e = cfg.validate().unwrap_err().to_string();
        assert!(e.contains("num_key_value_heads (4)"), "{e}");
    }
}
