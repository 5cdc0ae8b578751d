//! Layers: [`Linear`] (optionally adapted by a [`Lora`]), [`Embedding`], [`LayerNorm`]. Each owns
//! its parameters as leaf tensors (created with `requires_grad`), implements [`Module`] (its
//! `forward`) and [`Params`] (its parameters by name), and has a constructor with PyTorch's default
//! initialisation (`new`). Weights follow PyTorch's layouts and names, so a state dict maps onto
//! them one to one ([`load_named`], [`save_named`]).
//!
//! A layer computes in its input's dtype: given a bf16 input, its f32 parameters are cast to bf16
//! for the call (mixed precision; the cast's backward returns their gradients in f32, so the
//! optimizer updates f32 master weights). With inputs of the parameters' dtype nothing is cast.

mod module;

use crate::ops::linear_quantized::{PerMatrix, QuantizedMatrix};
pub(crate) use module::{cast_params, load_named_from, pack_weights};
pub use module::{join, load_named, save_named, Module, ParamVisitor, Params};

use crate::{DType, Device, Result, Rng, Tensor};

mod lora;
pub use lora::{Lora, LoraConfig, LoraDropout, DEFAULT_LORA_TARGETS, LORA_TARGETS};

/// Normal(0, std²) samples as a leaf that requires a gradient.
pub fn normal_param(shape: &[usize], std: f64, rng: &mut Rng, dev: &Device) -> Result<Tensor> {
    let t = Tensor::randn(shape, DType::F64, rng, dev)?.affine(std, 0.0)?;
    Ok(t.to_dtype(DType::F32)?.requires_grad())
}

/// Uniform samples in [-bound, bound) as a leaf that requires a gradient.
pub fn uniform_param(shape: &[usize], bound: f64, rng: &mut Rng, dev: &Device) -> Result<Tensor> {
    let t = Tensor::rand(shape, DType::F64, rng, dev)?.affine(2.0 * bound, -bound)?;
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
    /// The weight `[out, in]` (`[0]` when `quantized` holds it).
    pub weight: Tensor,
    /// The bias `[out]`, if the layer has one.
    pub bias: Option<Tensor>,
    /// A LoRA adapter added to the output, if one is attached.
    pub lora: Option<Lora>,
    /// The weight `[out, in]` in a quantized block format; when set, it is the weight and
    /// `weight` is an empty placeholder (shape `[0]`, not a parameter).
    pub quantized: Option<QuantizedMatrix>,
}

impl Linear {
    /// PyTorch's default initialisation (`torch.nn.Linear`): weight and bias uniform in
    /// ±1/√in_features (the weight's is `kaiming_uniform_(a=√5)`, whose bound is that same value).
    /// The weight is drawn first, then the bias.
    pub fn new(in_features: usize, out_features: usize, bias: bool, rng: &mut Rng, dev: &Device) -> Result<Linear> {
        let bound = 1.0 / (in_features.max(1) as f64).sqrt();
        Ok(Linear {
            weight: uniform_param(&[out_features, in_features], bound, rng, dev)?,
            bias: if bias {
                Some(uniform_param(&[out_features], bound, rng, dev)?)
            } else {
                None
            },
            lora: None,
            quantized: None,
        })
    }

