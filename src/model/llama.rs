//! The Llama architecture (Hugging Face's `LlamaForCausalLM`; SmolLM2 is one), layer by layer.
//! Read top-down: [`Llama::forward`] looks the ids up in the token table, runs the
//! [`LlamaBlock`]s, normalises and projects onto the vocabulary. Shapes are written as (B, T, C):
//! batch, time, channels (hidden_size); nh query heads and nkv key/value heads of width hs.
//!
//! What differs from GPT-2 (see docs/llama.md): RMSNorm instead of LayerNorm (no mean, no bias),
//! no position table but rotary embeddings applied to q and k, grouped-query attention (nh / nkv
//! query heads share one key/value head), a SwiGLU feed-forward (three matrices, no biases), and
//! an LM head that may be tied to the token table or not.

use super::kv_cache::{KvCache, LogitsAt};
use super::llama_config::LlamaConfig;
use crate::gguf::GgufFile;
use crate::nn::{Embedding, Linear, LoraConfig};
use crate::ops::linear_quantized::QuantizedMatrix;
use crate::{DType, Device, Error, Result, Rng, Tensor};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

mod hf_export;
mod lora;

pub use hf_export::{write_hf_json, HF_CONFIG, HF_GENERATION_CONFIG, HF_WEIGHTS};
pub use lora::{ADAPTER_CONFIG, ADAPTER_WEIGHTS};

/// How RoPE pairs a head's coordinates (re-exported from [`crate::ops::rope`]). llama.cpp's
/// converter permutes the rows of the q and k projections of a Hugging Face model so that its
/// interleaved pairs (2i, 2i + 1) are HF's half pairs (i, i + hs/2); a model loaded from GGUF keeps
/// the file's rows and rotates interleaved, one loaded from a Hugging Face folder rotates halves,
/// and both compute the same logits.
pub use crate::ops::rope::RopeLayout;

/// Root-mean-square normalisation over the last dim with a gain (no mean subtracted, no bias).
#[derive(Clone, Debug)]
pub struct RmsNorm {
    /// The gain `[C]`.
    pub weight: Tensor,
    /// ε, added to mean(x²) before the square root.
    pub eps: f64,
}

impl RmsNorm {
    /// x is (..., C) -> (..., C), in x's dtype: `x / sqrt(mean(x²) + eps) · weight` (the fused
    /// op; its statistics in f32 or wider).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.rms_norm(&self.weight.to_dtype(x.dtype())?, self.eps as f32)
    }
}

/// Causal self-attention with rotary positions and grouped-query key/value heads.
#[derive(Clone, Debug)]
pub struct LlamaAttention {
    /// The query projection: weight `[nh·hs, C]`.
    pub q_proj: Linear,
    /// The key projection: weight `[n_kv·hs, C]`.
    pub k_proj: Linear,
    /// The value projection: weight `[n_kv·hs, C]`.
    pub v_proj: Linear,
    /// The output projection: weight `[C, nh·hs]`.
    pub o_proj: Linear,
    /// Query heads, nh.
    pub n_head: usize,
    /// Key/value heads, n_kv (a divisor of nh: each serves nh / n_kv query heads).
    pub n_kv_head: usize,
}

/// What every block of one forward shares: RoPE's base and layout, the position of the first
/// token, and the dtype the attention computes in ([`Llama::kv_dtype`]).
#[derive(Clone, Copy)]
struct Pass {
    theta: f64,
    layout: RopeLayout,
    start: usize,
    attention_dtype: DType,
}

