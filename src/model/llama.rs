//! The Llama architecture (Hugging Face's `LlamaForCausalLM`; SmolLM2 is one), layer by layer.
//! Read top-down: [`Llama::forward`] looks the ids up in the token table, runs the
//! [`LlamaBlock`]s, normalises and projects onto the vocabulary. Shapes are written as (B, T, C):
//! batch, time, channels (hidden_size); nh query heads and nkv key/value heads of width hs.
//!
//! What differs from GPT-2 (see docs/llama.md): RMSNorm instead of LayerNorm (no mean, no bias),
//! no position table but rotary embeddings applied to q and k, grouped-query attention (nh / nkv
//! query heads share one key/value head), a SwiGLU feed-forward (three matrices, no biases), and
//! an LM head that may be tied to the token table or not.

use super::kv_cache::KvCache;
use super::llama_config::LlamaConfig;
use crate::nn::{Embedding, Linear};
use crate::{DType, Device, Error, Result, Tensor};
use std::collections::BTreeMap;

/// How RoPE pairs the coordinates of a head of width hs that rotate together.
///
/// - `Half` (Hugging Face's `rotate_half`): coordinate i pairs with i + hs/2.
/// - `Interleaved` (llama.cpp's "normal" rope, GGML_ROPE_TYPE_NORM): coordinate 2i pairs with 2i + 1.
///
/// Both rotate pair i by the angle pos · θ^(−2i/hs). llama.cpp's converter permutes the rows of
/// the q and k projections of a Hugging Face model so that its interleaved pairs are HF's half
/// pairs; a model loaded from GGUF keeps the file's rows and rotates interleaved, one loaded
/// from a Hugging Face folder rotates halves, and both compute the same logits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeLayout {
    Half,
    Interleaved,
}

/// Root-mean-square normalisation over the last dim with a gain (no mean subtracted, no bias).
#[derive(Clone, Debug)]
pub struct RmsNorm {
    pub weight: Tensor,
    pub eps: f64,
}

impl RmsNorm {
    /// x is (..., C) -> (..., C), in x's dtype: `x / sqrt(mean(x²) + eps) · weight`, the
    /// statistics in f32 as Hugging Face computes them.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        rms_norm(x, &self.weight, self.eps)
    }
}

/// RMSNorm composed from tensor ops: the f32 input normalised, cast back to x's dtype, times the
/// gain (HF's `LlamaRMSNorm` order of operations).
fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let xf = x.to_dtype(DType::F32)?;
    // inv_rms is (..., 1): 1 / sqrt(mean over C of x² + eps)
    let inv_rms = xf.sqr()?.mean(&[-1], true)?.add_scalar(eps)?.sqrt()?.recip()?;
    let normed = xf.mul(&inv_rms)?.to_dtype(x.dtype())?;
    normed.mul(&weight.to_dtype(x.dtype())?)
}

/// SiLU (x·sigmoid(x)) composed from tensor ops, with sigmoid(x) = (1 + tanh(x/2)) / 2: no
/// exp that can overflow, in either direction.
fn silu(x: &Tensor) -> Result<Tensor> {
    let sigmoid = x.mul_scalar(0.5)?.tanh()?.affine(0.5, 0.5)?;
    x.mul(&sigmoid)
}

/// The cosines and sines of the rotation angles pos · θ^(−2i/hs) for positions start..start + t
/// and i in 0..hs/2: two (t, hs/2) tensors in `dtype`. The frequencies are computed in f32 as
/// Hugging Face computes them, the angles and their cosines in f64.
fn rope_tables(hs: usize, theta: f64, start: usize, t: usize, dtype: DType, dev: &Device) -> Result<(Tensor, Tensor)> {
    let half = hs / 2;
    let inv_freq: Vec<f32> = (0..half)
        .map(|i| 1.0 / (theta as f32).powf((2 * i) as f32 / hs as f32))
        .collect();
    let angles = (start..start + t).flat_map(|pos| inv_freq.iter().map(move |&f| (pos as f32 * f) as f64));
    let (cos, sin): (Vec<f32>, Vec<f32>) = angles.map(|a| (a.cos() as f32, a.sin() as f32)).unzip();
    let table = |v: Vec<f32>| Tensor::from_vec(v, &[t, half], dev)?.to_dtype(dtype);
    Ok((table(cos)?, table(sin)?))
}

