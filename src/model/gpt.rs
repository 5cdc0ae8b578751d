//! The GPT-2 architecture, layer by layer. Read top-down: [`Gpt::forward`] embeds the ids,
//! runs the [`Block`]s, normalises and projects onto the vocabulary with the tied token
//! table. Shapes are written as (B, T, C): batch, time (positions), channels (n_embd);
//! nh is the number of heads and hs = C / nh the width of one head.

use super::config::GptConfig;
use super::kv_cache::{KvCache, LayerKv, LogitsAt};
use crate::nn::{join, Embedding, LayerNorm, Linear, Module, ParamVisitor, Params};
use crate::{DType, Device, Error, Result, Rng, Tensor};

/// GPT-2's LayerNorm epsilon.
pub const LN_EPS: f32 = 1e-5;
/// Standard deviation of GPT-2's initial weights.
const INIT_STD: f64 = 0.02;

/// Dropout in training (`rng` given), the identity in evaluation (`rng` None).
fn dropout(x: Tensor, p: f64, rng: Option<&mut Rng>) -> Result<Tensor> {
    match rng {
        Some(rng) if p > 0.0 => x.dropout(p, true, rng),
        _ => Ok(x),
    }
}

/// u32 (tq, tk) mask, 1 where query i (at absolute position `start + i`) must not see key j.
pub(crate) fn causal_mask(tq: usize, tk: usize, start: usize, dev: &Device) -> Result<Tensor> {
    let mask: Vec<u32> = (0..tq)
        .flat_map(|i| (0..tk).map(move |j| u32::from(j > start + i)))
        .collect();
    Tensor::from_vec(mask, &[tq, tk], dev)
}

/// Multi-head causal self-attention with one combined q/k/v projection.
#[derive(Clone, Debug)]
pub struct CausalSelfAttention {
    /// The combined q, k, v projection: weight `[3C, C]`, bias `[3C]`.
    pub c_attn: Linear,
    /// The output projection: weight `[C, C]`, bias `[C]`.
    pub c_proj: Linear,
    /// Number of heads nh (head size C / nh).
    pub n_head: usize,
    /// Dropout probability in training, on the attention weights and on the output projection.
    pub dropout: f64,
}

impl CausalSelfAttention {
    /// x is (B, T, C), the block's normalised input; returns `residual + attention(x)`, (B, T, C).
    /// With a cache, T new positions attend to the cached ones as well, and their keys and values
    /// are appended to it.
    pub fn forward(
        &self,
        x: &Tensor,
        residual: &Tensor,
        cache: Option<&mut LayerKv>,
        mut rng: Option<&mut Rng>,
    ) -> Result<Tensor> {
        let &[b, t, c] = x.shape() else {
            return Err(Error::shape(
                "attention",
                format!("expected (B, T, C), got {:?}", x.shape()),
            ));
        };
        let (nh, hs) = (self.n_head, c / self.n_head);
        let drawn = rng.is_some() && self.dropout > 0.0;
        if cache.is_none() && !drawn {
            // training and full forwards: one op from the (B, T, 3C) projection to the heads'
            // outputs side by side (B, T, C), fused on the CPU (no copies of q, k, v or y)
            let y = self.c_attn.forward(x)?.qkv_attention(nh, true)?;
            return project_residual(&self.c_proj, &y, residual, self.dropout, rng);
        }
        // qkv is (B, T, 3C) = (B, T, 3, nh, hs); permuted (views, no copy) to (3, B, nh, T, hs)
        let qkv = self
            .c_attn
            .forward(x)?
            .reshape(&[b, t, 3, nh, hs])?
            .permute(&[2, 0, 3, 1, 4])?;
        // q, k, v are each (1, B, nh, T, hs): the leading 1 is the split, kept to stay a view
        let q = qkv.narrow(0, 0, 1)?;
        let (mut k, mut v) = (qkv.narrow(0, 1, 1)?, qkv.narrow(0, 2, 1)?);
        let start = cache.as_ref().map_or(0, |c| c.len());
        if let Some(cache) = cache {
            (k, v) = cache.append(k, v)?; // (1, B, nh, Tk, hs) with Tk = start + T
        }
        let y = match rng.as_deref_mut() {
            // dropout on the attention probabilities needs them as a tensor: the composed path
            Some(rng) if self.dropout > 0.0 => attention_reference(&q, &k, &v, start, self.dropout, Some(rng))?,
            // otherwise one fused op: no (T, Tk) scores kept, on every device
            _ => {
                // k and v may be views of the cache's buffers: squeezed, they stay views
                let (q, k, v) = (q.reshape(&[b, nh, t, hs])?, k.squeeze(0)?, v.squeeze(0)?);
                q.scaled_dot_product_attention(&k, &v, true)?
            }
        };
        // y is (B, nh, T, hs) -> (B, T, nh, hs) -> (B, T, C): heads side by side again
        let y = y
            .reshape(&[b, nh, t, hs])?
            .permute(&[0, 2, 1, 3])?
            .reshape(&[b, t, c])?;
        project_residual(&self.c_proj, &y, residual, self.dropout, rng)
    }
}

