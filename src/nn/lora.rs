//! LoRA, low-rank adaptation (Hu et al., 2021): a frozen `Linear` W (out, in) learns a change
//! ΔW = s·B·A of rank r through two small matrices, A (r, in) and B (out, r), so that
//!
//!   y = x·Wᵀ + s·(dropout(x)·Aᵀ)·Bᵀ,   s = alpha / r   (alpha / √r with rsLoRA)
//!
//! A starts Kaiming-uniform and B at zero, as Hugging Face PEFT initialises them: the adapted
//! layer starts equal to the base one and the first step already moves B. Only A and B train;
//! (x·Aᵀ) is (..., r), so the adapter costs 2·r·(in + out) FLOPs per token against the base's
//! 2·in·out, and nothing is ever formed at the size of W.
//!
//! The adapter is computed beside the base product, whatever computes that: a base weight kept
//! quantized (dequantized on the fly in its matmul) only changes the `x·Wᵀ` half.

use crate::{DType, Device, Error, Result, Rng, Tensor};
use std::sync::{Arc, Mutex};

/// Every projection of a Llama block LoRA can adapt, by its Hugging Face module name.
pub const LORA_TARGETS: [&str; 7] = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

/// The default targets: the four attention projections (PEFT's own default for Llama is q_proj
/// and v_proj only; adapting k and o as well costs little and is the common choice).
pub const DEFAULT_LORA_TARGETS: [&str; 4] = ["q_proj", "k_proj", "v_proj", "o_proj"];

/// The shape of a LoRA adapter: rank, scale, dropout and which projections it adapts.
#[derive(Clone, Debug, PartialEq)]
pub struct LoraConfig {
    /// r, the rank of ΔW (≥ 1).
    pub rank: usize,
    /// alpha: the update is scaled by alpha / r (alpha / √r with `use_rslora`).
    pub alpha: f64,
    /// The dropout probability on the adapter's input (training only), in [0, 1).
    pub dropout: f64,
    /// Module names from [`LORA_TARGETS`].
    pub targets: Vec<String>,
    /// Rank-stabilised LoRA (Kalajdzievski, 2023): scale alpha / √r instead of alpha / r.
    pub use_rslora: bool,
}

impl LoraConfig {
    /// Rank `rank`, the given alpha, no dropout, the [`DEFAULT_LORA_TARGETS`].
    pub fn new(rank: usize, alpha: f64) -> LoraConfig {
        LoraConfig {
            rank,
            alpha,
            dropout: 0.0,
            targets: DEFAULT_LORA_TARGETS.iter().map(|s| s.to_string()).collect(),
            use_rslora: false,
        }
    }

    /// s, the factor of B·A.
    pub fn scale(&self) -> f64 {
        match self.use_rslora {
            true => self.alpha / (self.rank as f64).sqrt(),
            false => self.alpha / self.rank as f64,
        }
    }

    /// Whether `module` (e.g. `q_proj`) is adapted.
    pub fn targets(&self, module: &str) -> bool {
        self.targets.iter().any(|t| t == module)
    }

    /// Checks rank, alpha, dropout and the target names.
    pub fn validate(&self) -> Result<()> {
        let invalid = |msg: String| Err(Error::invalid("lora", msg));
        if self.rank == 0 {
            return invalid("the rank must be at least 1".into());
        }
        if !self.alpha.is_finite() {
            return invalid(format!("alpha must be finite, got {}", self.alpha));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return invalid(format!("dropout must be in [0, 1), got {}", self.dropout));
        }
        if self.targets.is_empty() {
            return invalid(format!("no target modules; choose from {LORA_TARGETS:?}"));
        }
        for (i, t) in self.targets.iter().enumerate() {
            if !LORA_TARGETS.contains(&t.as_str()) {
                return invalid(format!("unknown target module {t:?}; choose from {LORA_TARGETS:?}"));
            }
            if self.targets[..i].contains(t) {
                return invalid(format!("target module {t:?} is listed twice"));
            }
        }
        Ok(())
    }
}

/// Dropout on the adapter's input while training: the probability and the generator that all
/// adapters of a model share (so a seed fixes every mask of a run).
#[derive(Clone, Debug)]
pub struct LoraDropout {
    /// The probability of zeroing an input element, in [0, 1).
    pub p: f64,
    /// The generator of the masks, shared by every adapter of a model.
    pub rng: Arc<Mutex<Rng>>,
}

/// The trainable half of an adapted `Linear`: A (r, in), B (out, r), the scale s, and the dropout
/// when training.
#[derive(Clone, Debug)]
pub struct Lora {
    /// A `[r, in]`: projects the input down to rank r.
    pub a: Tensor,
    /// B `[out, r]`: projects back up; PEFT initialises it to zeros, so a fresh adapter changes nothing.
    pub b: Tensor,
    /// s, the factor on the adapter's output (PEFT's `lora_alpha / r`).
    pub scale: f64,
    /// The dropout on the adapter's input while training; `None` for none.
    pub dropout: Option<LoraDropout>,
}

impl Lora {
    /// A fresh adapter of `linear`'s shape as PEFT makes one: A from Kaiming-uniform with
    /// a = √5 (torch's `kaiming_uniform_(a=math.sqrt(5))`: the bound gain·√(3/fan_in) with
    /// gain = √(2/(1 + a²)) is 1/√in), B zero. Both are f32 leaves that require a gradient.
    pub fn new(in_features: usize, out_features: usize, cfg: &LoraConfig, rng: &mut Rng, dev: &Device) -> Result<Lora> {
        let bound = 1.0 / (in_features as f64).sqrt();
        let a = Tensor::rand(&[cfg.rank, in_features], DType::F64, rng, dev)?.affine(2.0 * bound, -bound)?;
        Ok(Lora {
            a: a.to_dtype(DType::F32)?.requires_grad(),
            b: Tensor::zeros(&[out_features, cfg.rank], DType::F32, dev)?.requires_grad(),
            scale: cfg.scale(),
            dropout: None,
        })
    }

    /// x is (..., in) -> s·(dropout(x)·Aᵀ)·Bᵀ (..., out), in x's dtype. The scale multiplies the
    /// rank-r intermediate, the smallest tensor on the way.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = match &self.dropout {
            Some(d) => {
                let mut rng = d.rng.lock().unwrap_or_else(|e| e.into_inner());
                x.dropout(d.p, true, &mut rng)?
            }
            None => x.clone(),
        };
        let h = x.linear(&super::like(&self.a, &x)?, None)?.affine(self.scale, 0.0)?;
        h.linear(&super::like(&self.b, &x)?, None)
    }
}
