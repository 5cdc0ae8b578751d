//! Weights on disk: kiln's own checkpoints of a [`Gpt`] and Hugging Face GPT-2 folders, on top of
//! the safetensors reading and writing of [`crate::safetensors`].
//!
//! kiln stores every Linear weight as `[out, in]` (PyTorch's `nn.Linear`, nanoGPT's state
//! dict). Hugging Face's GPT-2 uses `Conv1D` modules, which store `[in, out]`;
//! [`Gpt::from_hf_dir`] transposes those on import.

use super::config::GptConfig;
use super::gpt::Gpt;
use crate::{Device, Error, Result};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

// The format-level reading and writing lives in crate::safetensors; these names stay here for the
// checkpoint code and the tests that reach them through model::io.
pub use crate::safetensors::{
    check_finite, load_tensors, parse_tensors, read_shapes, save_tensors, serialize_tensors, write_atomic, NamedTensors,
};

/// The metadata key under which kiln stores the model's [`GptConfig`] (JSON).
pub const CONFIG_KEY: &str = "kiln.gpt_config";

/// Checks that `given` (tensor names and shapes from a weights file) are exactly the parameters
/// of `cfg`, listing every missing, unexpected and mismatched one: run before a model of `cfg` is
/// built, so that a config with absurd sizes next to ordinary weights is refused at once.
pub fn check_config_matches(cfg: &GptConfig, given: &BTreeMap<String, Vec<usize>>, source: &str) -> Result<()> {
    cfg.validate()
        .map_err(|e| Error::invalid("load_safetensors", format!("{source}: {e}")))?;
    let expected = cfg.param_shapes();
    let mut problems = Vec::new();
    for (name, shape) in &expected {
        match given.get(name) {
            None => problems.push(format!("  missing: {name} {shape:?}")),
            Some(s) if s != shape => problems.push(format!("  shape mismatch: {name}: file {s:?}, config {shape:?}")),
            Some(_) => {}
        }
    }
    let names: std::collections::HashSet<&str> = expected.iter().map(|(n, _)| n.as_str()).collect();
    for (name, shape) in given {
        if !names.contains(name.as_str()) {
            problems.push(format!("  unexpected: {name} {shape:?}"));
        }
    }
    if problems.is_empty() {
        return Ok(());
    }
    const SHOWN: usize = 20;
    let more = problems.len().saturating_sub(SHOWN);
    problems.truncate(SHOWN);
    if more > 0 {
        problems.push(format!("  ... and {more} more"));
    }
    Err(Error::invalid(
        "load_safetensors",
        format!(
            "{source}: the weights do not fit the config (n_layer {}, n_embd {}, block_size {}, vocab_size {}):\n{}",
            cfg.n_layer,
            cfg.n_embd,
            cfg.block_size,
            cfg.vocab_size,
            problems.join("\n")
        ),
    ))
}

impl Gpt {
    /// Writes every parameter (HF names, kiln's `[out, in]` Linear layout) and the config
    /// (metadata key [`CONFIG_KEY`]) to a safetensors file, atomically: a temporary file in
    /// the same folder, fsync, rename.
    pub fn save_safetensors(&self, path: &Path) -> Result<()> {
        write_atomic(path, &self.safetensors_bytes()?)
    }

    /// The bytes [`Gpt::save_safetensors`] writes (the same for the same weights, byte for byte).
    pub fn safetensors_bytes(&self) -> Result<Vec<u8>> {
        let config = serde_json::to_string(self.config())
            .map_err(|e| Error::invalid("save_safetensors", format!("config: {e}")))?;
        let metadata = HashMap::from([
            (CONFIG_KEY.to_string(), config),
            ("format".to_string(), "pt".to_string()),
        ]);
        serialize_tensors(&self.params(), Some(metadata))
    }

