//! LoRA adapters on a [`Llama`]: adding fresh ones, listing them, and reading and writing them as
//! a Hugging Face PEFT folder (`adapter_config.json` + `adapter_model.safetensors`, tensors named
//! `base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.weight` etc.).
//!
//! A model loaded from GGUF keeps the q and k rows in llama.cpp's order (see [`RopeLayout`]): row
//! i + j·hs/2 of each head of PEFT's (Hugging Face's) order is its row 2i + j. ΔW = B·A permutes
//! with its rows, that is with B's rows, so B of q_proj and k_proj is permuted when an adapter is
//! loaded into such a model and permuted back when it is saved; A and every other matrix are
//! untouched. AdamW works element by element, so training the permuted B is training PEFT's.

use super::{Llama, RopeLayout};
use crate::model::io;
use crate::nn::{Lora, LoraConfig, LoraDropout, LORA_TARGETS};
use crate::{DType, Error, Result, Rng, Tensor};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// The adapter's configuration in a PEFT adapter folder (rank, alpha, targets; JSON).
pub const ADAPTER_CONFIG: &str = "adapter_config.json";
/// The adapter's A and B matrices in a PEFT adapter folder, under PEFT's key names.
pub const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";

/// PEFT's prefix of a LoRA tensor's name: `base_model.model.` + the module's name in the model.
const PEFT_PREFIX: &str = "base_model.model.";

impl Llama {
    /// Adds fresh LoRA adapters of shape `cfg` (A Kaiming-uniform from a generator seeded with
    /// `seed`, B zero) to the targeted projections of every block, replacing any adapters there,
    /// and freezes the base ([`Llama::freeze_base`]). Dropout stays off until
    /// [`Llama::set_lora_training`].
    pub fn add_lora(&mut self, cfg: &LoraConfig, seed: u64) -> Result<()> {
        cfg.validate()?;
        let dev = *self.device();
        let mut rng = Rng::new(seed);
        self.freeze_base();
        for block in &mut self.layers {
            for (name, linear) in block.projections_mut() {
                linear.lora = match cfg.targets(module_target(name)) {
                    true => Some(Lora::new(
                        linear.in_features(),
                        linear.out_features(),
                        cfg,
                        &mut rng,
                        &dev,
                    )?),
                    false => None,
                };
            }
        }
        self.lora = Some(cfg.clone());
        Ok(())
    }

    /// The shape of the adapters, if the model has any.
    pub fn lora_config(&self) -> Option<&LoraConfig> {
        self.lora.as_ref()
    }

    /// The adapters' tensors by PEFT name (`base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`,
    /// ...), A before B, block by block: the parameters to train and to look gradients up with.
    /// For a model loaded from GGUF the rows of B in q_proj and k_proj are in the file's order
    /// (see the module comment); [`Llama::save_adapter`] writes PEFT's.
    pub fn lora_params(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for (i, block) in self.layers.iter().enumerate() {
            for (name, linear) in block.projections() {
                if let Some(lora) = &linear.lora {
                    let (a, b) = peft_names(i, name);
                    out.push((a, lora.a.clone()));
                    out.push((b, lora.b.clone()));
                }
            }
        }
        out
    }

    /// Turns the adapters' dropout on (`Some(seed)`: training, masks drawn from one generator
    /// seeded with `seed`) or off (`None`: evaluation, the default). Without adapters, or with
    /// dropout 0, nothing changes.
    pub fn set_lora_training(&mut self, seed: Option<u64>) {
        let p = self.lora.as_ref().map_or(0.0, |c| c.dropout);
        let rng = seed.map(|s| Arc::new(Mutex::new(Rng::new(s))));
        for block in &mut self.layers {
            for (_, linear) in block.projections_mut() {
                if let Some(lora) = &mut linear.lora {
                    lora.dropout = match (&rng, p > 0.0) {
                        (Some(rng), true) => Some(LoraDropout { p, rng: rng.clone() }),
                        _ => None,
                    };
                }
            }
        }
    }