    /// Weight drawn from N(0, std²), bias zero (GPT-2's initialisation).
    pub fn normal(
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
            lora: None,
            quantized: None,
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

    /// A layer whose weight stays in its quantized block format, without bias, moved to `dev`
    /// (whose kernels then multiply with it, [`Tensor::linear_quantized`]). It has no trainable
    /// weight; a backward through it gives the input's gradient only.
    pub fn from_quantized(weight: QuantizedMatrix, dev: &Device) -> Result<Linear> {
        Ok(Linear {
            weight: Tensor::zeros(&[0], DType::F32, dev)?,
            bias: None,
            lora: None,
            quantized: Some(weight.to_device(dev)?),
        })
    }

    /// `[out, in]`.
    fn shape(&self) -> [usize; 2] {
        match &self.quantized {
            Some(q) => q.shape(),
            None => [self.weight.shape()[0], self.weight.shape()[1]],
        }
    }

    /// The input width: the last dimension of `x` that [`Linear::forward`] accepts.
    pub fn in_features(&self) -> usize {
        self.shape()[1]
    }

    /// The output width: the last dimension of the result.
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

    /// `[l.forward(x) for l in layers]`, for layers that read the same input (a Llama layer's q,
    /// k and v projections; its gate and up projections): when every weight is quantized, their
    /// products run as one ([`Tensor::linear_quantized_many`]: one parallel region with x rounded
    /// once, in decode), the biases and adapters' terms added after; when every weight is dense
    /// and no layer has a bias, as one too ([`Tensor::linear_many`]: one parallel region in
    /// decode on the CPU, the same results as separate products), the adapters' terms added after.
    pub fn forward_many(layers: &[&Linear], x: &Tensor) -> Result<PerMatrix<Tensor>> {
        let quantized: Option<PerMatrix<&QuantizedMatrix>> = layers.iter().map(|l| l.quantized.as_ref()).collect();
        let Some(ws) = quantized else {
            if layers.iter().any(|l| l.quantized.is_some() || l.bias.is_some()) {
                return layers.iter().map(|l| l.forward(x)).collect();
            }
            // dense weights without biases (a Llama's): one shared-input product
            let weights = layers
                .iter()
                .map(|l| like(&l.weight, x))
                .collect::<Result<PerMatrix<_>>>()?;
            let weights: PerMatrix<&Tensor> = weights.iter().collect();
            let ys = x.linear_many(&weights)?;
            return layers.iter().zip(ys).map(|(l, y)| l.add_lora(x, y)).collect();
        };
        let ys = x.linear_quantized_many(&ws)?;
        layers
            .iter()
            .zip(ys)
            .map(|(l, y)| {
                let y = match like_opt(&l.bias, x)? {
                    Some(b) => y.add(&b)?,
                    None => y,
                };
                l.add_lora(x, y)
            })
            .collect()
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
    /// The table `[num_embeddings, dim]`: row i is the vector of id i.
    pub weight: Tensor,
}

impl Embedding {
    /// PyTorch's default initialisation (`torch.nn.Embedding`): N(0, 1).
    pub fn new(num_embeddings: usize, dim: usize, rng: &mut Rng, dev: &Device) -> Result<Embedding> {
        Embedding::normal(num_embeddings, dim, 1.0, rng, dev)
    }

    /// A table drawn from N(0, std²) (GPT-2 uses std 0.02).
    pub fn normal(num_embeddings: usize, dim: usize, std: f64, rng: &mut Rng, dev: &Device) -> Result<Embedding> {
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
    /// The gain γ `[dim]`.
    pub weight: Tensor,
    /// The bias β `[dim]`, if the layer has one.
    pub bias: Option<Tensor>,
    /// ε, added to the variance before the square root.
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

/// Visits `weight` and, when present, `bias` under `prefix`: the parameters of a Linear or a norm.
fn visit_affine(weight: &mut Tensor, bias: &mut Option<Tensor>, prefix: &str, f: &mut ParamVisitor<'_>) {
    f(&join(prefix, "weight"), weight);
    if let Some(b) = bias {
        f(&join(prefix, "bias"), b);
    }
}

impl Params for Linear {
    /// `weight` `[out, in]` (unless it is kept quantized: not a parameter), then `bias` `[out]` if
    /// any. A LoRA adapter's `A` and `B` are not in this walk of the base: see
    /// `Llama::lora_params`.
    fn visit_params(&mut self, prefix: &str, f: &mut ParamVisitor<'_>) {
        match self.quantized {
            None => visit_affine(&mut self.weight, &mut self.bias, prefix, f),
            Some(_) => {
                if let Some(b) = &mut self.bias {
                    f(&join(prefix, "bias"), b);
                }
            }
        }
    }
}

impl Params for Embedding {
    /// `weight` `[num_embeddings, dim]`.
    fn visit_params(&mut self, prefix: &str, f: &mut ParamVisitor<'_>) {
        f(&join(prefix, "weight"), &mut self.weight);
    }
}

impl Params for LayerNorm {
    /// `weight` `[dim]`, then `bias` `[dim]` if any.
    fn visit_params(&mut self, prefix: &str, f: &mut ParamVisitor<'_>) {
        visit_affine(&mut self.weight, &mut self.bias, prefix, f);
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Linear::forward(self, x)
    }
}

impl Module for Embedding {
    /// ids u32 (...) -> (..., dim).
    fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        Embedding::forward(self, ids)
    }
}

impl Module for LayerNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        LayerNorm::forward(self, x)
    }
}
