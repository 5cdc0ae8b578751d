//! Layers: [`Linear`] (optionally adapted by a [`Lora`]), [`Embedding`], [`LayerNorm`]. Each owns its parameters as leaf
//! tensors (created with `requires_grad`) and has a short `forward`. Weights follow
//! PyTorch's layouts, so a state dict maps onto them one to one.
//!
//! A layer computes in its input's dtype: given a bf16 input, its f32 parameters are cast to bf16
//! for the call (mixed precision; the cast's backward returns their gradients in f32, so the
//! optimizer updates f32 master weights). With inputs of the parameters' dtype nothing is cast.

use crate::ops::linear_quantized::QuantizedMatrix;
use crate::{DType, Device, Result, Rng, Tensor};

mod lora;
pub use lora::{Lora, LoraConfig, LoraDropout, DEFAULT_LORA_TARGETS, LORA_TARGETS};

/// Normal(0, std²) samples as a leaf that requires a gradient.
pub fn normal_param(shape: &[usize], std: f64, rng: &mut Rng, dev: &Device) -> Result<Tensor> {
    let t = Tensor::randn(shape, DType::F64, rng, dev)?.affine(std, 0.0)?;
    Ok(t.to_dtype(DType::F32)?.requires_grad())
}

/// A constant-filled leaf that requires a gradient.
pub fn const_param(value: f64, shape: &[usize], dev: &Device) -> Result<Tensor> {
    Ok(Tensor::full(value, shape, DType::F32, dev)?.requires_grad())
}

/// `p` in the dtype of the float input `x` (a differentiable cast; `p` itself when they agree).
fn like(p: &Tensor, x: &Tensor) -> Result<Tensor> {
    if x.dtype().is_float() {
        p.to_dtype(x.dtype())
    } else {
        Ok(p.clone()) // the op reports the bad input
    }
}

/// `p` (optional) in the dtype of `x`.
fn like_opt(p: &Option<Tensor>, x: &Tensor) -> Result<Option<Tensor>> {
    p.as_ref().map(|p| like(p, x)).transpose()
}

/// `y = x·Wᵀ + b`, with `weight` stored `[out, in]` as in `torch.nn.Linear` or kept in a ggml
/// block format (`quantized`; inference only, see [`Linear::from_quantized`]); with a LoRA
/// adapter, `+ s·(x·Aᵀ)·Bᵀ` (see [`Lora`]).
#[derive(Clone, Debug)]
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub lora: Option<Lora>,
    /// The weight `[out, in]` in a quantized block format; when set, it is the weight and
    /// `weight` is an empty placeholder (shape `[0]`, not a parameter).
    pub quantized: Option<QuantizedMatrix>,
}

impl Linear {
    /// Weight drawn from N(0, std²), bias zero (GPT-2's initialisation).
    pub fn new(
        in_features: usize,
        out_features: usize,
        bias: bool,
        std: f64,
        rng: &mut Rng,
        dev: &Device,
    ) -> Result<Linear> {
        Ok(Linear {
            quantized: None,
            weight: normal_param(&[out_features, in_features], std, rng, dev)?,
            bias: if bias {
                Some(const_param(0.0, &[out_features], dev)?)
            } else {
                None
            },
            lora: None,
        })
    }

    /// All-zero weight and bias (to be overwritten by loaded weights).
    pub fn zeros(in_features: usize, out_features: usize, bias: bool, dev: &Device) -> Result<Linear> {
        Ok(Linear {
            quantized: None,
            weight: const_param(0.0, &[out_features, in_features], dev)?,
            bias: if bias {
                Some(const_param(0.0, &[out_features], dev)?)
            } else {
                None
            },
            lora: None,
        })
    }

    /// A layer whose weight stays in its quantized block format, without bias. Its products run
    /// on the CPU ([`Tensor::linear_quantized`]); it has no trainable weight, and a backward
    /// through it is an error.
    pub fn from_quantized(weight: QuantizedMatrix, dev: &Device) -> Result<Linear> {
        Ok(Linear {
            weight: Tensor::zeros(&[0], DType::F32, dev)?,
            bias: None,
            lora: None,
            quantized: Some(weight),
        })
    }

    /// `[out, in]`.
    fn shape(&self) -> [usize; 2] {
        match &self.quantized {
            Some(q) => q.shape(),
            None => [self.weight.shape()[0], self.weight.shape()[1]],
        }
    }