impl LlamaAttention {
    /// x is (B, T, C), the block's normalised input; returns `residual + attention(x)`. With a
    /// cache, the T new positions attend to the cached ones as well, and their (rotated) keys and
    /// values are appended to it, nkv heads each. The attention computes in `pass.attention_dtype`
    /// (q, k and v cast to it after RoPE, the output cast back to x's dtype), so the cache holds
    /// that dtype.
    fn forward(
        &self,
        x: &Tensor,
        residual: &Tensor,
        pass: &Pass,
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
        // (B, T, heads·hs) -> (B, T, heads, hs), rotated by positions start..start + T, in the
        // attention's dtype (cast while contiguous), then (B, heads, T, hs) for attention (a view)
        let heads = |y: &Tensor, n: usize, rotate: bool| -> Result<Tensor> {
            let y = y.reshape(&[b, t, n, hs])?;
            let y = if rotate {
                y.rope(pass.theta, pass.start, pass.layout)?
            } else {
                y
            };
            y.to_dtype(pass.attention_dtype)?.permute(&[0, 2, 1, 3])
        };
        let qkv = Linear::forward_many(&[&self.q_proj, &self.k_proj, &self.v_proj], x)?;
        let [q, k, v] = &qkv[..] else {
            unreachable!("three projections give three outputs")
        };
        let q = heads(q, nh, true)?;
        let mut k = heads(k, nkv, true)?;
        let mut v = heads(v, nkv, false)?;
        if let Some(cache) = cache {
            // the cache keeps (B, nkv, Tc, hs): all positions so far, appended along time
            (k, v) = cache.layer(layer).append(k, v)?;
        }
        // y is (B, nh, T, hs): the T queries at the last T of the Tk key positions, causal; k and v
        // keep their nkv heads (query head h reads key/value head h / (nh / nkv), no repeated copy)
        let y = q.scaled_dot_product_attention(&k, &v, true)?;
        let y = y.permute(&[0, 2, 1, 3])?.reshape(&[b, t, c])?.to_dtype(x.dtype())?;
        self.o_proj.forward_residual(&y, residual)
    }
}

/// The SwiGLU feed-forward: down(silu(gate(x)) · up(x)), C -> intermediate -> C.
#[derive(Clone, Debug)]
pub struct LlamaMlp {
    /// The gate projection: weight `[intermediate, C]`, through SiLU.
    pub gate_proj: Linear,
    /// The up projection: weight `[intermediate, C]`, multiplied by the gate.
    pub up_proj: Linear,
    /// The down projection: weight `[C, intermediate]`.
    pub down_proj: Linear,
}

impl LlamaMlp {
    /// x is (B, T, C), the block's normalised input; returns `residual + mlp(x)`.
    fn forward(&self, x: &Tensor, residual: &Tensor) -> Result<Tensor> {
        let gate_up = Linear::forward_many(&[&self.gate_proj, &self.up_proj], x)?;
        let [gate, up] = &gate_up[..] else {
            unreachable!("two projections give two outputs")
        };
        let h = gate.swiglu(up)?;
        self.down_proj.forward_residual(&h, residual)
    }
}

/// A pre-norm block: x + attn(norm(x)), then x + mlp(norm(x)).
#[derive(Clone, Debug)]
pub struct LlamaBlock {
    /// The RMSNorm before attention.
    pub input_layernorm: RmsNorm,
    /// The attention sublayer.
    pub self_attn: LlamaAttention,
    /// The RMSNorm before the feed-forward.
    pub post_attention_layernorm: RmsNorm,
    /// The feed-forward sublayer.
    pub mlp: LlamaMlp,
}

impl LlamaBlock {
    /// x is (B, T, C) -> x + attn(norm(x)), then + mlp(norm(·)).
    fn forward(&self, x: &Tensor, pass: &Pass, cache: Option<&mut KvCache>, layer: usize) -> Result<Tensor> {
        let h = self.input_layernorm.forward(x)?;
        let x = self.self_attn.forward(&h, x, pass, cache, layer)?;
        let h = self.post_attention_layernorm.forward(&x)?;
        self.mlp.forward(&h, &x)
    }

