//! AdamW (Loshchilov & Hutter): Adam with bias correction and decoupled weight decay,
//! step for step as `torch.optim.AdamW`:
//!   p ← p·(1 − lr·wd)                        (only for decayed parameters)
//!   m ← β1·m + (1 − β1)·g,  v ← β2·v + (1 − β2)·g²
//!   p ← p − lr/(1 − β1ᵗ) · m / (√v/√(1 − β2ᵗ) + eps)
//! Which parameters decay is an explicit [`WeightDecay`] policy: all of them (PyTorch's
//! `torch.optim.AdamW` on a plain parameter list, and [`AdamWConfig::default`]), the tensors of 2
//! or more dims only (nanoGPT's grouping: matmul weights and embeddings decay, biases and norm
//! gains do not; [`AdamW::new`] and kiln's trainer), or a predicate on the name and tensor.
//!
//! The moments live on the parameters' device, in their precision; a step is one fused storage
//! primitive over every parameter (`backend::adamw_step`: a rayon pass on the CPU, bit for bit
//! reproducible; one kernel launch on CUDA/Emu), which may also refresh a bf16 copy of a weight.

use super::{check_trainable, checked_grad};
use crate::backend::op::{AdamWHyper, AdamWParam};
use crate::backend::Storage;
use crate::{DType, Error, Gradients, Result, Tensor};
use std::sync::Arc;

/// A decay predicate: given a parameter's name and tensor, whether it decays.
pub type DecayPredicate = Arc<dyn Fn(&str, &Tensor) -> bool + Send + Sync>;

/// Which parameters AdamW's weight decay applies to (the others get `weight_decay` 0).
#[derive(Clone)]
pub enum WeightDecay {
    /// Every parameter, as `torch.optim.AdamW(model.parameters())` does.
    All,
    /// Parameters of 2 or more dims (matmul weights, embeddings), not biases or norm gains: the
    /// two parameter groups of nanoGPT's `configure_optimizers`.
    MatricesOnly,
    /// The parameters for which the predicate, given the name and the tensor, returns true.
    Predicate(DecayPredicate),
}

impl WeightDecay {
    /// Whether the parameter `name` decays under this policy.
    pub fn applies_to(&self, name: &str, param: &Tensor) -> bool {
        match self {
            WeightDecay::All => true,
            WeightDecay::MatricesOnly => param.dims() >= 2,
            WeightDecay::Predicate(decays) => decays(name, param),
        }
    }
}

impl std::fmt::Debug for WeightDecay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WeightDecay::All => write!(f, "All"),
            WeightDecay::MatricesOnly => write!(f, "MatricesOnly"),
            WeightDecay::Predicate(_) => write!(f, "Predicate(..)"),
        }
    }
}

/// AdamW's hyperparameters. [`Default`] is `torch.optim.AdamW`'s: lr 1e-3, betas (0.9, 0.999),
/// eps 1e-8, weight_decay 1e-2 applied to every parameter.
///
/// ```
/// use kiln::optim::{AdamW, AdamWConfig, WeightDecay};
/// # let w = kiln::Tensor::zeros(&[2, 2], kiln::DType::F32, &kiln::Device::Cpu)?.requires_grad();
/// let cfg = AdamWConfig { lr: 3e-4, decay: WeightDecay::MatricesOnly, ..AdamWConfig::default() };
/// let opt = AdamW::with_config(vec![("w".into(), w)], cfg)?;
/// # Ok::<(), kiln::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct AdamWConfig {
    /// The learning rate.
    pub lr: f64,
    /// (β₁, β₂): the decay rates of the first and second moment estimates.
    pub betas: (f64, f64),
    /// ε, added to √v̂ in the update's denominator.
    pub eps: f64,
    /// λ, the decoupled weight decay: each step multiplies a decayed parameter by 1 − lr·λ.
    pub weight_decay: f64,
    /// Which parameters `weight_decay` applies to.
    pub decay: WeightDecay,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            lr: 1e-3,
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 1e-2,
            decay: WeightDecay::All,
        }
    }
}

#[derive(Clone, Debug)]
struct Slot {
    name: String,
    param: Tensor,
    decay: bool,
    /// First and second moments, the parameter's shape, dtype and device.
    m: Tensor,
    v: Tensor,
    /// A bf16 tensor of the parameter's shape that receives the new weights after every step.
    copy: Option<Tensor>,
}