    pub fn in_features(&self) -> usize {
        self.shape()[1]
    }

    pub fn out_features(&self) -> usize {
        self.shape()[0]
    }

    /// `x·Wᵀ + b` with the quantized weight, then `epilogue` (the unfused forms).
    fn forward_quantized(
        &self,
        q: &QuantizedMatrix,
        x: &Tensor,
        epilogue: impl FnOnce(Tensor) -> Result<Tensor>,
    ) -> Result<Tensor> {
        let y = x.linear_quantized(q)?;
        let y = match like_opt(&self.bias, x)? {
            Some(b) => y.add(&b)?,
            None => y,
        };
        epilogue(y)
    }

    /// x is (..., in) -> (..., out): `x·Wᵀ + b` (plus the adapter's term), in x's dtype.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = match &self.quantized {
            Some(q) => self.forward_quantized(q, x, Ok)?,
            None => x.linear(&like(&self.weight, x)?, like_opt(&self.bias, x)?.as_ref())?,
        };
        self.add_lora(x, y)
    }

    /// `gelu(x·Wᵀ + b)`, the GELU fused into the product (after the adapter's term, if any).
    pub fn forward_gelu(&self, x: &Tensor) -> Result<Tensor> {
        match (&self.lora, &self.quantized) {
            (Some(_), _) => self.forward(x)?.gelu(),
            (None, Some(q)) => self.forward_quantized(q, x, |y| y.gelu()),
            (None, None) => x.linear_gelu(&like(&self.weight, x)?, like_opt(&self.bias, x)?.as_ref()),
        }
    }

    /// `residual + x·Wᵀ + b` (plus the adapter's term), the add fused into the product;
    /// `residual` is (..., out).
    pub fn forward_residual(&self, x: &Tensor, residual: &Tensor) -> Result<Tensor> {
        let y = match &self.quantized {
            Some(q) => self.forward_quantized(q, x, |y| residual.add(&y))?,
            None => x.linear_residual(&like(&self.weight, x)?, like_opt(&self.bias, x)?.as_ref(), residual)?,
        };
        self.add_lora(x, y)
    }

    /// `y + s·(x·Aᵀ)·Bᵀ` with an adapter, `y` without.
    fn add_lora(&self, x: &Tensor, y: Tensor) -> Result<Tensor> {
        match &self.lora {
            Some(lora) => y.add(&lora.forward(x)?),
            None => Ok(y),
        }
    }
}

/// A lookup table `[num_embeddings, dim]`: ids (u32, any shape) -> (..., dim).
#[derive(Clone, Debug)]
pub struct Embedding {
    pub weight: Tensor,
}

impl Embedding {
    pub fn new(num_embeddings: usize, dim: usize, std: f64, rng: &mut Rng, dev: &Device) -> Result<Embedding> {
        Ok(Embedding {
            weight: normal_param(&[num_embeddings, dim], std, rng, dev)?,
        })
    }

    /// An all-zero table (to be overwritten by loaded weights).
    pub fn zeros(num_embeddings: usize, dim: usize, dev: &Device) -> Result<Embedding> {
        Ok(Embedding {
            weight: const_param(0.0, &[num_embeddings, dim], dev)?,
        })
    }

    /// ids is (...) u32 -> (..., dim).
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        ids.embedding(&self.weight)
    }
}

/// Layer normalisation over the last dim with a gain and an optional bias.
#[derive(Clone, Debug)]
pub struct LayerNorm {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub eps: f32,
}

impl LayerNorm {
    /// Gain 1, bias 0, as PyTorch initialises it.
    pub fn new(dim: usize, bias: bool, eps: f32, dev: &Device) -> Result<LayerNorm> {
        Ok(LayerNorm {
            weight: const_param(1.0, &[dim], dev)?,
            bias: if bias {
                Some(const_param(0.0, &[dim], dev)?)
            } else {
                None
            },
            eps,
        })
    }

    /// x is (..., dim) -> (..., dim), in x's dtype (the statistics in f32 or wider).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let w = like(&self.weight, x)?;
        match like_opt(&self.bias, x)? {
            Some(b) => x.layer_norm(&w, &b, self.eps),
            None => x.layer_norm_no_bias(&w, self.eps),
        }
    }
}