    /// The projections by Hugging Face module name relative to the block (`self_attn.q_proj`, ...).
    fn projections(&self) -> [(&'static str, &Linear); 7] {
        let (a, m) = (&self.self_attn, &self.mlp);
        [
            ("self_attn.q_proj", &a.q_proj),
            ("self_attn.k_proj", &a.k_proj),
            ("self_attn.v_proj", &a.v_proj),
            ("self_attn.o_proj", &a.o_proj),
            ("mlp.gate_proj", &m.gate_proj),
            ("mlp.up_proj", &m.up_proj),
            ("mlp.down_proj", &m.down_proj),
        ]
    }

    /// As [`LlamaBlock::projections`], mutably.
    fn projections_mut(&mut self) -> [(&'static str, &mut Linear); 7] {
        projections_mut(&mut self.self_attn, &mut self.mlp)
    }

    /// Every tensor of the block that takes a gradient now (the adapters; the base weights too
    /// unless frozen).
    fn trainable(&self) -> Vec<Tensor> {
        let mut out = vec![
            self.input_layernorm.weight.clone(),
            self.post_attention_layernorm.weight.clone(),
        ];
        for (_, l) in self.projections() {
            out.push(l.weight.clone());
            if let Some(lora) = &l.lora {
                out.extend([lora.a.clone(), lora.b.clone()]);
            }
        }
        out.retain(|t| t.tracks_grad());
        out
    }

    /// The generator of the adapters' dropout, if it is on.
    fn dropout_rng(&self) -> Option<Arc<Mutex<Rng>>> {
        self.projections()
            .into_iter()
            .find_map(|(_, l)| Some(l.lora.as_ref()?.dropout.as_ref()?.rng.clone()))
    }

    /// [`LlamaBlock::forward`] without a cache, keeping none of its activations: the output is
    /// computed without a graph, and the backward computes the block again from its input, this
    /// time with a graph, and backpropagates through that (gradient checkpointing). The dropout
    /// generator is rewound for the replay, so both passes draw the same masks.
    fn forward_recomputed(&self, x: &Tensor, pass: &Pass) -> Result<Tensor> {
        let rng = self.dropout_rng();
        let before = rng
            .as_ref()
            .map(|r| r.lock().unwrap_or_else(|e| e.into_inner()).state());
        // recorded, then cut off (the block's graph is freed here, only x is kept): under
        // no_grad a quantized projection would take the integer kernels, which round x, and the
        // value would differ from the replay's, which records and so takes the decoded product
        let y = self.forward(x, pass, None, 0)?.detach();
        let (block, pass) = (self.clone(), *pass);
        let replay = move |x: &Tensor| -> Result<Tensor> {
            let set =
                |r: &Arc<Mutex<Rng>>, s: [u64; 4]| *r.lock().unwrap_or_else(|e| e.into_inner()) = Rng::from_state(s);
            let now = rng
                .as_ref()
                .map(|r| r.lock().unwrap_or_else(|e| e.into_inner()).state());
            if let (Some(r), Some(s)) = (&rng, before) {
                set(r, s);
            }
            let y = block.forward(x, &pass, None, 0);
            if let (Some(r), Some(s)) = (&rng, now) {
                set(r, s);
            }
            y
        };
        Ok(crate::autograd::record_recomputed(y, x, &self.trainable(), replay))
    }
}

/// The seven projections of a block by module name, mutably (borrowing only the attention and
/// the feed-forward, so the norms stay free).
fn projections_mut<'a>(a: &'a mut LlamaAttention, m: &'a mut LlamaMlp) -> [(&'static str, &'a mut Linear); 7] {
    [
        ("self_attn.q_proj", &mut a.q_proj),
        ("self_attn.k_proj", &mut a.k_proj),
        ("self_attn.v_proj", &mut a.v_proj),
        ("self_attn.o_proj", &mut a.o_proj),
        ("mlp.gate_proj", &mut m.gate_proj),
        ("mlp.up_proj", &mut m.up_proj),
        ("mlp.down_proj", &mut m.down_proj),
    ]
}

/// A Llama-architecture language model. Cloning is cheap and the clone shares the parameters.
#[derive(Clone, Debug)]
pub struct Llama {
    cfg: LlamaConfig,
    /// The compute dtype (see [`Llama::set_dtype`]).
    dtype: DType,
    /// The attention's dtype when set (see [`Llama::set_kv_dtype`]); the compute dtype otherwise.
    kv_dtype: Option<DType>,
    rope_layout: RopeLayout,
    /// The shape of the LoRA adapters on the projections, if any (see docs/finetuning.md).
    lora: Option<LoraConfig>,
    /// Gradient checkpointing (see [`Llama::set_recompute`]).
    recompute: bool,
    /// Token embedding `[vocab_size, C]` (also the LM head when `lm_head` is `None`).
    pub embed_tokens: Embedding,
    /// The transformer blocks, `num_hidden_layers` of them.
    pub layers: Vec<LlamaBlock>,
    /// The final RMSNorm, before the LM head.
    pub norm: RmsNorm,
    /// The LM head; None when it is tied to `embed_tokens`, except that a tied head kept
    /// quantized ([`LlamaLoad::AsStored`]) is here as the quantized copy of the table.
    pub lm_head: Option<Linear>,
}

/// What [`Llama::from_gguf_with`] makes of a file's weights (serialized as `as_stored`, `f32`,
/// `bf16`: a LoRA run records its base's).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LlamaLoad {
    /// The linear projections stored in Q4_0, Q4_1, Q8_0, Q4_K or Q6_K stay in that block
    /// format and are multiplied with directly ([`Tensor::linear_quantized`], on the CPU or with
    /// the CUDA kernels on Cuda and Emu). They are frozen: LoRA adapters train on top of
    /// them, the input's gradient flowing through them (QLoRA-style).
    /// Every other tensor (token table, norms, other types) is dequantized to f32; a tied LM
    /// head multiplies with the table as stored (the lookup reads its f32 rows). The KV cache
    /// is f16, as llama.cpp's ([`Llama::set_kv_dtype`]). Not the default yet: with its 8-bit rounding of the projections' inputs, SmolLM2-135M's greedy
    /// answer changes, as llama.cpp's does (see docs/llama.md).
    AsStored,
    /// Every tensor dequantized to f32 (the default).
    #[default]
    F32,
    /// Every tensor dequantized, the model computing in bf16 ([`Llama::to_dtype`]).
    BF16,
}

