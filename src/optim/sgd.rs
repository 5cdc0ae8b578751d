//! Stochastic gradient descent with optional momentum and (coupled, L2) weight decay, as
//! `torch.optim.SGD` with dampening 0:
//!   g ← g + wd·p;  b ← μ·b + g (b = g on the first step);  p ← p − lr·b   (b = g without momentum)

use super::{check_trainable, checked_grad};
use crate::{Error, Gradients, Result, Tensor};

#[derive(Clone, Debug)]
struct Slot {
    name: String,
    param: Tensor,
    momentum_buf: Option<Vec<f64>>,
}

/// The SGD optimizer over named parameters.
#[derive(Clone, Debug)]
pub struct Sgd {
    /// The learning rate.
    pub lr: f64,
    /// μ, the momentum factor in [0, 1) (0: plain SGD).
    pub momentum: f64,
    /// The L2 weight decay, added to the gradient as `wd·p`.
    pub weight_decay: f64,
    slots: Vec<Slot>,
}

impl Sgd {
    /// An optimizer over `params` (name, tensor); every tensor must require a gradient. An
    /// `Error::Invalid` for lr < 0, momentum outside [0, 1) or weight_decay < 0.
    pub fn new(params: Vec<(String, Tensor)>, lr: f64, momentum: f64, weight_decay: f64) -> Result<Sgd> {
        if lr.is_nan() || lr < 0.0 || !(0.0..1.0).contains(&momentum) || weight_decay.is_nan() || weight_decay < 0.0 {
            return Err(Error::invalid(
                "Sgd",
                format!("need lr ≥ 0, momentum in [0, 1), weight_decay ≥ 0; got {lr}, {momentum}, {weight_decay}"),
            ));
        }
        let slots = params
            .into_iter()
            .map(|(name, param)| {
                check_trainable("Sgd", &name, &param)?;
                Ok(Slot {
                    name,
                    param,
                    momentum_buf: None,
                })
            })
            .collect::<Result<_>>()?;
        Ok(Sgd {
            lr,
            momentum,
            weight_decay,
            slots,
        })
    }

    /// Sets the learning rate of the next steps.
    pub fn set_lr(&mut self, lr: f64) {
        self.lr = lr;
    }

    /// One update of every parameter that has a gradient in `grads` (the others are left
    /// alone); a gradient whose shape differs from its parameter's is an error.
    pub fn step(&mut self, grads: &Gradients) -> Result<()> {
        let _no_grad = crate::no_grad();
        for slot in &mut self.slots {
            let Some(g) = checked_grad("Sgd", &slot.name, &slot.param, grads)? else {
                continue;
            };
            let p = &slot.param;
            let mut data = p.to_vec::<f64>()?;
            let mut d = g.to_vec::<f64>()?;
            if self.weight_decay != 0.0 {
                d.iter_mut().zip(&data).for_each(|(d, p)| *d += self.weight_decay * p);
            }
            if self.momentum != 0.0 {
                match &mut slot.momentum_buf {
                    Some(b) => {
                        b.iter_mut().zip(&d).for_each(|(b, d)| *b = self.momentum * *b + d);
                        d.copy_from_slice(b);
                    }
                    None => slot.momentum_buf = Some(d.clone()),
                }
            }
            data.iter_mut().zip(&d).for_each(|(p, d)| *p -= self.lr * d);
            let new = Tensor::from_vec(data, p.shape(), p.device())?.to_dtype(p.dtype())?;
            p.assign(&new)?;
        }
        Ok(())
    }
}
