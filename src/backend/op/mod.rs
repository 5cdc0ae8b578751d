//! The op vocabulary: the words that `ops/` and the backends speak. Which elementwise function
//! ([`UnaryOp`], [`BinaryOp`]), which reduction ([`ReduceOp`]), the sizes of an attention call
//! ([`AttentionDims`]), what a fused matmul does to its product ([`Epilogue`]), the scalars and
//! operands of an AdamW step ([`AdamWHyper`], [`AdamWParam`]), how index_add groups its ids
//! ([`bucket_ids`]), how a token is drawn from logits ([`SampleParams`]), and the `exp` every CPU
//! loop uses ([`exp::Exp`]).
//!
//! This sits at the bottom of the backend layer: it imports only the dtype and layout vocabulary
//! (`crate::tensor::{dtype, layout}`), never a backend, `ops/` or `Tensor`, so both backends and
//! the ops above them can use it. Types generic over `S` are instantiated with the `Storage` enum
//! by the ops and with `CpuStorage` or `CudaStorage` inside a backend. The two results that hold
//! device storage, `RowStats` and `IdBuckets`, live with the dispatch that makes them
//! (backend/dispatch.rs).

pub mod binary;
pub mod exp;
pub mod quantized;
pub mod unary;

pub use binary::BinaryOp;
pub use quantized::{tile_block, PerMatrix, QuantFormat, QuantizedMatrix, GROUP_ROWS};
pub use unary::{gelu_derivative, UnaryOp};

use crate::tensor::layout::Layout;
use crate::{Error, Result};

/// A reduction over some dimensions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReduceOp {
    Sum,
    Max,
    Min,
}

impl ReduceOp {
    pub fn name(self) -> &'static str {
        match self {
            ReduceOp::Sum => "sum",
            ReduceOp::Max => "max",
            ReduceOp::Min => "min",
        }
    }
}

/// The sizes of one attention call: `bh` independent query heads (batch × heads) of `tq` queries
/// against `tk` keys and values, all rows `d` wide. Causal needs `tq <= tk`. Grouped-query
/// attention: `group` query heads share one key/value head (query head h reads key/value head
/// h / group of the `bh / group`); 1 is multi-head attention. `kv_stride` is the distance in
/// elements between the first rows of consecutive key/value heads: `tk·d` when K and V are dense,
/// more when they are the filled part of a KV cache's buffers (each head's `tk` rows contiguous,
/// the rest of its capacity after them). Only the CPU forward reads K and V with a larger stride.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttentionDims {
    pub bh: usize,
    pub tq: usize,
    pub tk: usize,
    pub d: usize,
    pub causal: bool,
    pub group: usize,
    pub kv_stride: usize,
}

impl AttentionDims {
    /// These sizes with K and V dense (`kv_stride = tk·d`).
    pub fn dense(self) -> AttentionDims {
        AttentionDims {
            kv_stride: self.tk * self.d,
            ..self
        }
    }

    /// The number of key/value heads (batch × key/value heads).
    pub fn kv_heads(&self) -> usize {
        self.bh / self.group
    }

    /// The score scale 1/√d.
    pub fn scale(&self) -> f64 {
        1.0 / (self.d as f64).sqrt()
    }

    /// How many keys query `i` sees: all of them, or (causal) those up to its absolute
    /// position tk − tq + i.
    pub fn visible(&self, i: usize) -> usize {
        if self.causal {
            (self.tk - self.tq + i + 1).min(self.tk)
        } else {
            self.tk
        }
    }
}

/// What a fused matmul does to the product `y` before storing it: `gelu?(y + bias) + residual`.
pub struct Epilogue<'a, S> {
    /// `[n]`, added to every row.
    pub bias: Option<(&'a S, &'a Layout)>,
    /// GELU (tanh form) after the bias.
    pub gelu: bool,
    /// The output's shape `[batch.., m, n]`, added last.
    pub residual: Option<(&'a S, &'a Layout)>,
    /// Also store `z = y + bias`, the activation's input, rounded to the dtype: a second output of
    /// the same pass (as llm.c keeps `fch`), so GELU's backward needs no second matmul.
    pub keep_pre: bool,
    /// With `gelu` and `keep_pre`, store GELU's derivative gelu'(z) in place of z (computed from the
    /// same exponential as the GELU), so that the backward is one multiplication, g·gelu'(z), with
    /// no exponential of its own. The CPU backend only, for f32 and f64 (the ops ask for it nowhere
    /// else; the CUDA kernels keep z).
    pub keep_gelu_derivative: bool,
}

impl<S> Epilogue<'static, S> {
    /// The plain product.
    pub const NONE: Epilogue<'static, S> = Epilogue {
        bias: None,
        gelu: false,
        residual: None,
        keep_pre: false,
        keep_gelu_derivative: false,
    };
}