/// The dtypes a [`Llama`] computes in.
const LLAMA_DTYPES: [DType; 2] = [DType::F32, DType::BF16];

/// The dtypes a [`Llama`]'s KV cache holds ([`Llama::set_kv_dtype`]).
const KV_DTYPES: [DType; 3] = [DType::F32, DType::BF16, DType::F16];

impl Llama {
    /// A model of shape `cfg` from the tensors a file offers, `available` listing their Hugging
    /// Face names (`model.layers.0.self_attn.q_proj.weight`, ...) and shapes. The names and shapes
    /// are checked against `cfg` before any tensor is read: every missing, unexpected or
    /// mis-shaped tensor is listed in the error with its shapes. Then `load(name)` reads each one;
    /// the weights become f32 parameters on `dev`, except the projections for which
    /// `load_quantized(name)` gives a quantized matrix.
    fn build(
        cfg: LlamaConfig,
        available: Vec<(String, Vec<usize>)>,
        rope_layout: RopeLayout,
        source: &str,
        dev: &Device,
        load: impl Fn(&str) -> Result<Tensor>,
        load_quantized: impl Fn(&str) -> Result<Option<QuantizedMatrix>>,
    ) -> Result<Llama> {
        cfg.validate()?;
        let expected = expected_tensors(&cfg);
        let mut given: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        let mut problems = Vec::new();
        for (name, shape) in available {
            if given.insert(name.clone(), shape).is_some() {
                problems.push(format!("  duplicate: {name}"));
            }
        }
        for (name, shape) in &expected {
            match given.get(name) {
                None => problems.push(format!("  missing: {name} {shape:?}")),
                Some(got) if got != shape => {
                    problems.push(format!("  shape mismatch: {name}: file {got:?}, config {shape:?}"))
                }
                Some(_) => {}
            }
        }
        for (name, shape) in &given {
            if !expected.iter().any(|(n, _)| n == name) {
                problems.push(format!("  unexpected: {name} {shape:?}"));
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
        let param = |name: String| -> Result<Tensor> {
            let t = load(&name)?;
            if !t.dtype().is_float() {
                return Err(Error::invalid(
                    "llama",
                    format!("{source}: {name} is {}, not a float", t.dtype()),
                ));
            }
            Ok(t.to_dtype(DType::F32)?
                .to_device(dev)?
                .contiguous()?
                .detach()
                .requires_grad())
        };
        let linear = |name: String| -> Result<Linear> {
            match load_quantized(&name)? {
                Some(q) => Linear::from_quantized(q, dev),
                None => Ok(Linear {
                    weight: param(name)?,
                    bias: None,
                    lora: None,
                    quantized: None,
                }),
            }
        };
        let eps = cfg.rms_norm_eps;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let p = format!("model.layers.{i}");
            let self_attn = LlamaAttention {
                q_proj: linear(format!("{p}.self_attn.q_proj.weight"))?,
                k_proj: linear(format!("{p}.self_attn.k_proj.weight"))?,
                v_proj: linear(format!("{p}.self_attn.v_proj.weight"))?,
                o_proj: linear(format!("{p}.self_attn.o_proj.weight"))?,
                n_head: cfg.num_attention_heads,
                n_kv_head: cfg.num_key_value_heads,
            };
            let mlp = LlamaMlp {
                gate_proj: linear(format!("{p}.mlp.gate_proj.weight"))?,
                up_proj: linear(format!("{p}.mlp.up_proj.weight"))?,
                down_proj: linear(format!("{p}.mlp.down_proj.weight"))?,
            };
            let norm = |weight: Tensor| RmsNorm { weight, eps };
            layers.push(LlamaBlock {
                input_layernorm: norm(param(format!("{p}.input_layernorm.weight"))?),
                self_attn,
                post_attention_layernorm: norm(param(format!("{p}.post_attention_layernorm.weight"))?),
                mlp,
            });
        }
        // a tied head is the token table; when that is kept quantized, the head multiplies with
        // the quantized copy (read whole every step) and the lookup reads f32 rows of the table
        let lm_head = match cfg.tie_word_embeddings {
            true => load_quantized("model.embed_tokens.weight")?
                .map(|q| Linear::from_quantized(q, dev))
                .transpose()?,
            false => Some(linear("lm_head.weight".into())?),
        };
        let norm = RmsNorm {
            weight: param("model.norm.weight".into())?,
            eps,
        };
        let embed_tokens = Embedding {
            weight: param("model.embed_tokens.weight".into())?,
        };
        Ok(Llama {
            cfg,
            dtype: DType::F32,
            kv_dtype: None,
            rope_layout,
            lora: None,
            recompute: false,
            embed_tokens,
            layers,
            norm,
            lm_head,
        })
    }

    /// Loads a Hugging Face folder of a `LlamaForCausalLM` as `save_pretrained` writes it:
    /// `config.json` and `model.safetensors` (f32, bf16 or f16 weights; kept as f32). A tied
    /// model saved with its `lm_head.weight` as well is accepted when the head equals the table.
    pub fn from_hf_dir(dir: impl AsRef<Path>, dev: &Device) -> Result<Llama> {
        let dir = dir.as_ref();
        let cfg = LlamaConfig::from_hf_json(dir.join("config.json"))?;
        let weights = dir.join("model.safetensors");
        let source = weights.display().to_string();
        let (tensors, _) = super::io::load_tensors(&weights, &Device::Cpu)?;
        // old transformers versions saved the rotary frequencies as a buffer
        let mut tensors: BTreeMap<String, Tensor> = tensors
            .into_iter()
            .filter(|(name, _)| !name.ends_with("rotary_emb.inv_freq"))
            .collect();
        if cfg.tie_word_embeddings {
            if let (Some(head), Some(table)) = (tensors.get("lm_head.weight"), tensors.get("model.embed_tokens.weight"))
            {
                let as_f32 = |t: &Tensor| t.to_dtype(DType::F32)?.to_vec::<f32>();
                if head.shape() != table.shape() || as_f32(head)? != as_f32(table)? {
                    return Err(Error::invalid(
                        "llama",
                        format!(
                            "{source}: lm_head.weight differs from model.embed_tokens.weight, but the config ties them"
                        ),
                    ));
                }
                tensors.remove("lm_head.weight");
            }
        }
        let available = tensors.iter().map(|(n, t)| (n.clone(), t.shape().to_vec())).collect();
        let load = |name: &str| Ok(tensors[name].clone());
        Llama::build(cfg, available, RopeLayout::Half, &source, dev, load, |_| Ok(None))
    }

    /// Loads a Llama-architecture GGUF file (e.g. SmolLM2-135M-Instruct): the config from its
    /// `llama.*` metadata ([`LlamaConfig::from_gguf`]), the tensors (llama.cpp's names,
    /// `blk.N.attn_q.weight` etc.) checked against it, then dequantized to f32 one at a time (as
    /// [`Llama::from_gguf_with`] with [`LlamaLoad::F32`]; [`LlamaLoad::AsStored`] keeps the
    /// projections quantized). The q and k rows stay in the file's order and rotate with
    /// [`RopeLayout::Interleaved`].
    pub fn from_gguf(path: impl AsRef<Path>, dev: &Device) -> Result<Llama> {
        Llama::from_gguf_with(path, dev, LlamaLoad::F32)
    }

    /// [`Llama::from_gguf`] with a choice of what the weights become ([`LlamaLoad`]).
    pub fn from_gguf_with(path: impl AsRef<Path>, dev: &Device, how: LlamaLoad) -> Result<Llama> {
        let file = GgufFile::open(path)?;
        let cfg = LlamaConfig::from_gguf(&file)?;
        // HF name -> GGUF name, for every tensor of the file (unknown names kept as they are, so
        // the check reports them)
        let names: BTreeMap<String, String> = file
            .tensors()
            .iter()
            .map(|t| (hf_name(&t.name).unwrap_or_else(|| t.name.clone()), t.name.clone()))
            .collect();
        let available = file
            .tensors()
            .iter()
            .map(|t| (hf_name(&t.name).unwrap_or_else(|| t.name.clone()), t.shape()))
            .collect();
        let load = |name: &str| file.tensor(&names[name], DType::F32, &Device::Cpu);
        // Linear::from_quantized moves a kept matrix to `dev`
        let keep = how == LlamaLoad::AsStored;
        let load_quantized = |name: &str| -> Result<Option<QuantizedMatrix>> {
            let info = file.tensor_info(&names[name])?;
            match info.ggml_type.quant_format() {
                Some(_) if keep => file.quantized(&names[name]).map(Some),
                _ => Ok(None),
            }
        };
        let model = Llama::build(
            cfg,
            available,
            RopeLayout::Interleaved,
            file.name(),
            dev,
            load,
            load_quantized,
        )?;
        match how {
            LlamaLoad::BF16 => model.to_dtype(DType::BF16),
            LlamaLoad::F32 => Ok(model),
            LlamaLoad::AsStored => {
                let mut model = model;
                model.set_kv_dtype(DType::F16)?;
                Ok(model)
            }
        }
    }

    /// The model's shape.
    pub fn config(&self) -> &LlamaConfig {
        &self.cfg
    }

    /// Which coordinates RoPE pairs: [`RopeLayout::Half`] for a model loaded from a Hugging Face
    /// folder, [`RopeLayout::Interleaved`] for one loaded from GGUF (whose q and k rows are
    /// permuted accordingly; see [`RopeLayout`]).
    pub fn rope_layout(&self) -> RopeLayout {
        self.rope_layout
    }

    /// The device the weights live on.
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

    /// The dtype of the KV cache, in which the attention of a forward with a cache computes: the
    /// compute dtype unless set with [`Llama::set_kv_dtype`] (a model loaded with
    /// [`LlamaLoad::AsStored`]: f16).
    pub fn kv_dtype(&self) -> DType {
        self.kv_dtype.unwrap_or(self.dtype)
    }

    /// Sets the dtype of the KV cache (f32, bf16 or f16), whatever the compute dtype. In a forward
    /// with a cache ([`Llama::forward_cached`], generation) q, k and v are cast to it after RoPE
    /// (the attention itself accumulating in f32) and its output back to the compute dtype; a
    /// forward without one (training, scoring with [`Llama::forward`] or [`Llama::loss`]) keeps the
    /// compute dtype throughout. A decode step reads the whole cache once per token, so a 16-bit
    /// cache halves what long contexts cost in memory and time: SmolLM2-135M as stored (97 MB of
    /// weights a token) reads 23 MB of f32 cache a token at 512 positions. A model loaded with
    /// [`LlamaLoad::AsStored`] starts with f16, llama.cpp's default (its 10-bit mantissa rounds
    /// less than bf16's 7; values past ±65504 would overflow to infinity, and the sampler then
    /// refuses the NaN logits); the others with their compute dtype. A cache filled in one dtype
    /// cannot take positions in another: clear it after a change.
    pub fn set_kv_dtype(&mut self, dtype: DType) -> Result<()> {
        if !KV_DTYPES.contains(&dtype) {
            return Err(Error::DType {
                op: "llama",
                msg: format!("the KV cache holds f32, bf16 or f16, not {dtype}"),
            });
        }
        self.kv_dtype = Some(dtype);
        Ok(())
    }

    /// The model with every parameter cast to `dtype` (f32 or bf16), computing in it: for
    /// inference, where casting once beats a cast per forward. A bf16 model on the CPU has its
    /// projections' weights copied end to end into one buffer, each a view of its part, and its
    /// token table into another, which a decode step reads from huge pages (a SmolLM2-135M bf16
    /// step 6–16% shorter on a 2-vCPU AMD EPYC with fast memory, docs/perf.md). Train with
    /// [`Llama::set_dtype`].
    pub fn to_dtype(&self, dtype: DType) -> Result<Llama> {
        let mut model = self.clone();
        model.set_dtype(dtype)?;
        crate::nn::cast_params(&mut model, dtype)?;
        if dtype == DType::BF16 {
            // AdamW trains f32 only, so it meets no view
            model.pack_weights()?;
        }
        Ok(model)
    }

    /// On the CPU, the projections' weights copied end to end into one buffer and the token table
    /// (the tied LM head) into another ([`crate::nn::pack_weights`]: huge pages for decode; the
    /// lookup reads the table's buffer whole). For weights AdamW will not update: a bf16 model's,
    /// or a frozen base's.
    fn pack_weights(&mut self) -> Result<()> {
        if !matches!(self.device(), Device::Cpu) {
            return Ok(());
        }
        crate::nn::pack_weights(&mut [&mut self.embed_tokens.weight])?;
        let Llama { layers, lm_head, .. } = self;
        let mut weights: Vec<&mut Tensor> = layers
            .iter_mut()
            .flat_map(|l| l.projections_mut().map(|(_, lin)| lin))
            .chain(lm_head.as_mut())
            .filter(|lin| lin.quantized.is_none())
            .map(|lin| &mut lin.weight)
            .collect();
        crate::nn::pack_weights(&mut weights)
    }

    /// The model on `dev`: every parameter, LoRA adapter and quantized projection (with
    /// [`QuantizedMatrix::to_device`]) moved there, trainable tensors still trainable and frozen
    /// ones frozen.
    pub fn to_device(&self, dev: &Device) -> Result<Llama> {
        let _no_grad = crate::no_grad();
        let moved = |t: &Tensor| -> Result<Tensor> {
            let m = t.to_device(dev)?;
            Ok(if t.is_leaf_requiring_grad() {
                m.requires_grad()
            } else {
                m
            })
        };
        let mut model = self.clone();
        let mut first_error = None;
        crate::nn::Params::visit_params(&mut model, "", &mut |_, p| {
            if first_error.is_none() {
                match moved(p) {
                    Ok(m) => *p = m,
                    Err(e) => first_error = Some(e),
                }
            }
        });
        if let Some(e) = first_error {
            return Err(e);
        }
        // what the walk of the parameters leaves out: the quantized weights (and the empty
        // placeholders beside them) and the adapters
        let Llama { layers, lm_head, .. } = &mut model;
        let linears = layers
            .iter_mut()
            .flat_map(|l| l.projections_mut().map(|(_, lin)| lin))
            .chain(lm_head.as_mut());
        for lin in linears {
            if let Some(q) = &mut lin.quantized {
                *q = q.to_device(dev)?;
                lin.weight = moved(&lin.weight)?;
            }
            if let Some(lora) = &mut lin.lora {
                lora.a = moved(&lora.a)?;
                lora.b = moved(&lora.b)?;
            }
        }
        Ok(model)
    }

    /// Freezes every base parameter (all but the LoRA adapters): they no longer take a
    /// gradient, so a backward neither computes nor stores one for them, nor the activations only
    /// their gradients would need. Adding or loading an adapter freezes the base. On the CPU the
    /// frozen weights are then laid out for decoding as [`Llama::to_dtype`] lays out bf16 ones (the
    /// projections in one buffer, the token table in another, in huge pages).
    pub fn freeze_base(&mut self) {
        crate::nn::Params::visit_params(self, "", &mut |_, p| *p = p.detach());
        // frozen, so laid out for reading (huge pages on the CPU); if the copy cannot be made
        // (out of memory), the weights stay as they are, the same values
        let _ = self.pack_weights();
    }

    /// Gradient checkpointing for training: with `on`, a forward that records a graph keeps only
    /// each block's input and computes the block again in the backward (the same gradients, about
    /// one more forward of compute, and the activations of one block at a time instead of all).
    /// Inference and the KV cache are unaffected.
    pub fn set_recompute(&mut self, on: bool) {
        self.recompute = on;
    }

    /// Whether gradient checkpointing is on (see [`Llama::set_recompute`]).
    pub fn recompute(&self) -> bool {
        self.recompute
    }

    /// Every parameter by its Hugging Face name, in state-dict order. The tensors are the
    /// model's own leaves: look their gradients up with `grads.get(&tensor)`. For a model loaded
    /// from GGUF the q and k rows are in the file's order (see [`Llama::rope_layout`]).
    pub fn params(&self) -> Vec<(String, Tensor)> {
        crate::nn::Params::named_params(self) // the walk is in llama_params.rs
    }

    /// The number of parameters (a tied head counted once), the frozen quantized weights
    /// (which [`Llama::params`] does not list) included.
    pub fn num_params(&self) -> usize {
        // a tied head kept quantized is a copy of the token table, counted there
        let head = self.lm_head.as_ref().filter(|_| !self.cfg.tie_word_embeddings);
        let quantized: usize = self
            .layers
            .iter()
            .flat_map(|l| l.projections().map(|(_, lin)| lin))
            .chain(head)
            .filter_map(|lin| lin.quantized.as_ref())
            .map(|q| q.shape().iter().product::<usize>())
            .sum();
        quantized + crate::nn::Params::num_params(self)
    }

    /// Bytes of weights one decoding step reads: every parameter and quantized projection in
    /// its stored form, except that only one row of the token table is read when the LM head is
    /// a matrix of its own (the head reads the whole table when tied to it). The KV cache, which
    /// grows with the context, is not counted. Divided into a memory bandwidth, this bounds the
    /// tokens per second of batch-1 generation.
    pub fn weight_bytes_per_token(&self) -> usize {
        use crate::nn::Params;
        let quantized: usize = self
            .layers
            .iter()
            .flat_map(|l| l.projections().map(|(_, lin)| lin))
            .chain(&self.lm_head)
            .filter_map(|lin| lin.quantized.as_ref())
            .map(|q| q.stored_bytes().len())
            .sum();
        let bytes = |t: &Tensor| t.numel() * t.dtype().size_in_bytes();
        let params: usize = self.named_params().iter().map(|(_, t)| bytes(t)).sum();
        let table = &self.embed_tokens.weight;
        let unread_rows = if self.lm_head.is_some() {
            bytes(table) - bytes(table) / table.shape()[0].max(1)
        } else {
            0
        };
        quantized + params - unread_rows
    }

    /// An empty KV cache for [`Llama::forward_cached`].
    pub fn new_cache(&self) -> KvCache {
        KvCache::with_layers(self.cfg.num_hidden_layers)
    }

    /// ids u32 (B, T) -> logits f32 (B, T, vocab).
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        self.run(ids, None, LogitsAt::AllPositions)
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
        cache.transaction(|cache| {
            cache.check(self.cfg.num_hidden_layers, ids)?;
            self.run(ids, Some(cache), LogitsAt::AllPositions)
        })
    }