    /// Loads parameters written by [`Gpt::save_safetensors`] into this model. The file must
    /// hold exactly this model's tensors with the same shapes; otherwise the error lists every
    /// missing, unexpected and mismatched tensor with its shapes, and the model is unchanged.
    pub fn load_safetensors(&mut self, path: &Path) -> Result<()> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        self.load_safetensors_bytes(&bytes, &path.display().to_string())
    }

    /// As [`Gpt::load_safetensors`] from a file's bytes in memory; `source` names the file.
    pub fn load_safetensors_bytes(&mut self, bytes: &[u8], source: &str) -> Result<()> {
        let (tensors, metadata) = parse_tensors(bytes, source, self.device())?;
        let note = match metadata.get(CONFIG_KEY).map(|s| serde_json::from_str::<GptConfig>(s)) {
            Some(Ok(cfg)) if &cfg != self.config() => {
                format!(" (the file was saved from {cfg:?}; this model is {:?})", self.config())
            }
            _ => String::new(),
        };
        crate::nn::load_named_from(self, tensors, Some(&format!("{source}{note}")))
    }

    /// Loads a Hugging Face GPT-2 folder as `save_pretrained` writes it: `config.json` and
    /// `model.safetensors` (Conv1D weights `[in, out]`, transposed here; a `lm_head.weight`,
    /// if present, must equal the tied token embedding).
    pub fn from_hf_dir(dir: &Path, dev: &Device) -> Result<Gpt> {
        let cfg = hf_config(&dir.join("config.json"))?;
        let weights = dir.join("model.safetensors");
        if !weights.is_file() {
            return Err(missing_hf_weights(dir));
        }
        let (tensors, _) = load_tensors(&weights, dev)?;
        let mut renamed = Vec::with_capacity(tensors.len());
        let mut lm_head = None;
        for (name, t) in tensors {
            let name = if name.starts_with("transformer.") || name == "lm_head.weight" {
                name
            } else {
                format!("transformer.{name}") // saved from a bare GPT2Model
            };
            if name.ends_with(".attn.bias") && t.dims() == 4 || name.ends_with(".attn.masked_bias") {
                continue; // old transformers versions saved the causal-mask buffers
            }
            if name == "lm_head.weight" {
                lm_head = Some(t);
                continue;
            }
            let conv1d = [
                ".attn.c_attn.weight",
                ".attn.c_proj.weight",
                ".mlp.c_fc.weight",
                ".mlp.c_proj.weight",
            ];
            let t = if conv1d.iter().any(|s| name.ends_with(s)) && t.dims() == 2 {
                t.transpose(0, 1)?.contiguous()?
            } else {
                t
            };
            renamed.push((name, t));
        }
        if let Some(head) = lm_head {
            let wte = renamed
                .iter()
                .find(|(n, _)| n == "transformer.wte.weight")
                .map(|(_, t)| t);
            let tied = match wte {
                Some(wte) if wte.shape() == head.shape() => wte.to_vec::<f32>()? == head.to_vec::<f32>()?,
                _ => false,
            };
            if !tied {
                return Err(Error::invalid(
                    "from_hf_dir",
                    format!(
                        "{}: lm_head.weight differs from transformer.wte.weight; kiln's GPT ties them",
                        weights.display()
                    ),
                ));
            }
        }
        // the config's sizes are checked against the file's tensors before the model is built
        let shapes = renamed.iter().map(|(n, t)| (n.clone(), t.shape().to_vec())).collect();
        check_config_matches(&cfg, &shapes, &weights.display().to_string())?;
        let mut model = Gpt::zeros(cfg, dev)?;
        crate::nn::load_named_from(&mut model, renamed, Some(&weights.display().to_string()))?;
        Ok(model)
    }
}

/// The error for a Hugging Face folder without `model.safetensors`: which weight files it holds
/// instead, which kiln reads, and how to convert.
fn missing_hf_weights(dir: &Path) -> Error {
    let mut found: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| {
                    n.ends_with(".bin")
                        || n.ends_with(".safetensors")
                        || n.ends_with(".index.json")
                        || n.ends_with(".h5")
                        || n.ends_with(".msgpack")
                        || n.ends_with(".pt")
                        || n.ends_with(".pth")
                })
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    let holds = if found.is_empty() {
        "no weight file".to_string()
    } else {
        found.join(", ")
    };
    Error::invalid(
        "from_hf_dir",
        format!(
            "{} has no model.safetensors (it holds {holds}). kiln reads a Hugging Face GPT-2 folder's weights from \
             one model.safetensors file: not pytorch_model.bin (a pickle), not TensorFlow or Flax files, not \
             weights sharded into model-0000N-of-0000M.safetensors. Convert with transformers: python -c \
             \"from transformers import GPT2LMHeadModel as M; M.from_pretrained('{dir}').save_pretrained('OUT', \
             safe_serialization=True, max_shard_size='1000GB')\" and give kiln OUT",
            dir.display(),
            dir = dir.display()
        ),
    )
}