/// Causal attention composed from tensor ops, as a reader would first write it: scores, mask,
/// softmax, optional dropout on the probabilities, weighted sum of the values. q is (1, B, nh, T,
/// hs), k and v (1, B, nh, Tk, hs), the T queries sitting at positions `start..start + T`; returns
/// (1, B, nh, T, hs); dropout (probability p) applies when `rng` is given. The model uses it only
/// for attention dropout; the fused `scaled_dot_product_attention` computes the same thing
/// otherwise (tests/gpt_model.rs, `attention_reference_equals_the_fused_op`, compares the outputs
/// and the gradients of both).
pub fn attention_reference(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    start: usize,
    p: f64,
    rng: Option<&mut Rng>,
) -> Result<Tensor> {
    let (t, tk, hs) = (q.shape()[3], k.shape()[3], q.shape()[4]);
    // q is scaled by 1/√hs first, on T·hs elements per head rather than T·Tk scores
    let q = q.mul_scalar(1.0 / (hs as f64).sqrt())?;
    // att is (1, B, nh, T, Tk): every (scaled) query against every key
    let att = q.matmul(&k.transpose(-2, -1)?)?;
    let att = att.masked_fill(&causal_mask(t, tk, start, q.device())?, f64::NEG_INFINITY)?;
    dropout(att.softmax(-1)?, p, rng)?.matmul(v)
}

/// `residual + dropout(proj(y))`: one matmul with the bias and the residual add fused into it
/// when no dropout is drawn (evaluation, or p = 0).
fn project_residual(proj: &Linear, y: &Tensor, residual: &Tensor, p: f64, rng: Option<&mut Rng>) -> Result<Tensor> {
    match rng {
        Some(rng) if p > 0.0 => residual.add(&dropout(proj.forward(y)?, p, Some(rng))?),
        _ => proj.forward_residual(y, residual),
    }
}

/// The feed-forward network: C -> 4C -> GELU (tanh) -> C.
#[derive(Clone, Debug)]
pub struct Mlp {
    /// The expansion: weight `[4C, C]`, bias `[4C]`.
    pub c_fc: Linear,
    /// The projection back: weight `[C, 4C]`, bias `[C]`.
    pub c_proj: Linear,
    /// Dropout probability in training, on the output.
    pub dropout: f64,
}

impl Mlp {
    /// x is (B, T, C), the block's normalised input; returns `residual + mlp(x)`, (B, T, C). The
    /// hidden activations gelu(x·W_fcᵀ + b) are (B, T, 4C), the GELU fused into the first matmul.
    pub fn forward(&self, x: &Tensor, residual: &Tensor, rng: Option<&mut Rng>) -> Result<Tensor> {
        let h = self.c_fc.forward_gelu(x)?;
        project_residual(&self.c_proj, &h, residual, self.dropout, rng)
    }
}

/// A pre-LN transformer block: x + attn(ln_1(x)), then x + mlp(ln_2(x)).
#[derive(Clone, Debug)]
pub struct Block {
    /// The layer norm before attention.
    pub ln_1: LayerNorm,
    /// The attention sublayer.
    pub attn: CausalSelfAttention,
    /// The layer norm before the feed-forward.
    pub ln_2: LayerNorm,
    /// The feed-forward sublayer.
    pub mlp: Mlp,
}

/// A Linear drawn from N(0, std²) when `rng` is given, else all zeros.
fn linear(i: usize, o: usize, bias: bool, std: f64, rng: Option<&mut Rng>, dev: &Device) -> Result<Linear> {
    match rng {
        Some(rng) => Linear::normal(i, o, bias, std, rng, dev),
        None => Linear::zeros(i, o, bias, dev),
    }
}