    /// As [`Llama::forward_cached`], returning only the last position's logits (B, vocab): the LM
    /// head runs on one position instead of t, what generation needs.
    pub fn forward_cached_last(&self, ids: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        let _no_grad = crate::no_grad();
        cache.transaction(|cache| {
            cache.check(self.cfg.num_hidden_layers, ids)?;
            self.run(ids, Some(cache), LogitsAt::LastPosition)
        })
    }

    /// The whole network: token table, blocks, final norm, LM head.
    fn run(&self, ids: &Tensor, mut cache: Option<&mut KvCache>, logits_at: LogitsAt) -> Result<Tensor> {
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
        let c = self.cfg.hidden_size;
        let table = self.embed_tokens.weight.to_dtype(self.dtype)?;
        // x is (B, T, C)
        let mut x = ids.embedding(&table)?;
        let pass = Pass {
            theta: self.cfg.rope_theta,
            layout: self.rope_layout,
            start,
            // the cache's dtype where there is one; training and scoring keep the compute dtype
            attention_dtype: if cache.is_some() { self.kv_dtype() } else { self.dtype },
        };
        let recompute = self.recompute && cache.is_none() && crate::is_grad_enabled();
        for (i, l) in self.layers.iter().enumerate() {
            x = match recompute {
                true => l.forward_recomputed(&x, &pass)?,
                false => l.forward(&x, &pass, cache.as_deref_mut(), i)?,
            };
        }
        if let Some(cache) = cache {
            cache.advance(t);
        }
        let (x, t) = match logits_at {
            LogitsAt::AllPositions => (x, t),
            LogitsAt::LastPosition => (x.narrow(1, t - 1, 1)?, 1),
        };
        // logits = norm(x) · headᵀ, (B·T, C) · (C, vocab)
        let x = self.norm.forward(&x)?.reshape(&[b * t, c])?;
        let logits = match &self.lm_head {
            Some(head) => head.forward(&x)?,
            None => x.linear(&table, None)?,
        };
        let logits = logits.to_dtype(DType::F32)?;
        match logits_at {
            LogitsAt::AllPositions => logits.reshape(&[b, t, self.cfg.vocab_size]),
            LogitsAt::LastPosition => Ok(logits),
        }
    }
}

/// The Hugging Face name of a llama.cpp tensor name (`blk.3.ffn_gate.weight` ->
/// `model.layers.3.mlp.gate_proj.weight`); None for names a Llama does not have.
fn hf_name(gguf: &str) -> Option<String> {
    let global = match gguf {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(name) = global {
        return Some(name.to_string());
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, module) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let module = match module {
        "attn_norm.weight" => "input_layernorm",
        "attn_q.weight" => "self_attn.q_proj",
        "attn_k.weight" => "self_attn.k_proj",
        "attn_v.weight" => "self_attn.v_proj",
        "attn_output.weight" => "self_attn.o_proj",
        "ffn_norm.weight" => "post_attention_layernorm",
        "ffn_gate.weight" => "mlp.gate_proj",
        "ffn_up.weight" => "mlp.up_proj",
        "ffn_down.weight" => "mlp.down_proj",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{module}.weight"))
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
