//! The [`Params`] walk of the Llama architecture (Hugging Face's `LlamaForCausalLM` names:
//! `model.embed_tokens.weight`, `model.layers.{i}.self_attn.q_proj.weight`, ..., `model.norm.weight`,
//! `lm_head.weight` when the head is not tied), and [`Module`] for [`RmsNorm`] and [`Llama`].

use super::llama::{Llama, LlamaAttention, LlamaBlock, LlamaMlp, RmsNorm};
use crate::nn::{const_param, join, Module, ParamVisitor, Params};
use crate::{Device, Result, Tensor};

impl RmsNorm {
    /// Gain 1 over `dim` channels, as PyTorch initialises `torch.nn.RMSNorm`.
    pub fn new(dim: usize, eps: f64, dev: &Device) -> Result<RmsNorm> {
        Ok(RmsNorm {
            weight: const_param(1.0, &[dim], dev)?,
            eps,
        })
    }
}

impl Params for RmsNorm {
    /// `weight` `[dim]`.
    fn visit_params(&mut self, prefix: &str, f: &mut ParamVisitor<'_>) {
        f(&join(prefix, "weight"), &mut self.weight);
    }
}

impl Module for RmsNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        RmsNorm::forward(self, x)
    }
}

impl Params for LlamaAttention {
    /// `q_proj`, `k_proj`, `v_proj`, `o_proj`.
    fn visit_params(&mut self, prefix: &str, f: &mut ParamVisitor<'_>) {
        self.q_proj.visit_params(&join(prefix, "q_proj"), f);
        self.k_proj.visit_params(&join(prefix, "k_proj"), f);
        self.v_proj.visit_params(&join(prefix, "v_proj"), f);
        self.o_proj.visit_params(&join(prefix, "o_proj"), f);
    }
}

impl Params for LlamaMlp {
    /// `gate_proj`, `up_proj`, `down_proj`.
    fn visit_params(&mut self, prefix: &str, f: &mut ParamVisitor<'_>) {
        self.gate_proj.visit_params(&join(prefix, "gate_proj"), f);
        self.up_proj.visit_params(&join(prefix, "up_proj"), f);
        self.down_proj.visit_params(&join(prefix, "down_proj"), f);
    }
}

impl Params for LlamaBlock {
    /// `self_attn`, `mlp`, `input_layernorm`, `post_attention_layernorm` (Hugging Face's order).
    fn visit_params(&mut self, prefix: &str, f: &mut ParamVisitor<'_>) {
        self.self_attn.visit_params(&join(prefix, "self_attn"), f);
        self.mlp.visit_params(&join(prefix, "mlp"), f);
        self.input_layernorm.visit_params(&join(prefix, "input_layernorm"), f);
        self.post_attention_layernorm
            .visit_params(&join(prefix, "post_attention_layernorm"), f);
    }
}

impl Params for Llama {
    /// `model.embed_tokens`, `model.layers.{i}`, `model.norm`, then `lm_head` unless it is tied.
    fn visit_params(&mut self, prefix: &str, f: &mut ParamVisitor<'_>) {
        let model = join(prefix, "model");
        self.embed_tokens.visit_params(&join(&model, "embed_tokens"), f);
        for (i, layer) in self.layers.iter_mut().enumerate() {
            layer.visit_params(&join(&model, &format!("layers.{i}")), f);
        }
        self.norm.visit_params(&join(&model, "norm"), f);
        if let Some(head) = &mut self.lm_head {
            head.visit_params(&join(prefix, "lm_head"), f);
        }
    }
}

impl Module for Llama {
    /// ids u32 (B, T) -> logits f32 (B, T, vocab) ([`Llama::forward`]).
    fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        Llama::forward(self, ids)
    }
}
