//! Checkpoint and resume: train a small regression model, save its weights and the optimizer's
//! state as safetensors files, load both into a fresh model and optimizer, and continue. The
//! resumed run takes exactly the steps the uninterrupted one takes (bit for bit).
//!
//!     cargo run --release --example checkpoint

use kiln::nn::{load_named, save_named, Linear, Params};
use kiln::optim::{AdamW, AdamWConfig};
use kiln::{Device, Result, Rng, Tensor};
use std::path::Path;

const DEV: Device = Device::Cpu;

/// A linear model y = x·Wᵀ + b fitted to fixed targets: the data, and a fresh model from `seed`.
fn setup(seed: u64) -> Result<(Linear, Tensor, Tensor)> {
    let mut rng = Rng::new(seed);
    let model = Linear::new(8, 3, true, &mut rng, &DEV)?;
    let mut data = Rng::new(100);
    let x = Tensor::randn(&[64, 8], kiln::DType::F32, &mut data, &DEV)?;
    let y = Tensor::randn(&[64, 3], kiln::DType::F32, &mut data, &DEV)?;
    Ok((model, x, y))
}

fn optimizer(model: &Linear) -> Result<AdamW> {
    AdamW::with_config(
        model.named_params(),
        AdamWConfig {
            lr: 0.05,
            ..AdamWConfig::default()
        },
    )
}

/// `steps` AdamW steps on the mean squared error; returns each step's loss.
fn train(model: &Linear, opt: &mut AdamW, x: &Tensor, y: &Tensor, steps: usize) -> Result<Vec<f32>> {
    let mut losses = Vec::with_capacity(steps);
    for _ in 0..steps {
        let err = model.forward(x)?.sub(y)?;
        let loss = err.mul(&err)?.mean_all()?;
        opt.step(&loss.backward()?)?;
        losses.push(loss.to_scalar::<f32>()?);
    }
    Ok(losses)
}

/// Trains 10 steps, checkpoints into `dir`, resumes in a fresh model for 10 more; returns the
/// losses of the resumed run and of an uninterrupted 20-step run.
fn run(dir: &Path) -> Result<(Vec<f32>, Vec<f32>)> {
    let (model, x, y) = setup(0)?;
    let mut opt = optimizer(&model)?;
    let mut resumed = train(&model, &mut opt, &x, &y, 10)?;
    // the checkpoint: weights by their state-dict names, the optimizer's moments and step count
    kiln::safetensors::save(&save_named(&model)?, dir.join("model.safetensors"))?;
    kiln::safetensors::save(opt.state()?, dir.join("optimizer.safetensors"))?;

    // a fresh process would start here: another initialisation, overwritten by the checkpoint
    let (mut fresh, x, y) = setup(1)?;
    load_named(
        &mut fresh,
        kiln::safetensors::load(dir.join("model.safetensors"), &DEV)?,
    )?;
    let mut fresh_opt = optimizer(&fresh)?;
    let state: Vec<(String, Tensor)> = kiln::safetensors::load(dir.join("optimizer.safetensors"), &DEV)?
        .into_iter()
        .collect();
    fresh_opt.load_state(&state)?;
    resumed.extend(train(&fresh, &mut fresh_opt, &x, &y, 10)?);

    let (model, x, y) = setup(0)?;
    let mut opt = optimizer(&model)?;
    let straight = train(&model, &mut opt, &x, &y, 20)?;
    Ok((resumed, straight))
}

fn main() -> Result<()> {
    let dir = std::env::temp_dir().join(format!("kiln-example-checkpoint-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let (resumed, straight) = run(&dir)?;
    std::fs::remove_dir_all(&dir)?;
    for (step, (r, s)) in resumed.iter().zip(&straight).enumerate() {
        println!("step {step:2}: resumed {r:.6}  uninterrupted {s:.6}");
    }
    println!(
        "{}",
        if resumed == straight {
            "the resumed run is identical to the uninterrupted one"
        } else {
            "the runs differ"
        }
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn resuming_from_the_checkpoint_is_bit_identical() {
        let dir = std::env::temp_dir().join(format!("kiln-example-checkpoint-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (resumed, straight) = super::run(&dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(resumed, straight);
        assert!(straight[19] < straight[0], "the loss falls: {straight:?}");
    }
}