impl Block {
    fn new(cfg: &GptConfig, mut rng: Option<&mut Rng>, dev: &Device) -> Result<Block> {
        let c = cfg.n_embd;
        // the two projections that write into the residual stream start smaller, so the
        // stream's variance does not grow with depth (GPT-2 paper, section 2.3)
        let proj_std = INIT_STD / (2.0 * cfg.n_layer as f64).sqrt();
        Ok(Block {
            ln_1: LayerNorm::new(c, cfg.bias, LN_EPS, dev)?,
            attn: CausalSelfAttention {
                c_attn: linear(c, 3 * c, cfg.bias, INIT_STD, rng.as_deref_mut(), dev)?,
                c_proj: linear(c, c, cfg.bias, proj_std, rng.as_deref_mut(), dev)?,
                n_head: cfg.n_head,
                dropout: cfg.dropout,
            },
            ln_2: LayerNorm::new(c, cfg.bias, LN_EPS, dev)?,
            mlp: Mlp {
                c_fc: linear(c, 4 * c, cfg.bias, INIT_STD, rng.as_deref_mut(), dev)?,
                c_proj: linear(4 * c, c, cfg.bias, proj_std, rng, dev)?,
                dropout: cfg.dropout,
            },
        })
    }

    /// x is (B, T, C) -> (B, T, C).
    pub fn forward(&self, x: &Tensor, cache: Option<&mut LayerKv>, mut rng: Option<&mut Rng>) -> Result<Tensor> {
        let x = self
            .attn
            .forward(&self.ln_1.forward(x)?, x, cache, rng.as_deref_mut())?; // x + attn(ln_1(x))
        self.mlp.forward(&self.ln_2.forward(&x)?, &x, rng) // x + mlp(ln_2(x))
    }
}

/// The dtypes a [`Gpt`] computes in ([`Gpt::set_dtype`]).
pub const COMPUTE_DTYPES: [DType; 2] = [DType::F32, DType::BF16];

/// A GPT-2 language model. The LM head is tied to the token embedding `wte`. Cloning is
/// cheap and the clone shares the parameters (updates through one are seen by the other).
#[derive(Clone, Debug)]
pub struct Gpt {
    cfg: GptConfig,
    /// The compute dtype: the activations' (see [`Gpt::set_dtype`]).
    dtype: DType,
    /// Token embedding `[vocab_size, C]`, tied to the LM head (the logits are `x·wteᵀ`).
    pub wte: Embedding,
    /// Position embedding `[block_size, C]`.
    pub wpe: Embedding,
    /// The transformer blocks, `n_layer` of them.
    pub h: Vec<Block>,
    /// The final layer norm, before the LM head.
    pub ln_f: LayerNorm,
}

impl Gpt {
    /// A freshly initialised model (GPT-2's scheme): weights N(0, 0.02²), the residual
    /// projections N(0, (0.02/√(2·n_layer))²), biases 0, LayerNorm gains 1. Parameters are
    /// drawn in the order of [`Gpt::params`].
    pub fn new(cfg: GptConfig, rng: &mut Rng, dev: &Device) -> Result<Gpt> {
        Gpt::build(cfg, Some(rng), dev)
    }

    /// A model whose weights are all zero (LayerNorm gains 1), to load weights into.
    pub(crate) fn zeros(cfg: GptConfig, dev: &Device) -> Result<Gpt> {
        Gpt::build(cfg, None, dev)
    }

    fn build(cfg: GptConfig, mut rng: Option<&mut Rng>, dev: &Device) -> Result<Gpt> {
        cfg.validate()?;
        let (wte, wpe) = match rng.as_deref_mut() {
            Some(rng) => (
                Embedding::normal(cfg.vocab_size, cfg.n_embd, INIT_STD, rng, dev)?,
                Embedding::normal(cfg.block_size, cfg.n_embd, INIT_STD, rng, dev)?,
            ),
            None => (
                Embedding::zeros(cfg.vocab_size, cfg.n_embd, dev)?,
                Embedding::zeros(cfg.block_size, cfg.n_embd, dev)?,
            ),
        };
        let h = (0..cfg.n_layer)
            .map(|_| Block::new(&cfg, rng.as_deref_mut(), dev))
            .collect::<Result<Vec<_>>>()?;
        let ln_f = LayerNorm::new(cfg.n_embd, cfg.bias, LN_EPS, dev)?;
        Ok(Gpt {
            cfg,
            dtype: DType::F32,
            wte,
            wpe,
            h,
            ln_f,
        })
    }