/// Rotary position embedding composed from tensor ops. x is (B, H, T, hs); cos and sin are the
/// (T, hs/2) tables of [`rope_tables`]; every pair (x1, x2) of `layout` becomes
/// (x1·cos − x2·sin, x2·cos + x1·sin).
fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor, layout: RopeLayout) -> Result<Tensor> {
    let &[b, h, t, hs] = x.shape() else {
        return Err(Error::shape(
            "rope",
            format!("expected (B, H, T, hs), got {:?}", x.shape()),
        ));
    };
    let half = hs / 2;
    let rotate = |x1: &Tensor, x2: &Tensor, cos: &Tensor, sin: &Tensor| -> Result<(Tensor, Tensor)> {
        Ok((x1.mul(cos)?.sub(&x2.mul(sin)?)?, x2.mul(cos)?.add(&x1.mul(sin)?)?))
    };
    match layout {
        RopeLayout::Half => {
            let (x1, x2) = (x.narrow(-1, 0, half)?, x.narrow(-1, half, half)?);
            let (y1, y2) = rotate(&x1, &x2, cos, sin)?;
            Tensor::cat(&[y1, y2], -1)
        }
        RopeLayout::Interleaved => {
            // (B, H, T, hs/2, 2): the pairs along the last dim, the tables (T, hs/2, 1)
            let pairs = x.reshape(&[b, h, t, half, 2])?;
            let (x1, x2) = (pairs.narrow(-1, 0, 1)?, pairs.narrow(-1, 1, 1)?);
            let (cos, sin) = (cos.unsqueeze(-1)?, sin.unsqueeze(-1)?);
            let (y1, y2) = rotate(&x1, &x2, &cos, &sin)?;
            Tensor::cat(&[y1, y2], -1)?.reshape(&[b, h, t, hs])
        }
    }
}

/// Grouped-query attention's sharing, by copying: x (B, nkv, T, hs) -> (B, nkv·rep, T, hs), query
/// head j reading key/value head j / rep (HF's `repeat_kv`).
fn repeat_kv(x: &Tensor, rep: usize) -> Result<Tensor> {
    if rep == 1 {
        return Ok(x.clone());
    }
    let &[b, nkv, t, hs] = x.shape() else {
        return Err(Error::shape(
            "repeat_kv",
            format!("expected (B, nkv, T, hs), got {:?}", x.shape()),
        ));
    };
    x.unsqueeze(2)?
        .broadcast_to(&[b, nkv, rep, t, hs])?
        .reshape(&[b, nkv * rep, t, hs])
}

/// Causal self-attention with rotary positions and grouped-query key/value heads.
#[derive(Clone, Debug)]
pub struct LlamaAttention {
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub o_proj: Linear,
    pub n_head: usize,
    pub n_kv_head: usize,
}

/// The rotation of one forward: the layout and the (T, hs/2) tables of its positions.
struct Rotation {
    layout: RopeLayout,
    cos: Tensor,
    sin: Tensor,
}

impl LlamaAttention {
    /// x is (B, T, C), the block's normalised input; returns `residual + attention(x)`. With a
    /// cache, the T new positions attend to the cached ones as well, and their (rotated) keys and
    /// values are appended to it, nkv heads each.
    fn forward(
        &self,
        x: &Tensor,
        residual: &Tensor,
        rot: &Rotation,
        cache: Option<&mut KvCache>,
        layer: usize,
    ) -> Result<Tensor> {
        let &[b, t, c] = x.shape() else {
            return Err(Error::shape(
                "llama attention",
                format!("expected (B, T, C), got {:?}", x.shape()),
            ));
        };
        let (nh, nkv) = (self.n_head, self.n_kv_head);
        let hs = c / nh;
        // (B, T, heads·hs) -> (B, heads, T, hs)
        let heads = |y: Tensor, n: usize| y.reshape(&[b, t, n, hs])?.permute(&[0, 2, 1, 3]);
        let q = heads(self.q_proj.forward(x)?, nh)?;
        let k = heads(self.k_proj.forward(x)?, nkv)?;
        let v = heads(self.v_proj.forward(x)?, nkv)?;
        let q = rope(&q, &rot.cos, &rot.sin, rot.layout)?;
        let mut k = rope(&k, &rot.cos, &rot.sin, rot.layout)?;
        let mut v = v;
        if let Some(cache) = cache {
            // the cache keeps (1, B, nkv, Tc, hs): all positions so far, appended along time
            let (kc, vc) = cache.layer(layer).append(k.unsqueeze(0)?, v.unsqueeze(0)?)?;
            (k, v) = (kc.squeeze(0)?, vc.squeeze(0)?);
        }
        let (k, v) = (repeat_kv(&k, nh / nkv)?, repeat_kv(&v, nh / nkv)?);
        // y is (B, nh, T, hs): the T queries at the last T of the Tk key positions, causal
        let y = q.scaled_dot_product_attention(&k, &v, true)?;
        let y = y.permute(&[0, 2, 1, 3])?.reshape(&[b, t, c])?;
        self.o_proj.forward_residual(&y, residual)
    }
}