/// A [`GptConfig`] from a Hugging Face GPT-2 `config.json`; options kiln's GPT does not
/// implement are refused by name.
fn hf_config(path: &Path) -> Result<GptConfig> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    let bad = |msg: String| Error::invalid("from_hf_dir", format!("{}: {msg}", path.display()));
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(format!("not valid JSON: {e}")))?;
    // the first of `keys` present; a value of another type is named as such, not as missing
    let usize_field = |keys: &[&str]| -> Result<usize> {
        let Some((key, v)) = keys.iter().find_map(|k| json.get(*k).map(|v| (k, v))) else {
            return Err(bad(format!("missing integer field {}", keys.join(" or "))));
        };
        v.as_u64().and_then(|n| usize::try_from(n).ok()).ok_or_else(|| {
            bad(format!(
                "{key} is {v}, which is not a whole number ≥ 0 (write it without quotes)"
            ))
        })
    };
    let n_embd = usize_field(&["n_embd", "hidden_size"])?;
    let cfg = GptConfig {
        vocab_size: usize_field(&["vocab_size"])?,
        block_size: usize_field(&["n_positions", "n_ctx"])?,
        n_layer: usize_field(&["n_layer", "num_hidden_layers"])?,
        n_head: usize_field(&["n_head", "num_attention_heads"])?,
        n_embd,
        dropout: json.get("resid_pdrop").and_then(|v| v.as_f64()).unwrap_or(0.0),
        bias: true,
    };
    // Each option below changes what the network computes; a value kiln does not implement is
    // refused by name rather than loaded into a model that would silently differ. An absent key
    // (or, where HF allows it, null) means HF's default, which is kiln's.
    let field = |key: &str| json.get(key).filter(|v| !v.is_null());
    if let Some(t) = field("model_type") {
        // other architectures reuse GPT-2's tensor names (ImageGPT: another LayerNorm and GELU)
        if t.as_str() != Some("gpt2") {
            return Err(bad(format!("model_type {t} is not supported (kiln's GPT is \"gpt2\")")));
        }
    }
    if let Some(act) = field("activation_function") {
        // gelu_pytorch_tanh and gelu_fast are the same tanh formula as gelu_new
        if !matches!(act.as_str(), Some("gelu_new" | "gelu_pytorch_tanh" | "gelu_fast")) {
            return Err(bad(format!(
                "activation_function {act} is not supported (kiln's GPT uses the tanh GELU, \"gelu_new\")"
            )));
        }
    }
    if let Some(n_inner) = field("n_inner") {
        if n_inner.as_u64() != Some(4 * n_embd as u64) {
            return Err(bad(format!(
                "n_inner {n_inner} is not supported (kiln's MLP is 4·n_embd = {}; null means that too)",
                4 * n_embd
            )));
        }
    }
    if let Some(eps) = field("layer_norm_epsilon") {
        if eps
            .as_f64()
            .is_none_or(|e| (e - super::gpt::LN_EPS as f64).abs() > 1e-12)
        {
            return Err(bad(format!(
                "layer_norm_epsilon {eps} is not supported (kiln uses 1e-5)"
            )));
        }
    }
    // true: every layer's scores divided by its index + 1, not in kiln's attention
    if json.get("scale_attn_by_inverse_layer_idx").and_then(|v| v.as_bool()) == Some(true) {
        return Err(bad("scale_attn_by_inverse_layer_idx = true is not supported".into()));
    }
    // false: scores not divided by √hs
    if json.get("scale_attn_weights").and_then(|v| v.as_bool()) == Some(false) {
        return Err(bad("scale_attn_weights = false is not supported".into()));
    }
    if json.get("tie_word_embeddings").and_then(|v| v.as_bool()) == Some(false) {
        return Err(bad(
            "tie_word_embeddings = false is not supported (kiln ties the LM head)".into(),
        ));
    }
    // reorder_and_upcast_attn is accepted: HF then computes the same scaled, masked softmax, only
    // with the scores in f32 under autocast (a mixed-precision detail, not another model)
    cfg.validate().map_err(|e| bad(e.to_string()))?;
    Ok(cfg)
}