/// The AdamW optimizer over named parameters.
#[derive(Clone, Debug)]
pub struct AdamW {
    /// The learning rate of the next step (a schedule sets it with [`AdamW::set_lr`]).
    pub lr: f64,
    /// (β₁, β₂), as in [`AdamWConfig::betas`].
    pub betas: (f64, f64),
    /// ε, as in [`AdamWConfig::eps`].
    pub eps: f64,
    /// λ, applied to the parameters [`AdamWConfig::decay`] selected at construction.
    pub weight_decay: f64,
    step: u64,
    slots: Vec<Slot>,
}

impl AdamW {
    /// An optimizer for `params` with nanoGPT's decay policy ([`WeightDecay::MatricesOnly`]), as
    /// kiln's trainer uses it. [`AdamW::with_config`] takes every setting by name.
    pub fn new(
        params: Vec<(String, Tensor)>,
        lr: f64,
        betas: (f64, f64),
        eps: f64,
        weight_decay: f64,
    ) -> Result<AdamW> {
        let decay = WeightDecay::MatricesOnly;
        AdamW::with_config(
            params,
            AdamWConfig {
                lr,
                betas,
                eps,
                weight_decay,
                decay,
            },
        )
    }

    /// An optimizer for `params` (f32 or f64 leaves that require a gradient, each a whole
    /// tensor, e.g. `model.named_params()`), with zero moments.
    pub fn with_config(params: Vec<(String, Tensor)>, cfg: AdamWConfig) -> Result<AdamW> {
        let AdamWConfig {
            lr,
            betas,
            eps,
            weight_decay,
            decay,
        } = cfg;
        let invalid = |msg: String| Err(Error::invalid("AdamW", msg));
        if !(lr >= 0.0 && lr.is_finite()) {
            return invalid(format!("lr must be finite and non-negative, got {lr}"));
        }
        if !((0.0..1.0).contains(&betas.0) && (0.0..1.0).contains(&betas.1)) {
            return invalid(format!("betas must be in [0, 1), got {betas:?}"));
        }
        // eps = 0 divides a zero moment by zero: NaN weights at the first zero gradient
        if !(eps > 0.0 && eps.is_finite()) {
            return invalid(format!("eps must be a finite number > 0, got {eps}"));
        }
        if !(weight_decay >= 0.0 && weight_decay.is_finite()) {
            return invalid(format!(
                "weight_decay must be finite and non-negative, got {weight_decay}"
            ));
        }
        // each parameter first (a bf16 model's views of one buffer are refused as bf16), then
        // the list (a parameter listed twice)
        for (name, param) in &params {
            check_trainable("AdamW", name, param)?;
            if !matches!(param.dtype(), DType::F32 | DType::F64) {
                return Err(Error::DType {
                    op: "AdamW",
                    msg: format!(
                        "parameter {name} is {}; AdamW updates f32 or f64 parameters",
                        param.dtype()
                    ),
                });
            }
            if !param.is_contiguous() || param.layout().offset() != 0 || param.storage().len() != param.numel() {
                return invalid(format!(
                    "parameter {name} is a view into a larger storage; AdamW updates whole tensors"
                ));
            }
        }
        for (i, (name, p)) in params.iter().enumerate() {
            if let Some((other, _)) = params[..i].iter().find(|(_, q)| q.same_storage(p)) {
                return invalid(format!("parameters {other} and {name} share one storage; list it once"));
            }
        }
        let slots = params
            .into_iter()
            .map(|(name, param)| {
                let zeros = || Tensor::zeros(param.shape(), param.dtype(), param.device());
                Ok(Slot {
                    decay: decay.applies_to(&name, &param),
                    m: zeros()?,
                    v: zeros()?,
                    copy: None,
                    name,
                    param,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(AdamW {
            lr,
            betas,
            eps,
            weight_decay,
            step: 0,
            slots,
        })
    }

    /// Sets the learning rate of the next steps.
    pub fn set_lr(&mut self, lr: f64) {
        self.lr = lr;
    }

    /// Steps taken so far.
    pub fn step_count(&self) -> u64 {
        self.step
    }

    /// Names of the parameters that receive weight decay.
    pub fn decayed(&self) -> Vec<&str> {
        self.slots.iter().filter(|s| s.decay).map(|s| s.name.as_str()).collect()
    }

    /// Keeps `copy` (bf16, the shape of parameter `name`, on its device) equal to that parameter
    /// rounded to bf16 after every step: the weights that bf16 matmuls read, refreshed by the
    /// fused step itself.
    pub fn set_bf16_copy(&mut self, name: &str, copy: &Tensor) -> Result<()> {
        let slot = self
            .slots
            .iter_mut()
            .find(|s| s.name == name)
            .ok_or_else(|| Error::invalid("AdamW", format!("no parameter named {name}")))?;
        if copy.dtype() != DType::BF16 || copy.shape() != slot.param.shape() || copy.device() != slot.param.device() {
            return Err(Error::invalid(
                "AdamW",
                format!(
                    "the copy of {name} must be bf16 {:?} on {}, got {} {:?} on {}",
                    slot.param.shape(),
                    slot.param.device(),
                    copy.dtype(),
                    copy.shape(),
                    copy.device()
                ),
            ));
        }
        if !copy.is_contiguous() || copy.layout().offset() != 0 || copy.storage().len() != copy.numel() {
            return Err(Error::invalid(
                "AdamW",
                format!("the copy of {name} must be a whole tensor, not a view"),
            ));
        }
        slot.copy = Some(copy.clone());
        Ok(())
    }

    /// One update of every parameter that has a gradient in `grads` (the others are left
    /// alone, as PyTorch skips parameters whose `.grad` is None), fused into one primitive.
    pub fn step(&mut self, grads: &Gradients) -> Result<()> {
        self.step_scaled(grads, 1.0)
    }

    /// [`AdamW::step`] on the gradients multiplied by `scale`: the clipping coefficient of
    /// [`crate::optim::clip_coefficient`], so that `clip_coefficient` then `step_scaled` updates
    /// exactly as [`crate::optim::clip_grad_norm`] then `step` (each gradient times the scale,
    /// rounded once in the parameter's precision). On the CPU the product is taken inside the
    /// fused update, which saves clipping's pass over every gradient (writing a scaled copy);
    /// elsewhere the gradients are scaled first, as clipping does.
    pub fn step_scaled(&mut self, grads: &Gradients, scale: f64) -> Result<()> {
        if !scale.is_finite() {
            return Err(Error::invalid(
                "AdamW",
                format!("the gradient scale must be finite, got {scale}"),
            ));
        }
        let _no_grad = crate::no_grad();
        let mut active = Vec::with_capacity(self.slots.len());
        // fused where every gradient is a CPU tensor of its parameter's dtype (the product in
        // that dtype, as clipping's `mul_scalar` takes it); else each gradient scaled first
        let fused = self
            .slots
            .iter()
            .filter_map(|s| grads.get(&s.param).map(|g| (s, g)))
            .all(|(s, g)| *g.device() == crate::Device::Cpu && g.dtype() == s.param.dtype());
        for slot in &self.slots {
            if let Some(g) = checked_grad("AdamW", &slot.name, &slot.param, grads)? {
                let g = if fused || scale == 1.0 {
                    g.clone()
                } else {
                    g.mul_scalar(scale)?
                };
                active.push((slot, g.to_dtype(slot.param.dtype())?.dense()?));
            }
        }
        self.step += 1;
        let t = self.step as i32;
        let (b1, b2) = self.betas;
        let h = AdamWHyper {
            decay_factor: 1.0 - self.lr * self.weight_decay,
            b1,
            b2,
            step_size: self.lr / (1.0 - b1.powi(t)),
            bc2_sqrt: (1.0 - b2.powi(t)).sqrt(),
            eps: self.eps,
            grad_scale: if fused { scale } else { 1.0 },
        };
        let mut params: Vec<_> = active.iter().map(|(s, _)| s.param.storage_mut()).collect();
        let grads: Vec<_> = active.iter().map(|(_, g)| g.storage()).collect();
        let mut ms: Vec<_> = active.iter().map(|(s, _)| s.m.storage_mut()).collect();
        let mut vs: Vec<_> = active.iter().map(|(s, _)| s.v.storage_mut()).collect();
        let mut copies: Vec<_> = active
            .iter()
            .map(|(s, _)| s.copy.as_ref().map(|c| c.storage_mut()))
            .collect();
        let mut items: Vec<AdamWParam<Storage>> = params
            .iter_mut()
            .zip(&grads)
            .zip(ms.iter_mut().zip(vs.iter_mut()))
            .zip(copies.iter_mut())
            .zip(&active)
            .map(|((((p, g), (m, v)), c), (s, _))| AdamWParam::<Storage> {
                param: p,
                grad: g,
                m,
                v,
                copy: c.as_deref_mut(),
                decay: s.decay,
            })
            .collect();
        crate::backend::adamw_step(&mut items, &h)
    }

    /// The optimizer state as named tensors, for checkpoints: `{name}.exp_avg`,
    /// `{name}.exp_avg_sq` (PyTorch's names) for every parameter, and `step` (f64, shape []).
    pub fn state(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out = Vec::with_capacity(2 * self.slots.len() + 1);
        for s in &self.slots {
            // copies: the live moments change in place at the next step
            out.push((format!("{}.exp_avg", s.name), s.m.copy()?));
            out.push((format!("{}.exp_avg_sq", s.name), s.v.copy()?));
        }
        let dev = self.slots.first().map_or(crate::Device::Cpu, |s| *s.param.device());
        out.push(("step".into(), Tensor::from_vec(vec![self.step as f64], &[], &dev)?));
        Ok(out)
    }

    /// Restores a state written by [`AdamW::state`]; every tensor must be present with its
    /// parameter's shape and hold values an AdamW run can reach (finite first moments, finite
    /// second moments ≥ 0, a whole step count below 2^53), or nothing changes and the error
    /// lists what differs.
    pub fn load_state(&mut self, state: &[(String, Tensor)]) -> Result<()> {
        let find = |key: &str| state.iter().find(|(n, _)| n == key).map(|(_, t)| t);
        let mut problems = Vec::new();
        for s in &self.slots {
            for (key, second) in [
                (format!("{}.exp_avg", s.name), false),
                (format!("{}.exp_avg_sq", s.name), true),
            ] {
                match find(&key) {
                    None => problems.push(format!("  missing: {key} {:?}", s.param.shape())),
                    Some(t) if t.shape() != s.param.shape() => problems.push(format!(
                        "  shape mismatch: {key}: state {:?}, parameter {:?}",
                        t.shape(),
                        s.param.shape()
                    )),
                    Some(t) => {
                        let values = t.to_dtype(DType::F64)?.to_vec::<f64>()?;
                        // a second moment is a running mean of squares: never negative
                        let bad = |v: f64| !v.is_finite() || (second && v < 0.0);
                        if let Some(i) = values.iter().position(|&v| bad(v)) {
                            let count = values.iter().filter(|&&v| bad(v)).count();
                            let want = if second { "finite and ≥ 0" } else { "finite" };
                            problems.push(format!(
                                "  bad values: {key}: {count} are not {want} (element {i} is {})",
                                values[i]
                            ));
                        }
                    }
                }
            }
        }
        // f64 counts whole steps exactly up to 2^53, far beyond any run
        let step = match find("step") {
            Some(t) if t.numel() == 1 => t.to_scalar::<f64>()?,
            _ => {
                problems.push("  missing: step []".into());
                0.0
            }
        };
        if !(step >= 0.0 && step.fract() == 0.0 && step <= 2f64.powi(53)) {
            problems.push(format!("  step {step:e} is not a whole number of steps in [0, 2^53]"));
        }
        if !problems.is_empty() {
            return Err(Error::invalid(
                "AdamW::load_state",
                format!("the state does not fit these parameters:\n{}", problems.join("\n")),
            ));
        }
        for s in &mut self.slots {
            let m_t = find(&format!("{}.exp_avg", s.name)).expect("checked above");
            let v_t = find(&format!("{}.exp_avg_sq", s.name)).expect("checked above");
            let restore = |t: &Tensor| t.to_dtype(s.param.dtype())?.to_device(s.param.device())?.copy();
            s.m = restore(m_t)?;
            s.v = restore(v_t)?;
        }
        self.step = step as u64;
        Ok(())
    }
}