/// The SwiGLU feed-forward: down(silu(gate(x)) · up(x)), C -> intermediate -> C.
#[derive(Clone, Debug)]
pub struct LlamaMlp {
    pub gate_proj: Linear,
    pub up_proj: Linear,
    pub down_proj: Linear,
}

impl LlamaMlp {
    /// x is (B, T, C), the block's normalised input; returns `residual + mlp(x)`.
    fn forward(&self, x: &Tensor, residual: &Tensor) -> Result<Tensor> {
        let h = silu(&self.gate_proj.forward(x)?)?.mul(&self.up_proj.forward(x)?)?;
        self.down_proj.forward_residual(&h, residual)
    }
}

/// A pre-norm block: x + attn(norm(x)), then x + mlp(norm(x)).
#[derive(Clone, Debug)]
pub struct LlamaBlock {
    pub input_layernorm: RmsNorm,
    pub self_attn: LlamaAttention,
    pub post_attention_layernorm: RmsNorm,
    pub mlp: LlamaMlp,
}

/// A Llama-architecture language model. Cloning is cheap and the clone shares the parameters.
#[derive(Clone, Debug)]
pub struct Llama {
    cfg: LlamaConfig,
    /// The compute dtype (see [`Llama::set_dtype`]).
    dtype: DType,
    rope_layout: RopeLayout,
    pub embed_tokens: Embedding,
    pub layers: Vec<LlamaBlock>,
    pub norm: RmsNorm,
    /// The LM head; None when it is tied to `embed_tokens`.
    pub lm_head: Option<Linear>,
}

/// The dtypes a [`Llama`] computes in.
const LLAMA_DTYPES: [DType; 2] = [DType::F32, DType::BF16];