    /// The model's shape.
    pub fn config(&self) -> &GptConfig {
        &self.cfg
    }

    /// The compute dtype (f32 unless set).
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Sets the dtype the model computes in: f32 (the default), or bf16 for mixed precision. The
    /// parameters stay as they are (f32 master weights, which the optimizer updates); in bf16 each
    /// forward casts them to bf16 where they are used, so the matmuls, attention, layer norms,
    /// embeddings and activations (the KV cache too) are bf16, the kernels' statistics and the loss
    /// f32, and the parameters' gradients come back through the casts in f32. See docs/model.md.
    pub fn set_dtype(&mut self, dtype: DType) -> Result<()> {
        if !COMPUTE_DTYPES.contains(&dtype) {
            return Err(Error::DType {
                op: "gpt",
                msg: format!("the model computes in f32 or bf16, not {dtype}"),
            });
        }
        self.dtype = dtype;
        Ok(())
    }

    /// Changes the dropout probability used by `forward_train` (e.g. 0 to fine-tune a model
    /// whose config says 0.1).
    pub fn set_dropout(&mut self, p: f64) -> Result<()> {
        GptConfig {
            dropout: p,
            ..self.cfg.clone()
        }
        .validate()?;
        self.cfg.dropout = p;
        for block in &mut self.h {
            block.attn.dropout = p;
            block.mlp.dropout = p;
        }
        Ok(())
    }

    /// The model with every parameter cast to `dtype` (f32 or bf16), computing in it: for
    /// inference, where casting the weights once beats a cast per forward (generation runs one
    /// forward per token). The cast parameters are new leaves; parameters already in `dtype` are
    /// shared with `self`, except that a bf16 model on the CPU has its blocks' matrices copied end
    /// to end into one buffer, each a view of its part, and its token table into another, which a
    /// decode step reads from huge pages (docs/llama.md, "The decode step"). The optimizer
    /// updates f32 parameters only: train with [`Gpt::set_dtype`].
    pub fn to_dtype(&self, dtype: DType) -> Result<Gpt> {
        let mut model = self.clone();
        model.set_dtype(dtype)?;
        crate::nn::cast_params(&mut model, dtype)?;
        if dtype == DType::BF16 {
            // AdamW trains f32 only, so it meets no view
            model.pack_weights()?;
        }
        Ok(model)
    }

    /// Freezes every parameter for inference: they no longer take a gradient, and on the CPU they
    /// are laid out for decoding as [`Gpt::to_dtype`] lays out bf16 ones (the blocks' matrices in
    /// one buffer, the token table in another, in huge pages), whatever their dtype. The values are
    /// unchanged. A frozen model generates and evaluates; an optimizer has nothing left to train.
    /// Cloning first keeps the trainable model: `let mut frozen = model.clone(); frozen.freeze();`
    /// (the clone's parameters are replaced, not changed, so `model` keeps its own). The copy is
    /// paid once (GPT-2 124M in f32: 0.1–0.6 s on a 2-vCPU virtual machine, most of it the first
    /// writes to fresh huge pages) and pays back over long generations: there, an f32 decode step
    /// 7–9% shorter (docs/perf-log.md). `kiln bench --generate` freezes the model it times.
    pub fn freeze(&mut self) {
        crate::nn::Params::visit_params(self, "", &mut |_, p| *p = p.detach());
        // if the copy cannot be made (out of memory), the weights stay as they are, the same values
        let _ = self.pack_weights();
    }

    /// On the CPU, the blocks' matrices copied end to end into one buffer and the token table (the
    /// tied LM head) into another ([`crate::nn::pack_weights`]): the lookup reads the table whole.
    /// For weights AdamW will not update: a bf16 model's, or a frozen one's.
    fn pack_weights(&mut self) -> Result<()> {
        if !matches!(self.device(), Device::Cpu) {
            return Ok(());
        }
        crate::nn::pack_weights(&mut [&mut self.wte.weight])?;
        let mut weights: Vec<&mut Tensor> = self
            .h
            .iter_mut()
            .flat_map(|b| {
                [
                    &mut b.attn.c_attn,
                    &mut b.attn.c_proj,
                    &mut b.mlp.c_fc,
                    &mut b.mlp.c_proj,
                ]
            })
            .map(|lin| &mut lin.weight)
            .collect();
        crate::nn::pack_weights(&mut weights)
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        self.wte.weight.device()
    }

