//! AdamW (Loshchilov & Hutter): Adam with bias correction and decoupled weight decay,
//! step for step as `torch.optim.AdamW`:
//!   p ← p·(1 − lr·wd)                        (only for decayed parameters)
//!   m ← β1·m + (1 − β1)·g,  v ← β2·v + (1 − β2)·g²
//!   p ← p − lr/(1 − β1ᵗ) · m / (√v/√(1 − β2ᵗ) + eps)
//! Parameters are grouped as nanoGPT does: every tensor of 2 or more dims (matmul weights
//! and embeddings) decays, biases and LayerNorm gains do not.

use super::checked_grad;
use crate::{DType, Error, Gradients, Result, Tensor};
use num_traits::Float;
use rayon::prelude::*;

/// First and second moments of one parameter, in its own precision.
#[derive(Clone, Debug)]
enum Moments {
    F32 { m: Vec<f32>, v: Vec<f32> },
    F64 { m: Vec<f64>, v: Vec<f64> },
}

#[derive(Clone, Debug)]
struct Slot {
    name: String,
    param: Tensor,
    decay: bool,
    moments: Moments,
}

/// The AdamW optimizer over named parameters.
#[derive(Clone, Debug)]
pub struct AdamW {
    pub lr: f64,
    pub betas: (f64, f64),
    pub eps: f64,
    pub weight_decay: f64,
    step: u64,
    slots: Vec<Slot>,
}