impl Llama {
    /// A model from named tensors in Hugging Face's names (`model.layers.0.self_attn.q_proj.weight`,
    /// ...), checked against `cfg` first: every missing, unexpected or mis-shaped tensor is
    /// listed in the error with its shapes. The weights become f32 parameters on `dev`.
    pub(crate) fn from_named(
        cfg: LlamaConfig,
        tensors: Vec<(String, Tensor)>,
        rope_layout: RopeLayout,
        source: &str,
        dev: &Device,
    ) -> Result<Llama> {
        cfg.validate()?;
        let expected = expected_tensors(&cfg);
        let mut given: BTreeMap<String, Tensor> = BTreeMap::new();
        let mut problems = Vec::new();
        for (name, t) in tensors {
            // old transformers versions saved the rotary frequencies as a buffer
            if name.ends_with("rotary_emb.inv_freq") {
                continue;
            }
            if given.insert(name.clone(), t).is_some() {
                problems.push(format!("  duplicate: {name}"));
            }
        }
        // a tied model saved with its head as well: accepted when it is the token table
        if cfg.tie_word_embeddings {
            if let (Some(head), Some(table)) = (given.get("lm_head.weight"), given.get("model.embed_tokens.weight")) {
                let same = head.shape() == table.shape()
                    && head.to_dtype(DType::F32)?.to_vec::<f32>()? == table.to_dtype(DType::F32)?.to_vec::<f32>()?;
                if !same {
                    problems.push(
                        "  lm_head.weight differs from model.embed_tokens.weight, but the config ties them".into(),
                    );
                }
                given.remove("lm_head.weight");
            }
        }
        for (name, shape) in &expected {
            match given.get(name) {
                None => problems.push(format!("  missing: {name} {shape:?}")),
                Some(t) if t.shape() != shape.as_slice() => problems.push(format!(
                    "  shape mismatch: {name}: file {:?}, config {shape:?}",
                    t.shape()
                )),
                Some(t) if !t.dtype().is_float() => {
                    problems.push(format!("  dtype: {name} is {}, not a float", t.dtype()))
                }
                Some(_) => {}
            }
        }
        for (name, t) in &given {
            if !expected.iter().any(|(n, _)| n == name) {
                problems.push(format!("  unexpected: {name} {:?}", t.shape()));
            }
        }
        if !problems.is_empty() {
            return Err(Error::invalid(
                "llama",
                format!(
                    "{source} does not fit the Llama config {cfg:?} ({} problems):\n{}",
                    problems.len(),
                    problems.join("\n")
                ),
            ));
        }
        let mut take = |name: String| -> Result<Tensor> {
            let t = given.remove(&name).expect("checked above");
            Ok(t.to_dtype(DType::F32)?
                .to_device(dev)?
                .contiguous()?
                .detach()
                .requires_grad())
        };
        let linear = |take: &mut dyn FnMut(String) -> Result<Tensor>, name: String| -> Result<Linear> {
            Ok(Linear {
                weight: take(name)?,
                bias: None,
            })
        };
        let eps = cfg.rms_norm_eps;
        let embed_tokens = Embedding {
            weight: take("model.embed_tokens.weight".into())?,
        };
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let p = format!("model.layers.{i}");
            layers.push(LlamaBlock {
                input_layernorm: RmsNorm {
                    weight: take(format!("{p}.input_layernorm.weight"))?,
                    eps,
                },
                self_attn: LlamaAttention {
                    q_proj: linear(&mut take, format!("{p}.self_attn.q_proj.weight"))?,
                    k_proj: linear(&mut take, format!("{p}.self_attn.k_proj.weight"))?,
                    v_proj: linear(&mut take, format!("{p}.self_attn.v_proj.weight"))?,
                    o_proj: linear(&mut take, format!("{p}.self_attn.o_proj.weight"))?,
                    n_head: cfg.num_attention_heads,
                    n_kv_head: cfg.num_key_value_heads,
                },
                post_attention_layernorm: RmsNorm {
                    weight: take(format!("{p}.post_attention_layernorm.weight"))?,
                    eps,
                },
                mlp: LlamaMlp {
                    gate_proj: linear(&mut take, format!("{p}.mlp.gate_proj.weight"))?,
                    up_proj: linear(&mut take, format!("{p}.mlp.up_proj.weight"))?,
                    down_proj: linear(&mut take, format!("{p}.mlp.down_proj.weight"))?,
                },
            });
        }
        let norm = RmsNorm {
            weight: take("model.norm.weight".into())?,
            eps,
        };
        let lm_head = if cfg.tie_word_embeddings {
            None
        } else {
            Some(linear(&mut take, "lm_head.weight".into())?)
        };
        Ok(Llama {
            cfg,
            dtype: DType::F32,
            rope_layout,
            embed_tokens,
            layers,
            norm,
            lm_head,
        })
    }

    /// Loads a Hugging Face folder of a `LlamaForCausalLM` as `save_pretrained` writes it:
    /// `config.json` and `model.safetensors` (f32, bf16 or f16 weights; kept as f32).
    pub fn from_hf_dir(dir: impl AsRef<std::path::Path>, dev: &Device) -> Result<Llama> {
        let dir = dir.as_ref();
        let cfg = LlamaConfig::from_hf_json(dir.join("config.json"))?;
        let weights = dir.join("model.safetensors");
        let (tensors, _) = super::io::load_tensors(&weights, &Device::Cpu)?;
        Llama::from_named(cfg, tensors, RopeLayout::Half, &weights.display().to_string(), dev)
    }

    pub fn config(&self) -> &LlamaConfig {
        &self.cfg
    }

    /// Which coordinates RoPE pairs: [`RopeLayout::Half`] for a model loaded from a Hugging Face
    /// folder, [`RopeLayout::Interleaved`] for one loaded from GGUF (whose q and k rows are
    /// permuted accordingly; see [`RopeLayout`]).
    pub fn rope_layout(&self) -> RopeLayout {
        self.rope_layout
    }

    pub fn device(&self) -> &Device {
        self.embed_tokens.weight.device()
    }

    /// The compute dtype (f32 unless set).
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Sets the dtype the model computes in: f32 (the default) or bf16. The parameters stay f32;
    /// in bf16 each forward casts them where they are used (matmuls, attention, activations and
    /// the KV cache in bf16; RMSNorm statistics in f32; logits returned in f32).
    pub fn set_dtype(&mut self, dtype: DType) -> Result<()> {
        if !LLAMA_DTYPES.contains(&dtype) {
            return Err(Error::DType {
                op: "llama",
                msg: format!("the model computes in f32 or bf16, not {dtype}"),
            });
        }
        self.dtype = dtype;
        Ok(())
    }

    /// The model with every parameter cast to `dtype` (f32 or bf16), computing in it: for
    /// inference, where casting once beats a cast per forward. Train with [`Llama::set_dtype`].
    pub fn to_dtype(&self, dtype: DType) -> Result<Llama> {
        let mut model = self.clone();
        model.set_dtype(dtype)?;
        let _no_grad = crate::no_grad();
        for p in model.params_mut() {
            if p.dtype() != dtype {
                *p = p.to_dtype(dtype)?.requires_grad();
            }
        }
        Ok(model)
    }

    fn params_mut(&mut self) -> Vec<&mut Tensor> {
        let mut out = vec![&mut self.embed_tokens.weight];
        for l in &mut self.layers {
            let (a, m) = (&mut l.self_attn, &mut l.mlp);
            out.extend([&mut l.input_layernorm.weight, &mut l.post_attention_layernorm.weight]);
            out.extend(
                [
                    &mut a.q_proj,
                    &mut a.k_proj,
                    &mut a.v_proj,
                    &mut a.o_proj,
                    &mut m.gate_proj,
                    &mut m.up_proj,
                    &mut m.down_proj,
                ]
                .map(|l| &mut l.weight),
            );
        }
        out.push(&mut self.norm.weight);
        if let Some(head) = &mut self.lm_head {
            out.push(&mut head.weight);
        }
        out
    }

    /// Every parameter by its Hugging Face name, in state-dict order. The tensors are the
    /// model's own leaves: look their gradients up with `grads.get(&tensor)`. For a model loaded
    /// from GGUF the q and k rows are in the file's order (see [`Llama::rope_layout`]).
    pub fn params(&self) -> Vec<(String, Tensor)> {
        let mut out = vec![(
            "model.embed_tokens.weight".to_string(),
            self.embed_tokens.weight.clone(),
        )];
        for (i, l) in self.layers.iter().enumerate() {
            let p = format!("model.layers.{i}");
            let (a, m) = (&l.self_attn, &l.mlp);
            for (name, w) in [
                ("self_attn.q_proj", &a.q_proj.weight),
                ("self_attn.k_proj", &a.k_proj.weight),
                ("self_attn.v_proj", &a.v_proj.weight),
                ("self_attn.o_proj", &a.o_proj.weight),
                ("mlp.gate_proj", &m.gate_proj.weight),
                ("mlp.up_proj", &m.up_proj.weight),
                ("mlp.down_proj", &m.down_proj.weight),
                ("input_layernorm", &l.input_layernorm.weight),
                ("post_attention_layernorm", &l.post_attention_layernorm.weight),
            ] {
                out.push((format!("{p}.{name}.weight"), w.clone()));
            }
        }
        out.push(("model.norm.weight".into(), self.norm.weight.clone()));
        if let Some(head) = &self.lm_head {
            out.push(("lm_head.weight".into(), head.weight.clone()));
        }
        out
    }

    /// The number of parameters (a tied head counted once).
    pub fn num_params(&self) -> usize {
        self.params().iter().map(|(_, t)| t.numel()).sum()
    }

    /// An empty KV cache for [`Llama::forward_cached`].
    pub fn new_cache(&self) -> KvCache {
        KvCache::with_layers(self.cfg.num_hidden_layers)
    }

    /// ids u32 (B, T) -> logits f32 (B, T, vocab).
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        self.run(ids, None)
    }

    /// Mean cross-entropy of the next-token predictions: logits[b, t] against targets[b, t]
    /// (u32 (B, T); no shift inside).
    pub fn loss(&self, ids: &Tensor, targets: &Tensor) -> Result<Tensor> {
        let logits = self.forward(ids)?;
        let (b, t, v) = (logits.shape()[0], logits.shape()[1], logits.shape()[2]);
        if targets.shape() != [b, t] {
            return Err(Error::shape(
                "llama loss",
                format!(
                    "logits {:?} need targets of shape [{b}, {t}], got {:?}",
                    logits.shape(),
                    targets.shape()
                ),
            ));
        }
        logits.reshape(&[b * t, v])?.cross_entropy(&targets.reshape(&[b * t])?)
    }

    /// Incremental decoding: `ids` (B, t) are the tokens at the positions after those already in
    /// `cache`; returns their logits (B, t, vocab) and appends their keys and values to the
    /// cache. Runs without recording gradients; on an error the cache is left as it was. Equal to
    /// the matching rows of a full [`Llama::forward`] over the whole sequence.
    pub fn forward_cached(&self, ids: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        let _no_grad = crate::no_grad();
        let before = cache.clone(); // cheap (shared tensors)
        let result = cache
            .check(self.cfg.num_hidden_layers, ids)
            .and_then(|()| self.run(ids, Some(cache)));
        if result.is_err() {
            *cache = before;
        }
        result
    }

    /// The whole network: token table, blocks, final norm, LM head.
    fn run(&self, ids: &Tensor, mut cache: Option<&mut KvCache>) -> Result<Tensor> {
        let (b, t) = check_ids(ids)?;
        let start = cache.as_ref().map_or(0, |c| c.len());
        let max = self.cfg.max_position_embeddings;
        if start + t > max {
            return Err(Error::invalid(
                "llama",
                format!(
                    "{} positions ({start} cached + {t} new) exceed max_position_embeddings {max}; crop the context",
                    start + t
                ),
            ));
        }
        let ids = ids.to_device(self.device())?;
        let (c, hs) = (self.cfg.hidden_size, self.cfg.head_dim());
        let table = self.embed_tokens.weight.to_dtype(self.dtype)?;
        // x is (B, T, C)
        let mut x = ids.embedding(&table)?;
        let (cos, sin) = rope_tables(hs, self.cfg.rope_theta, start, t, self.dtype, self.device())?;
        let rot = Rotation {
            layout: self.rope_layout,
            cos,
            sin,
        };
        for (i, l) in self.layers.iter().enumerate() {
            let h = l.input_layernorm.forward(&x)?;
            x = l.self_attn.forward(&h, &x, &rot, cache.as_deref_mut(), i)?; // x + attn(norm(x))
            let h = l.post_attention_layernorm.forward(&x)?;
            x = l.mlp.forward(&h, &x)?; // x + mlp(norm(x))
        }
        if let Some(cache) = cache {
            cache.advance(t);
        }
        // logits = norm(x) · headᵀ, (B·T, C) · (C, vocab)
        let x = self.norm.forward(&x)?.reshape(&[b * t, c])?;
        let logits = match &self.lm_head {
            Some(head) => head.forward(&x)?,
            None => x.linear(&table, None)?,
        };
        logits.to_dtype(DType::F32)?.reshape(&[b, t, self.cfg.vocab_size])
    }
}

