//! A user-defined module trained with AdamW: a two-layer perceptron learns y = sin(3·x₀)·x₁ on
//! synthetic data. Shows the `Module` and `Params` traits, PyTorch-default layers, `AdamWConfig`,
//! gradient clipping and the training loop written out.
//!
//!     cargo run --release --example mlp              # on the CPU
//!     cargo run --release --example mlp -- emu       # on the CUDA emulator (slow, same losses)

use kiln::nn::{join, Linear, Module, ParamVisitor, Params};
use kiln::optim::{clip_grad_norm, AdamW, AdamWConfig};
use kiln::{DType, Device, Result, Rng, Tensor};

/// x (N, 2) -> (N, 1) through a hidden layer of `hidden` GELU units.
#[derive(Clone)]
struct Mlp {
    fc1: Linear,
    fc2: Linear,
}

impl Mlp {
    fn new(hidden: usize, rng: &mut Rng, dev: &Device) -> Result<Mlp> {
        Ok(Mlp {
            fc1: Linear::new(2, hidden, true, rng, dev)?,
            fc2: Linear::new(hidden, 1, true, rng, dev)?,
        })
    }
}

impl Module for Mlp {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.fc2.forward(&self.fc1.forward(x)?.gelu()?)
    }
}

impl Params for Mlp {
    fn visit_params(&mut self, prefix: &str, f: &mut ParamVisitor<'_>) {
        self.fc1.visit_params(&join(prefix, "fc1"), f);
        self.fc2.visit_params(&join(prefix, "fc2"), f);
    }
}

/// `n` points uniform in [-1, 1)² and their targets sin(3·x₀)·x₁: x (n, 2), y (n, 1).
fn dataset(n: usize, rng: &mut Rng, dev: &Device) -> Result<(Tensor, Tensor)> {
    let x: Vec<f32> = (0..2 * n).map(|_| (2.0 * rng.uniform() - 1.0) as f32).collect();
    let y: Vec<f32> = x.chunks(2).map(|p| (3.0 * p[0]).sin() * p[1]).collect();
    Ok((Tensor::from_vec(x, &[n, 2], dev)?, Tensor::from_vec(y, &[n, 1], dev)?))
}

/// Trains for `steps` full-batch steps; returns the mean squared error before and after.
fn train(steps: usize, dev: &Device) -> Result<(f32, f32)> {
    let mut rng = Rng::new(0);
    let model = Mlp::new(32, &mut rng, dev)?;
    let (x, y) = dataset(256, &mut rng, dev)?;
    let mse = |model: &Mlp| -> Result<Tensor> {
        let err = model.forward(&x)?.sub(&y)?;
        err.mul(&err)?.mean_all()
    };
    let params = model.named_params();
    let mut opt = AdamW::with_config(
        params.clone(),
        AdamWConfig {
            lr: 1e-2,
            weight_decay: 0.0,
            ..AdamWConfig::default()
        },
    )?;
    let first = mse(&model)?.to_dtype(DType::F32)?.to_scalar::<f32>()?;
    for step in 0..steps {
        let loss = mse(&model)?;
        let mut grads = loss.backward()?;
        clip_grad_norm(&params, &mut grads, 1.0)?;
        opt.step(&grads)?;
        if step % 100 == 0 {
            println!("step {step:4}: mse {:.5}", loss.to_scalar::<f32>()?);
        }
    }
    let last = mse(&model)?.to_scalar::<f32>()?;
    println!("mse {first:.5} -> {last:.5} after {steps} steps on {dev}");
    Ok((first, last))
}

fn main() -> Result<()> {
    let dev: Device = match std::env::args().nth(1) {
        Some(name) => name.parse()?,
        None => Device::Cpu,
    };
    train(500, &dev)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_mlp_learns() {
        let (first, last) = super::train(300, &kiln::Device::Cpu).unwrap();
        assert!(last < first / 5.0, "mse {first} -> {last}");
    }
}