impl AdamW {
    /// An optimizer for `params` (f32 or f64 leaves, e.g. `gpt.params()`), with zero moments.
    pub fn new(
        params: Vec<(String, Tensor)>,
        lr: f64,
        betas: (f64, f64),
        eps: f64,
        weight_decay: f64,
    ) -> Result<AdamW> {
        let invalid = |msg: String| Err(Error::invalid("AdamW", msg));
        if !(lr >= 0.0 && lr.is_finite()) {
            return invalid(format!("lr must be finite and non-negative, got {lr}"));
        }
        if !((0.0..1.0).contains(&betas.0) && (0.0..1.0).contains(&betas.1)) {
            return invalid(format!("betas must be in [0, 1), got {betas:?}"));
        }
        if eps.is_nan() || eps < 0.0 || weight_decay.is_nan() || weight_decay < 0.0 {
            return invalid(format!(
                "eps ({eps}) and weight_decay ({weight_decay}) must be non-negative"
            ));
        }
        let slots = params
            .into_iter()
            .map(|(name, param)| {
                let n = param.numel();
                let moments = match param.dtype() {
                    DType::F32 => Moments::F32 {
                        m: vec![0.0; n],
                        v: vec![0.0; n],
                    },
                    DType::F64 => Moments::F64 {
                        m: vec![0.0; n],
                        v: vec![0.0; n],
                    },
                    other => {
                        return Err(Error::DType {
                            op: "AdamW",
                            msg: format!("parameter {name} is {other}; AdamW updates f32 or f64 parameters"),
                        })
                    }
                };
                Ok(Slot {
                    decay: param.dims() >= 2,
                    name,
                    param,
                    moments,
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

    /// One update of every parameter that has a gradient in `grads` (the others are left
    /// alone, as PyTorch skips parameters whose `.grad` is None).
    pub fn step(&mut self, grads: &Gradients) -> Result<()> {
        let _no_grad = crate::no_grad();
        self.step += 1;
        let t = self.step as i32;
        let (b1, b2) = self.betas;
        let bc1 = 1.0 - b1.powi(t);
        let bc2_sqrt = (1.0 - b2.powi(t)).sqrt();
        let h = Hyper {
            decay_factor: 1.0 - self.lr * self.weight_decay,
            b1,
            b2,
            step_size: self.lr / bc1,
            bc2_sqrt,
            eps: self.eps,
        };
        // parameters are independent: update them in parallel
        self.slots.par_iter_mut().try_for_each(|slot| -> Result<()> {
            let Some(g) = checked_grad("AdamW", &slot.name, &slot.param, grads)? else {
                return Ok(());
            };
            let p = &slot.param;
            let new = match &mut slot.moments {
                Moments::F32 { m, v } => {
                    let mut data = p.to_vec::<f32>()?;
                    update(&mut data, &g.to_vec::<f32>()?, m, v, &h, slot.decay);
                    Tensor::from_vec(data, p.shape(), p.device())?
                }
                Moments::F64 { m, v } => {
                    let mut data = p.to_vec::<f64>()?;
                    update(&mut data, &g.to_vec::<f64>()?, m, v, &h, slot.decay);
                    Tensor::from_vec(data, p.shape(), p.device())?
                }
            };
            p.assign(&new)
        })
    }

    /// The optimizer state as named tensors, for checkpoints: `{name}.exp_avg`,
    /// `{name}.exp_avg_sq` (PyTorch's names) for every parameter, and `step` (f64, shape []).
    pub fn state(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out = Vec::with_capacity(2 * self.slots.len() + 1);
        for s in &self.slots {
            let (shape, dev) = (s.param.shape(), s.param.device());
            let (m, v) = match &s.moments {
                Moments::F32 { m, v } => (Tensor::from_slice(m, shape, dev)?, Tensor::from_slice(v, shape, dev)?),
                Moments::F64 { m, v } => (Tensor::from_slice(m, shape, dev)?, Tensor::from_slice(v, shape, dev)?),
            };
            out.push((format!("{}.exp_avg", s.name), m));
            out.push((format!("{}.exp_avg_sq", s.name), v));
        }
        let dev = self.slots.first().map_or(crate::Device::Cpu, |s| *s.param.device());
        out.push(("step".into(), Tensor::from_vec(vec![self.step as f64], &[], &dev)?));
        Ok(out)
    }

    /// Restores a state written by [`AdamW::state`]; every tensor must be present with its
    /// parameter's shape, or nothing changes and the error lists what differs.
    pub fn load_state(&mut self, state: &[(String, Tensor)]) -> Result<()> {
        let find = |key: &str| state.iter().find(|(n, _)| n == key).map(|(_, t)| t);
        let mut problems = Vec::new();
        for s in &self.slots {
            for key in [format!("{}.exp_avg", s.name), format!("{}.exp_avg_sq", s.name)] {
                match find(&key) {
                    None => problems.push(format!("  missing: {key} {:?}", s.param.shape())),
                    Some(t) if t.shape() != s.param.shape() => problems.push(format!(
                        "  shape mismatch: {key}: state {:?}, parameter {:?}",
                        t.shape(),
                        s.param.shape()
                    )),
                    Some(_) => {}
                }
            }
        }
        let step = match find("step") {
            Some(t) if t.numel() == 1 => t.to_scalar::<f64>()?,
            _ => {
                problems.push("  missing: step []".into());
                0.0
            }
        };
        if !(step >= 0.0 && step.fract() == 0.0) {
            problems.push(format!("  step {step} is not a whole number of steps"));
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
            match &mut s.moments {
                Moments::F32 { m, v } => {
                    *m = m_t.to_vec::<f32>()?;
                    *v = v_t.to_vec::<f32>()?;
                }
                Moments::F64 { m, v } => {
                    *m = m_t.to_vec::<f64>()?;
                    *v = v_t.to_vec::<f64>()?;
                }
            }
        }
        self.step = step as u64;
        Ok(())
    }
}

/// The scalars of one step.
struct Hyper {
    decay_factor: f64,
    b1: f64,
    b2: f64,
    step_size: f64,
    bc2_sqrt: f64,
    eps: f64,
}

/// The update of one parameter, elementwise, in the parameter's precision (as PyTorch).
fn update<T: Float>(p: &mut [T], g: &[T], m: &mut [T], v: &mut [T], h: &Hyper, decay: bool) {
    let c = |x: f64| T::from(x).expect("f32 and f64 hold every f64 (rounded)");
    let (decay_factor, b1, b2) = (c(h.decay_factor), c(h.b1), c(h.b2));
    let (one_b1, one_b2) = (c(1.0 - h.b1), c(1.0 - h.b2));
    let (step_size, bc2_sqrt, eps) = (c(h.step_size), c(h.bc2_sqrt), c(h.eps));
    for i in 0..p.len() {
        let gi = g[i];
        let mut pi = p[i];
        if decay {
            pi = pi * decay_factor;
        }
        let mi = b1 * m[i] + one_b1 * gi;
        let vi = b2 * v[i] + one_b2 * gi * gi;
        m[i] = mi;
        v[i] = vi;
        p[i] = pi - step_size * mi / (vi.sqrt() / bc2_sqrt + eps);
    }
}
