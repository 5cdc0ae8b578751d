//! The LoRA fine-tuning loop behind `kiln finetune --gguf` (docs/finetuning.md): AdamW over the
//! adapters only (the base is frozen), the masked cross-entropy of [`super::lora`]'s windows
//! (targets [`IGNORE`]d where a token is not trained), the cosine schedule of [`TrainConfig`],
//! gradient clipping, one `metrics.jsonl` line and one progress line per step, `loss.svg` at the
//! end, and the adapter written atomically to `out/adapter/` every `eval_interval` steps and at
//! the last one. A loss or gradient norm that is not finite stops the run with an error; the
//! adapter on disk stays the last one written.

use super::lora::IGNORE;
use super::metrics::{MetricsWriter, Record};
use super::{atomic, console, plot, TrainConfig, PLOT};
use crate::model::Llama;
use crate::optim::{clip_grad_norm, AdamW};
use crate::{Error, Result, Rng, Tensor};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The adapter's folder inside the run folder.
pub const ADAPTER_DIR: &str = "adapter";

/// Trains the adapters of `model` (added or loaded before) on `windows` ((ids, targets) pairs of
/// one length, from [`super::lora::pack_windows`]) for `cfg.steps` steps of `cfg.batch_size`
/// windows drawn at random (seeded by `cfg.seed`), writing the run to `out`. Returns each step's
/// loss.
pub fn finetune_lora(
    model: &mut Llama,
    windows: &[(Vec<u32>, Vec<u32>)],
    cfg: &TrainConfig,
    out: &Path,
) -> Result<Vec<f64>> {
    cfg.validate()?;
    let Some(block) = windows.first().map(|w| w.0.len()) else {
        return Err(Error::invalid(
            "finetune",
            "the data gives no training window: it needs more tokens than --block-size, with some of them trained \
             (assistant tokens for chat data)",
        ));
    };
    if model.lora_config().is_none() {
        return Err(Error::invalid("finetune", "the model has no LoRA adapters to train"));
    }
    std::fs::create_dir_all(out).map_err(|e| Error::io(format!("creating {}", out.display()), e))?;
    let params = model.lora_params();
    let mut opt = AdamW::new(params.clone(), cfg.lr, (cfg.beta1, cfg.beta2), 1e-8, cfg.weight_decay)?;
    let schedule = cfg.schedule();
    let mut metrics = MetricsWriter::create(&out.join(super::metrics::FILE), &[])?;
    let mut rng = Rng::new(cfg.seed);
    model.set_lora_training(Some(cfg.seed.wrapping_add(1)));
    let (dev, b) = (*model.device(), cfg.batch_size);
    let mut losses = Vec::with_capacity(cfg.steps);
    let started = Instant::now();
    for step in 1..=cfg.steps {
        // x and y are (B,T)
        let mut x = Vec::with_capacity(b * block);
        let mut y = Vec::with_capacity(b * block);
        for _ in 0..b {
            let (ids, targets) = &windows[rng.below(windows.len() as u64) as usize];
            x.extend_from_slice(ids);
            y.extend_from_slice(targets);
        }
        let x = Tensor::from_vec(x, &[b, block], &dev)?;
        let y = Tensor::from_vec(y, &[b * block], &dev)?;
        let lr = schedule.lr(step - 1);
        opt.set_lr(lr);
        // logits are (B,T,V)
        let logits = model.forward(&x)?;
        let v = logits.shape()[2];
        let loss = logits
            .reshape(&[b * block, v])?
            .cross_entropy_with_ignore(&y, Some(IGNORE))?;
        let loss_value = loss.item()?;
        let mut grads = loss.backward()?;
        let grad_norm = match cfg.grad_clip > 0.0 {
            true => clip_grad_norm(&params, &mut grads, cfg.grad_clip)?,
            false => 0.0,
        };
        if !loss_value.is_finite() || !grad_norm.is_finite() {
            model.set_lora_training(None);
            return Err(Error::invalid(
                "finetune",
                format!(
                    "step {step}: the loss is {loss_value} and the gradient norm {grad_norm}; stopped (a lower --lr \
                     may help); {}",
                    last_adapter(out)
                ),
            ));
        }
        opt.step(&grads)?;
        losses.push(loss_value);
        metrics.write(&Record::Train {
            step,
            loss: loss_value,
            lr,
            grad_norm,
        })?;
        let tokens_per_s = (step * b * block) as f64 / started.elapsed().as_secs_f64().max(1e-9);
        console::out(&format!(
            "step {step}/{}: loss {loss_value:.4}, lr {lr:.2e}, grad norm {grad_norm:.3}, {tokens_per_s:.0} tok/s",
            cfg.steps
        ));
        if step % cfg.eval_interval == 0 || step == cfg.steps {
            model.set_lora_training(None);
            save_adapter_atomic(model, out)?;
            model.set_lora_training(Some(cfg.seed.wrapping_add(1 + step as u64)));
        }
    }
    model.set_lora_training(None);
    write_plot(&losses, out)?;
    Ok(losses)
}

/// Where the last good adapter is, for an error message.
fn last_adapter(out: &Path) -> String {
    let dir = out.join(ADAPTER_DIR);
    match dir.is_dir() {
        true => format!("the last adapter written is in {}", dir.display()),
        false => "no adapter was written yet".to_string(),
    }
}

/// Writes the adapter to `out/adapter/`: into `out/adapter.tmp/`, then swapped in, so that a
/// reader always finds a complete adapter (the old or the new one).
pub fn save_adapter_atomic(model: &Llama, out: &Path) -> Result<PathBuf> {
    let target = out.join(ADAPTER_DIR);
    let staged = out.join(format!("{ADAPTER_DIR}.tmp"));
    if staged.exists() {
        std::fs::remove_dir_all(&staged).map_err(|e| Error::io(format!("removing {}", staged.display()), e))?;
    }
    model.save_adapter(&staged)?;
    atomic::swap_dir(&staged, &target, &out.join(format!("{ADAPTER_DIR}.old")))?;
    Ok(target)
}

/// `out/loss.svg`: the loss of every step.
fn write_plot(losses: &[f64], out: &Path) -> Result<()> {
    let points: Vec<(f64, f64)> = losses.iter().enumerate().map(|(i, &l)| ((i + 1) as f64, l)).collect();
    let svg = plot::loss_svg(
        "LoRA fine-tuning",
        &[plot::Series {
            name: "batch loss",
            color: "#1f5fa6",
            width: 1.5,
            opacity: 1.0,
            dots: false,
            points: &points,
        }],
    );
    crate::model::io::write_atomic(&out.join(PLOT), svg.as_bytes())
}
