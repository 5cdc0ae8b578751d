//! Layers: [`Linear`], [`Embedding`], [`LayerNorm`]. Each owns its parameters as leaf
//! tensors (created with `requires_grad`) and has a short `forward`. Weights follow
//! PyTorch's layouts, so a state dict maps onto them one to one.

use crate::{DType, Device, Result, Rng, Tensor};

/// Normal(0, std²) samples as a leaf that requires a gradient.
pub fn normal_param(shape: &[usize], std: f64, rng: &mut Rng, dev: &Device) -> Result<Tensor> {
    let t = Tensor::randn(shape, DType::F64, rng, dev)?.affine(std, 0.0)?;
    Ok(t.to_dtype(DType::F32)?.requires_grad())
}

/// A constant-filled leaf that requires a gradient.
pub fn const_param(value: f64, shape: &[usize], dev: &Device) -> Result<Tensor> {
    Ok(Tensor::full(value, shape, DType::F32, dev)?.requires_grad())
}

/// `y = x·Wᵀ + b`, with `weight` stored `[out, in]` as in `torch.nn.Linear`.
#[derive(Clone, Debug)]
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
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
            weight: normal_param(&[out_features, in_features], std, rng, dev)?,
            bias: if bias {
                Some(const_param(0.0, &[out_features], dev)?)
            } else {
                None
            },
        })
    }

    /// All-zero weight and bias (to be overwritten by loaded weights).
    pub fn zeros(in_features: usize, out_features: usize, bias: bool, dev: &Device) -> Result<Linear> {
        Ok(Linear {
            weight: const_param(0.0, &[out_features, in_features], dev)?,
            bias: if bias {
                Some(const_param(0.0, &[out_features], dev)?)
            } else {
                None
            },
        })
    }

    pub fn in_features(&self) -> usize {
        self.weight.shape()[1]
    }

    pub fn out_features(&self) -> usize {
        self.weight.shape()[0]
    }

    /// x is (..., in) -> (..., out): `x·Wᵀ + b`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.linear(&self.weight, self.bias.as_ref())
    }

    /// `gelu(x·Wᵀ + b)`, the GELU fused into the product.
    pub fn forward_gelu(&self, x: &Tensor) -> Result<Tensor> {
        x.linear_gelu(&self.weight, self.bias.as_ref())
    }

    /// `residual + x·Wᵀ + b`, the add fused into the product; `residual` is (..., out).
    pub fn forward_residual(&self, x: &Tensor, residual: &Tensor) -> Result<Tensor> {
        x.linear_residual(&self.weight, self.bias.as_ref(), residual)
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

    /// x is (..., dim) -> (..., dim).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match &self.bias {
            Some(b) => x.layer_norm(&self.weight, b, self.eps),
            None => x.layer_norm_no_bias(&self.weight, self.eps),
        }
    }
}