    /// Loads a PEFT LoRA adapter folder (`adapter_config.json` + `adapter_model.safetensors`), as
    /// PEFT's `save_pretrained` or [`Llama::save_adapter`] writes it, replacing any adapters the
    /// model has and freezing the base. The adapters are f32 leaves that take a gradient (so
    /// training can go on). Config options kiln does not implement are refused by name (DoRA,
    /// `fan_in_fan_out`, per-module rank or alpha patterns, a subset of layers, trained biases or
    /// extra modules, regex targets); rsLoRA's scale is implemented. Every missing, unexpected or
    /// mis-shaped tensor is listed in the error.
    pub fn load_adapter(&mut self, dir: impl AsRef<Path>) -> Result<()> {
        let dir = dir.as_ref();
        let config_path = dir.join(ADAPTER_CONFIG);
        let cfg = parse_adapter_config(&config_path)?;
        let weights = dir.join(ADAPTER_WEIGHTS);
        let source = weights.display().to_string();
        let (tensors, _) = io::load_tensors(&weights, &crate::Device::Cpu)?;
        let mut tensors: BTreeMap<String, Tensor> = tensors.into_iter().collect();
        // every expected tensor, by name, with its shape; then what the file lacks or has extra
        let (r, dev) = (cfg.rank, *self.device());
        let mut expected = Vec::new();
        for (i, block) in self.layers.iter().enumerate() {
            for (name, linear) in block.projections() {
                if cfg.targets(module_target(name)) {
                    let (a, b) = peft_names(i, name);
                    expected.push((a, vec![r, linear.in_features()]));
                    expected.push((b, vec![linear.out_features(), r]));
                }
            }
        }
        let mut problems = Vec::new();
        for (name, shape) in &expected {
            match tensors.get(name) {
                None => problems.push(format!("  missing: {name} {shape:?}")),
                Some(t) if t.shape() != shape.as_slice() => problems.push(format!(
                    "  shape mismatch: {name}: file {:?}, expected {shape:?} (r = {r})",
                    t.shape()
                )),
                Some(t) if !t.dtype().is_float() => problems.push(format!("  {name} is {}, not a float", t.dtype())),
                Some(_) => {}
            }
        }
        for (name, t) in &tensors {
            if !expected.iter().any(|(n, _)| n == name) {
                problems.push(format!("  unexpected: {name} {:?}", t.shape()));
            }
        }
        if !problems.is_empty() {
            return Err(Error::invalid(
                "load_adapter",
                format!(
                    "{source} does not fit {} (r = {r}, targets {:?}) on this model ({} blocks, width {}); {} problems:\n{}",
                    config_path.display(),
                    cfg.targets,
                    self.layers.len(),
                    self.cfg.hidden_size,
                    problems.len(),
                    problems.join("\n")
                ),
            ));
        }
        // all checked: build the adapters, then install them at once
        let (n_head, n_kv) = (self.cfg.num_attention_heads, self.cfg.num_key_value_heads);
        let gguf_rows = self.rope_layout == RopeLayout::Interleaved;
        let mut adapters = Vec::new();
        for (i, block) in self.layers.iter().enumerate() {
            for (name, _) in block.projections() {
                if !cfg.targets(module_target(name)) {
                    adapters.push(None);
                    continue;
                }
                let (a_name, b_name) = peft_names(i, name);
                let take = |t: Tensor| t.to_dtype(DType::F32)?.contiguous()?.to_device(&dev);
                let a = take(tensors.remove(&a_name).expect("checked above"))?;
                let mut b = take(tensors.remove(&b_name).expect("checked above"))?;
                if gguf_rows {
                    match module_target(name) {
                        "q_proj" => b = rows_to_gguf(&b, n_head)?,
                        "k_proj" => b = rows_to_gguf(&b, n_kv)?,
                        _ => {}
                    }
                }
                adapters.push(Some(Lora {
                    a: a.requires_grad(),
                    b: b.requires_grad(),
                    scale: cfg.scale(),
                    dropout: None,
                }));
            }
        }
        self.freeze_base();
        let mut adapters = adapters.into_iter();
        for block in &mut self.layers {
            for (_, linear) in block.projections_mut() {
                linear.lora = adapters.next().expect("one per projection");
            }
        }
        self.lora = Some(cfg);
        Ok(())
    }