/// The scalars of one AdamW step (see src/optim/adamw.rs).
pub struct AdamWHyper {
    /// 1 − lr·weight_decay, applied to decayed parameters.
    pub decay_factor: f64,
    pub b1: f64,
    pub b2: f64,
    /// lr / (1 − β1ᵗ).
    pub step_size: f64,
    /// √(1 − β2ᵗ).
    pub bc2_sqrt: f64,
    pub eps: f64,
    /// The factor the gradients are multiplied by first, in the parameters' precision: the
    /// gradient clipping's coefficient fused into the step (1 for none). The CPU applies it;
    /// other devices take 1 only (`AdamW::step_scaled` scales their gradients before the call).
    pub grad_scale: f64,
}

/// One parameter of a fused AdamW step over storages `S` (the `Storage` enum, or one backend's):
/// `param`, `m` and `v` are updated in place; all four storages hold the whole tensor, f32 or f64
/// alike, on one device; `copy` (bf16, same length) receives the new weights rounded.
pub struct AdamWParam<'a, S> {
    pub param: &'a mut S,
    pub grad: &'a S,
    pub m: &'a mut S,
    pub v: &'a mut S,
    pub copy: Option<&'a mut S>,
    pub decay: bool,
}

/// The positions of `ids` grouped by id, each group ascending (a stable counting sort), as
/// `IdBuckets` (backend/dispatch.rs) holds them on a device for index_add:
/// `order[starts[r]..starts[r + 1]]` are the positions `j` with `ids[j] == r`. Ids are below `size`.
pub fn bucket_ids(ids: &[u32], size: usize) -> (Vec<u32>, Vec<u32>) {
    let mut starts = vec![0u32; size + 1];
    for &id in ids {
        starts[id as usize + 1] += 1;
    }
    for r in 0..size {
        starts[r + 1] += starts[r];
    }
    let mut next = starts.clone();
    let mut order = vec![0u32; ids.len()];
    for (j, &id) in ids.iter().enumerate() {
        order[next[id as usize] as usize] = j as u32;
        next[id as usize] += 1;
    }
    (order, starts)
}

/// Which elements of a head rotary position embedding rotates together. Element pairs share the
/// frequency θᵢ = base^(−2i/head_dim), i in 0..head_dim/2.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeLayout {
    /// Hugging Face / GPT-NeoX (`rotate_half`): element i with element i + head_dim/2.
    Half,
    /// GGML / llama.cpp and Meta's original Llama: elements 2i and 2i + 1.
    Interleaved,
}

/// How `sample` draws a token from a row of logits (the sampler of generation): with
/// `temperature` 0 the first largest logit (greedy); else with probability ∝ exp((l − max)/T) among
/// the tokens left by top-k, then top-p. kernels/sample.cu's header gives the exact rules.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SampleParams {
    /// Divides the logits; 0 is greedy. Finite and ≥ 0.
    pub temperature: f64,
    /// Keep only the tokens whose logit is at least the k-th largest (ties kept); 0 keeps all.
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens (ties by id) whose probability reaches `top_p`;
    /// in (0, 1], 1 keeps all.
    pub top_p: f64,
}

/// The CPU sampler's buffers (backend/cpu/sample.rs), kept between draws by the caller (a
/// generation loop) so that a draw allocates nothing once they have grown to the vocabulary: the
/// logits' sort keys for top-k, which tokens the filters keep, and the kept ids in sorted order for
/// top-p. Their contents never carry over from one draw to the next.
#[derive(Clone, Debug, Default)]
pub struct SampleScratch {
    pub(crate) keys: Vec<u32>,
    pub(crate) kept: Vec<bool>,
    pub(crate) order: Vec<u32>,
}

impl SampleParams {
    /// An `Error::Invalid` of op `sample` when the temperature is negative or not finite, or top_p
    /// is outside (0, 1].
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::invalid("sample", msg));
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return bad(format!(
                "the temperature must be a finite number ≥ 0 (0: greedy), got {}",
                self.temperature
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad(format!("top_p must be in (0, 1], got {}", self.top_p));
        }
        Ok(())
    }
}

/// One rotary position embedding: x is `[batch, seq, heads, head_dim]` and position
/// `position_offset + t` is rotated by the angles (position_offset + t)·θᵢ.
#[derive(Clone, Copy, Debug)]
pub struct RopeSpec {
    pub seq: usize,
    pub heads: usize,
    /// Even.
    pub head_dim: usize,
    /// The position of the first of the `seq` positions (the tokens already in a KV cache).
    pub position_offset: usize,
    pub base: f64,
    pub layout: RopeLayout,
}

impl RopeSpec {
    /// θᵢ = base^(−2i/head_dim), in f64 (the kernel computes the same in f64; both round it once to
    /// their arithmetic type).
    pub fn frequency(&self, i: usize) -> f64 {
        self.base.powf(-((2 * i) as f64) / self.head_dim as f64)
    }
}