    /// Every parameter by its Hugging Face GPT-2 name, in state-dict order ([`Params`]'s walk).
    /// The tensors are the model's own leaves (requires_grad): look their gradients up with
    /// `grads.get(&tensor)`; `Tensor::assign` on them updates the model.
    pub fn params(&self) -> Vec<(String, Tensor)> {
        self.named_params()
    }

    /// The number of parameters (the tied LM head counted once).
    pub fn num_params(&self) -> usize {
        Params::num_params(self)
    }

    /// Bytes of weights one decoding step reads: every parameter in its stored dtype, except
    /// that only one row of the position table is read (the token table is read whole: it is
    /// also the LM head). The KV cache, which grows with the context, is not counted. Divided
    /// into a memory bandwidth, this bounds the tokens per second of batch-1 generation.
    pub fn weight_bytes_per_token(&self) -> usize {
        let bytes = |t: &Tensor| t.numel() * t.dtype().size_in_bytes();
        let params: usize = self.named_params().iter().map(|(_, t)| bytes(t)).sum();
        let positions = &self.wpe.weight;
        params - (bytes(positions) - bytes(positions) / positions.shape()[0].max(1))
    }

    /// ids u32 (B, T) -> logits (B, T, vocab), evaluation mode (no dropout).
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        self.run(ids, None, None, LogitsAt::AllPositions)
    }

    /// As [`Gpt::forward`] with dropout (when `dropout > 0`), its masks drawn from `rng`.
    pub fn forward_train(&self, ids: &Tensor, rng: &mut Rng) -> Result<Tensor> {
        self.run(ids, None, Some(rng), LogitsAt::AllPositions)
    }

    /// Mean cross-entropy of the next-token predictions against `targets` u32 (B, T),
    /// evaluation mode.
    pub fn loss(&self, ids: &Tensor, targets: &Tensor) -> Result<Tensor> {
        cross_entropy(&self.forward(ids)?, targets)
    }

    /// As [`Gpt::loss`] with dropout.
    pub fn loss_train(&self, ids: &Tensor, targets: &Tensor, rng: &mut Rng) -> Result<Tensor> {
        cross_entropy(&self.forward_train(ids, rng)?, targets)
    }

    /// Incremental decoding: `ids` (B, t) are the tokens at the positions after those already
    /// in `cache`; returns their logits (B, t, vocab) and appends their keys and values to
    /// the cache. Runs without recording gradients. Equal to the matching rows of a full
    /// [`Gpt::forward`] over the whole sequence.
    pub fn forward_cached(&self, ids: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        let _no_grad = crate::no_grad();
        cache.transaction(|cache| {
            cache.check(self.cfg.n_layer, ids)?;
            self.run(ids, Some(cache), None, LogitsAt::AllPositions)
        })
    }

    /// As [`Gpt::forward_cached`], returning only the last position's logits (B, vocab): the LM
    /// head runs on one position instead of t, what generation needs.
    pub fn forward_cached_last(&self, ids: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        let _no_grad = crate::no_grad();
        cache.transaction(|cache| {
            cache.check(self.cfg.n_layer, ids)?;
            self.run(ids, Some(cache), None, LogitsAt::LastPosition)
        })
    }

    /// The whole network: embeddings, blocks, final norm, tied LM head.
    fn run(
        &self,
        ids: &Tensor,
        mut cache: Option<&mut KvCache>,
        mut rng: Option<&mut Rng>,
        logits_at: LogitsAt,
    ) -> Result<Tensor> {
        let (b, t) = self.check_ids(ids)?;
        let start = cache.as_ref().map_or(0, |c| c.len());
        if start + t > self.cfg.block_size {
            return Err(Error::invalid(
                "gpt",
                format!(
                    "{} positions ({start} cached + {t} new) exceed the block size {}; crop the context",
                    start + t,
                    self.cfg.block_size
                ),
            ));
        }
        let c = self.cfg.n_embd;
        // The tables in the compute dtype (no-ops in the parameters' own): every layer after them
        // follows its input's dtype. wte is cast once for both of its uses, the lookup and the head.
        let wte = self.wte.weight.to_dtype(self.dtype)?;
        let wpe = self.wpe.weight.narrow(0, start, t)?.to_dtype(self.dtype)?;
        // token embeddings (B, T, C) plus the position embeddings of start..start + T, (T, C),
        // broadcast over the batch: one fused lookup
        let x = ids.token_position_embedding(&wte, &wpe)?;
        let mut x = dropout(x, self.cfg.dropout, rng.as_deref_mut())?;
        for (i, block) in self.h.iter().enumerate() {
            let layer_cache = cache.as_deref_mut().map(|c| c.layer(i));
            x = block.forward(&x, layer_cache, rng.as_deref_mut())?;
        }
        if let Some(cache) = cache {
            cache.advance(t);
        }
        let (x, t) = match logits_at {
            LogitsAt::AllPositions => (x, t),
            LogitsAt::LastPosition => (x.narrow(1, t - 1, 1)?, 1),
        };
        let x = self.ln_f.forward(&x)?;
        // tied LM head: logits = x · wteᵀ, (B·T, C) · (C, vocab)
        let logits = x.reshape(&[b * t, c])?.linear(&wte, None)?;
        match logits_at {
            LogitsAt::AllPositions => logits.reshape(&[b, t, self.cfg.vocab_size]),
            LogitsAt::LastPosition => Ok(logits),
        }
    }

    fn check_ids(&self, ids: &Tensor) -> Result<(usize, usize)> {
        if ids.dtype() != DType::U32 {
            return Err(Error::DType {
                op: "gpt",
                msg: format!("token ids must be u32, got {}", ids.dtype()),
            });
        }
        match *ids.shape() {
            [b, t] if b > 0 && t > 0 => Ok((b, t)),
            _ => Err(Error::shape(
                "gpt",
                format!("token ids must be (B, T) with B, T ≥ 1, got {:?}", ids.shape()),
            )),
        }
    }
}