    /// Writes the adapters as a PEFT folder `dir` (created if needed): `adapter_config.json` and
    /// `adapter_model.safetensors` (f32, PEFT's names, B's rows in PEFT's order whatever the
    /// model was loaded from), each atomically. `PeftModel.from_pretrained` reads it on the
    /// transformers model of the same weights.
    pub fn save_adapter(&self, dir: impl AsRef<Path>) -> Result<()> {
        let dir = dir.as_ref();
        let Some(cfg) = &self.lora else {
            return Err(Error::invalid(
                "save_adapter",
                "the model has no LoRA adapters (add_lora or load_adapter first)",
            ));
        };
        let (n_head, n_kv) = (self.cfg.num_attention_heads, self.cfg.num_key_value_heads);
        let gguf_rows = self.rope_layout == RopeLayout::Interleaved;
        let _no_grad = crate::no_grad();
        let mut tensors = Vec::new();
        for (name, t) in self.lora_params() {
            let t = t.to_device(&crate::Device::Cpu)?.to_dtype(DType::F32)?;
            let t = match (
                gguf_rows,
                name.contains(".q_proj.lora_B"),
                name.contains(".k_proj.lora_B"),
            ) {
                (true, true, _) => rows_from_gguf(&t, n_head)?,
                (true, _, true) => rows_from_gguf(&t, n_kv)?,
                _ => t,
            };
            tensors.push((name, t.contiguous()?));
        }
        io::check_finite(&tensors, "save_adapter")?;
        std::fs::create_dir_all(dir).map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        let metadata = [("format".to_string(), "pt".to_string())].into_iter().collect();
        io::save_tensors(&dir.join(ADAPTER_WEIGHTS), &tensors, Some(metadata))?;
        let config = json!({
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "r": cfg.rank,
            "lora_alpha": cfg.alpha,
            "lora_dropout": cfg.dropout,
            "target_modules": cfg.targets,
            "use_rslora": cfg.use_rslora,
            "use_dora": false,
            "bias": "none",
            "fan_in_fan_out": false,
            "inference_mode": true,
            "base_model_name_or_path": null,
        });
        let text = serde_json::to_string_pretty(&config).expect("a json! value serializes");
        io::write_atomic(&dir.join(ADAPTER_CONFIG), text.as_bytes())
    }
}

/// `self_attn.q_proj` -> `q_proj`.
fn module_target(name: &str) -> &str {
    name.rsplit('.').next().unwrap_or(name)
}

/// PEFT's names of the A and B tensors of projection `name` (`self_attn.q_proj`) in block `layer`.
fn peft_names(layer: usize, name: &str) -> (String, String) {
    let module = format!("{PEFT_PREFIX}model.layers.{layer}.{name}");
    (format!("{module}.lora_A.weight"), format!("{module}.lora_B.weight"))
}

/// Rows of a (n·hs, r) matrix from Hugging Face's order to llama.cpp's, head by head: row
/// i + j·hs/2 of a head becomes row 2i + j (convert_hf_to_gguf.py's permute).
fn rows_to_gguf(w: &Tensor, n_head: usize) -> Result<Tensor> {
    let (rows, r) = (w.shape()[0], w.shape()[1]);
    let half = rows / n_head / 2;
    // (n, j, i, r) -> (n, i, j, r)
    w.reshape(&[n_head, 2, half, r])?
        .permute(&[0, 2, 1, 3])?
        .contiguous()?
        .reshape(&[rows, r])
}

/// The inverse of [`rows_to_gguf`] (for any number of columns: B's r, or a whole weight's `in`).
pub(super) fn rows_from_gguf(w: &Tensor, n_head: usize) -> Result<Tensor> {
    let (rows, r) = (w.shape()[0], w.shape()[1]);
    let half = rows / n_head / 2;
    // (n, i, j, r) -> (n, j, i, r)
    w.reshape(&[n_head, half, 2, r])?
        .permute(&[0, 2, 1, 3])?
        .contiguous()?
        .reshape(&[rows, r])
}