/// Every parameter a model of shape `cfg` has, by Hugging Face name, with its shape.
fn expected_tensors(cfg: &LlamaConfig) -> Vec<(String, Vec<usize>)> {
    let (c, f) = (cfg.hidden_size, cfg.intermediate_size);
    let kv = cfg.num_key_value_heads * cfg.head_dim();
    let mut out = vec![("model.embed_tokens.weight".to_string(), vec![cfg.vocab_size, c])];
    for i in 0..cfg.num_hidden_layers {
        let p = format!("model.layers.{i}");
        for (name, shape) in [
            ("input_layernorm", vec![c]),
            ("self_attn.q_proj", vec![c, c]),
            ("self_attn.k_proj", vec![kv, c]),
            ("self_attn.v_proj", vec![kv, c]),
            ("self_attn.o_proj", vec![c, c]),
            ("post_attention_layernorm", vec![c]),
            ("mlp.gate_proj", vec![f, c]),
            ("mlp.up_proj", vec![f, c]),
            ("mlp.down_proj", vec![c, f]),
        ] {
            out.push((format!("{p}.{name}.weight"), shape));
        }
    }
    out.push(("model.norm.weight".into(), vec![c]));
    if !cfg.tie_word_embeddings {
        out.push(("lm_head.weight".into(), vec![cfg.vocab_size, c]));
    }
    out
}

/// (B, T) of u32 token ids with B, T ≥ 1.
fn check_ids(ids: &Tensor) -> Result<(usize, usize)> {
    if ids.dtype() != DType::U32 {
        return Err(Error::DType {
            op: "llama",
            msg: format!("token ids must be u32, got {}", ids.dtype()),
        });
    }
    match *ids.shape() {
        [b, t] if b > 0 && t > 0 => Ok((b, t)),
        _ => Err(Error::shape(
            "llama",
            format!("token ids must be (B, T) with B, T ≥ 1, got {:?}", ids.shape()),
        )),
    }
}