impl Params for CausalSelfAttention {
    /// `c_attn`, `c_proj`.
    fn visit_params(&mut self, prefix: &str, f: &mut ParamVisitor<'_>) {
        self.c_attn.visit_params(&join(prefix, "c_attn"), f);
        self.c_proj.visit_params(&join(prefix, "c_proj"), f);
    }
}

impl Params for Mlp {
    /// `c_fc`, `c_proj`.
    fn visit_params(&mut self, prefix: &str, f: &mut ParamVisitor<'_>) {
        self.c_fc.visit_params(&join(prefix, "c_fc"), f);
        self.c_proj.visit_params(&join(prefix, "c_proj"), f);
    }
}

impl Params for Block {
    /// `ln_1`, `attn`, `ln_2`, `mlp` (Hugging Face's state-dict order).
    fn visit_params(&mut self, prefix: &str, f: &mut ParamVisitor<'_>) {
        self.ln_1.visit_params(&join(prefix, "ln_1"), f);
        self.attn.visit_params(&join(prefix, "attn"), f);
        self.ln_2.visit_params(&join(prefix, "ln_2"), f);
        self.mlp.visit_params(&join(prefix, "mlp"), f);
    }
}

impl Params for Gpt {
    /// Hugging Face GPT-2's names: `transformer.wte.weight`, `transformer.wpe.weight`,
    /// `transformer.h.{i}.…`, `transformer.ln_f.…` (the LM head is tied to `wte`, not listed).
    fn visit_params(&mut self, prefix: &str, f: &mut ParamVisitor<'_>) {
        let prefix = join(prefix, "transformer");
        self.wte.visit_params(&join(&prefix, "wte"), f);
        self.wpe.visit_params(&join(&prefix, "wpe"), f);
        for (i, block) in self.h.iter_mut().enumerate() {
            block.visit_params(&join(&prefix, &format!("h.{i}")), f);
        }
        self.ln_f.visit_params(&join(&prefix, "ln_f"), f);
    }
}

impl Module for Gpt {
    /// ids u32 (B, T) -> logits (B, T, vocab), evaluation mode ([`Gpt::forward`]).
    fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        Gpt::forward(self, ids)
    }
}

/// logits (B, T, V) against targets (B, T) -> mean cross-entropy [].
fn cross_entropy(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let &[b, t, v] = logits.shape() else {
        unreachable!("the model returns (B, T, V) logits")
    };
    if targets.shape() != [b, t] {
        return Err(Error::shape(
            "gpt loss",
            format!(
                "logits {:?} need targets of shape [{b}, {t}], got {:?}",
                logits.shape(),
                targets.shape()
            ),
        ));
    }
    logits.reshape(&[b * t, v])?.cross_entropy(&targets.reshape(&[b * t])?)
}