/// The [`LoraConfig`] of a PEFT `adapter_config.json`, refusing what kiln does not implement.
fn parse_adapter_config(path: &Path) -> Result<LoraConfig> {
    let shown = path.display();
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(format!("reading {shown}"), e))?;
    let v: Value = serde_json::from_str(&text)
        .map_err(|e| Error::invalid("load_adapter", format!("{shown}: not valid JSON: {e}")))?;
    let bad = |msg: String| Error::invalid("load_adapter", format!("{shown}: {msg}"));
    if !v.is_object() {
        return Err(bad("expected a JSON object".into()));
    }
    let get = |key: &str| v.get(key).filter(|x| !x.is_null());
    if let Some(t) = get("peft_type") {
        if t != "LORA" {
            return Err(bad(format!("peft_type is {t}; kiln loads LORA adapters")));
        }
    }
    let rank = get("r")
        .and_then(Value::as_u64)
        .filter(|&r| r >= 1)
        .ok_or_else(|| bad(format!("\"r\" must be a whole number ≥ 1, got {:?}", get("r"))))? as usize;
    let number = |key: &str, default: f64| match get(key) {
        None => Ok(default),
        Some(x) => x
            .as_f64()
            .ok_or_else(|| bad(format!("\"{key}\" must be a number, got {x}"))),
    };
    let flag = |key: &str| match get(key) {
        None => Ok(false),
        Some(x) => x
            .as_bool()
            .ok_or_else(|| bad(format!("\"{key}\" must be true or false, got {x}"))),
    };
    // PEFT's defaults where a key is absent: alpha 8, dropout 0
    let alpha = number("lora_alpha", 8.0)?;
    let dropout = number("lora_dropout", 0.0)?;
    let use_rslora = flag("use_rslora")?;
    for key in ["use_dora", "fan_in_fan_out", "lora_bias", "use_qalora", "use_bdlora"] {
        if flag(key)? {
            return Err(bad(format!("\"{key}\": true is not supported by kiln")));
        }
    }
    if let Some(b) = get("bias") {
        if b != "none" {
            return Err(bad(format!(
                "\"bias\": {b} (trained biases) is not supported; kiln needs \"none\""
            )));
        }
    }
    let unset = |x: &Value| match x {
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        _ => false,
    };
    for key in [
        "rank_pattern",
        "alpha_pattern",
        "layers_to_transform",
        "layers_pattern",
        "modules_to_save",
        "exclude_modules",
        "target_parameters",
        "trainable_token_indices",
        "layer_replication",
        "alora_invocation_tokens",
    ] {
        if let Some(x) = get(key) {
            if !unset(x) {
                return Err(bad(format!("\"{key}\": {x} is not supported by kiln (leave it null)")));
            }
        }
    }
    let targets: Vec<String> = match get("target_modules") {
        Some(Value::Array(names)) => names
            .iter()
            .map(|n| {
                n.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| bad(format!("\"target_modules\" holds {n}, not a module name")))
            })
            .collect::<Result<_>>()?,
        Some(Value::String(s)) if s == "all-linear" => LORA_TARGETS.iter().map(|s| s.to_string()).collect(),
        Some(Value::String(s)) if LORA_TARGETS.contains(&s.as_str()) => vec![s.clone()],
        Some(x) => {
            return Err(bad(format!(
            "\"target_modules\": {x} (a regular expression) is not supported; list module names from {LORA_TARGETS:?}"
        )))
        }
        None => return Err(bad("\"target_modules\" is missing".into())),
    };
    let cfg = LoraConfig {
        rank,
        alpha,
        dropout,
        targets,
        use_rslora,
    };
    cfg.validate().map_err(|e| bad(e.to_string()))?;
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The GGUF row order against convert_hf_to_gguf.py's permute written out by hand: for a head
    /// of width 4 (half 2), HF rows [0, 1, 2, 3] sit at GGUF rows [0, 2, 1, 3].
    #[test]
    fn gguf_row_order_is_the_converters() {
        let dev = crate::Device::Cpu;
        let n_head = 2;
        let hf: Vec<f32> = (0..8 * 3).map(|x| x as f32).collect(); // (8, 3): 2 heads of 4 rows, r = 3
        let w = Tensor::from_vec(hf.clone(), &[8, 3], &dev).unwrap();
        let got = rows_to_gguf(&w, n_head).unwrap().to_vec::<f32>().unwrap();
        // gguf row 2i + j = hf row i + j·half, per head
        let mut want = vec![0f32; 24];
        for h in 0..n_head {
            for i in 0..2 {
                for j in 0..2 {
                    let (g, f) = (h * 4 + 2 * i + j, h * 4 + i + j * 2);
                    want[g * 3..g * 3 + 3].copy_from_slice(&hf[f * 3..f * 3 + 3]);
                }
            }
        }
        assert_eq!(got, want);
        let back = rows_from_gguf(&Tensor::from_vec(got, &[8, 3], &dev).unwrap(), n_head).unwrap();
        assert_eq!(back.to_vec::<f32>().unwrap(), hf);
    }
}
