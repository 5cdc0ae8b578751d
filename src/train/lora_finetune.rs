//! The LoRA fine-tuning loop behind `kiln finetune --gguf` (docs/finetuning.md): AdamW over the
//! adapters only (the base is frozen), the masked cross-entropy of [`super::lora`]'s windows
//! (targets [`IGNORE`]d where a token is not trained), the cosine schedule of [`TrainConfig`],
//! gradient clipping, one `metrics.jsonl` line and one progress line per step.
//!
//! The last `val_fraction` of the windows (at least one) is held out. Every `eval_interval` steps,
//! at the last step and at `--stop-at`, the run evaluates (the mean loss of `eval_iters` batches of
//! each split, drawn the same way at every evaluation, an `eval` record), writes the adapter
//! atomically to `out/adapter/`, a checkpoint to `out/checkpoint/` ([`super::lora_checkpoint`])
//! and `loss.svg`. [`resume_lora`] continues from the checkpoint and computes, on the CPU, the
//! losses of an uninterrupted run bit for bit: the adapter, the AdamW moments and step, and the
//! batch generator are restored, and the dropout masks of each step come from a generator seeded
//! by the run's seed and the step. A loss or gradient norm that is not finite stops the run with
//! an error; the adapter and checkpoint on disk stay the last ones written.

use super::lora::IGNORE;
use super::lora_checkpoint::{self as ckpt, dropout_seed, LoraRun, LoraState, Window};
use super::metrics::{self, MetricsWriter, Record};
use super::run_dir::{self, RunLock};
use super::trainer::EVAL_SALT;
use super::{atomic, checkpoint, console, plot, RunOptions, TrainConfig, PLOT};
use crate::model::Llama;
use crate::optim::{clip_grad_norm, AdamW};
use crate::{Device, Error, Result, Rng, Tensor};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The adapter's folder inside the run folder.
pub const ADAPTER_DIR: &str = "adapter";

fn err(msg: String) -> Error {
    Error::invalid("finetune", msg)
}

/// The windows split for training and validation: the last ⌈n·`val_fraction`⌉ (at least one,
/// at most n − 1) are held out. Fewer than two windows cannot be split, and are an error.
pub fn split_windows(windows: &[Window], val_fraction: f64) -> Result<(&[Window], &[Window])> {
    let n = windows.len();
    if n < 2 {
        let block = windows
            .first()
            .map_or(String::new(), |w| format!(" of {} tokens", w.0.len()));
        return Err(err(format!(
            "the data gives {n} training window{}{block}; training with a validation split needs at least 2: \
             give more data or a smaller --block-size (windows need tokens to train: assistant tokens for chat data)",
            if n == 1 { "" } else { "s" }
        )));
    }
    let val = ((n as f64 * val_fraction).ceil() as usize).clamp(1, n - 1);
    Ok(windows.split_at(n - val))
}

/// Starts a new LoRA run in `opts.out_dir`: trains the adapters of `model` (added before) on
/// `windows` ((ids, targets) pairs of one length, from [`super::lora::pack_windows`]), described
/// by `run`, for `cfg.steps` steps (or up to `opts.stop_at`) of `cfg.batch_size` training windows
/// drawn at random (seeded by `cfg.seed`). A folder that holds a run already is refused. Returns
/// each step's loss.
pub fn finetune_lora(
    model: &mut Llama,
    windows: &[Window],
    cfg: &TrainConfig,
    run: &LoraRun,
    opts: &RunOptions,
) -> Result<Vec<f64>> {
    cfg.validate()?;
    check_stop_at(opts)?;
    if cfg.grad_accum != 1 {
        return Err(err(format!(
            "--grad-accum {} is not supported with --gguf (one batch per step); raise --batch-size instead",
            cfg.grad_accum
        )));
    }
    split_windows(windows, cfg.val_fraction)?;
    if model.lora_config().is_none() {
        return Err(err("the model has no LoRA adapters to train".into()));
    }
    let out = &opts.out_dir;
    let made = run_dir::create(out)?;
    let started = (|| {
        let lock = take_run_dir(out)?;
        if let Ok(dir) = checkpoint::find(out) {
            return Err(err(format!(
                "{} already holds a run (checkpoint in {}); continue it with --resume, or choose another --out",
                out.display(),
                dir.display()
            )));
        }
        let state = LoraState {
            step: 0,
            data_rng: Rng::new(cfg.seed).state(),
            train: cfg.clone(),
            run: run.clone(),
            train_seconds: 0.0,
            kiln_version: env!("CARGO_PKG_VERSION").to_string(),
            checksums: Default::default(),
        };
        let metrics = MetricsWriter::create(&out.join(metrics::FILE), &[])?;
        Ok((lock, state, metrics))
    })();
    let (lock, state, metrics) = match started {
        Ok(s) => s,
        Err(e) => {
            run_dir::remove_created(out, &made);
            return Err(e);
        }
    };
    let params = model.lora_params();
    let opt = new_optimizer(&params, cfg)?;
    Session {
        model,
        params,
        opt,
        windows,
        state,
        history: Vec::new(),
        metrics,
        out: out.clone(),
        _lock: lock,
    }
    .run(opts)
}

/// Continues the LoRA run in `opts.out_dir` from its checkpoint: `model` is the run's GGUF model
/// without adapters (the checkpoint's are loaded into it), `windows` and `run` the data as
/// [`finetune_lora`] took them, which must match what the checkpoint recorded. `change` may
/// alter the saved settings (more steps, a lower learning rate, ...); the seed and the validation
/// split stay. With no change, the losses are those of the uninterrupted run.
pub fn resume_lora(
    model: &mut Llama,
    windows: &[Window],
    run: &LoraRun,
    opts: &RunOptions,
    change: impl FnOnce(&mut TrainConfig),
) -> Result<Vec<f64>> {
    check_stop_at(opts)?;
    let out = &opts.out_dir;
    checkpoint::find(out)?;
    let lock = take_run_dir(out)?;
    let (dir, mut state) = ckpt::read_state(out)?;
    let before = state.train.clone();
    change(&mut state.train);
    state.train.validate()?;
    if state.train.seed != before.seed || state.train.val_fraction != before.val_fraction {
        return Err(err(
            "a resumed run keeps its seed and validation split; start a new run to change them".into(),
        ));
    }
    if state.train.grad_accum != 1 {
        return Err(err("--grad-accum is not supported with --gguf".into()));
    }
    if state.train.steps < state.step {
        return Err(err(format!(
            "the run in {} is at step {}, past --steps {}; give --steps {} or more to train further",
            out.display(),
            state.step,
            state.train.steps,
            state.step
        )));
    }
    let saved = &state.run;
    if run.gguf_checksum != saved.gguf_checksum {
        return Err(err(format!(
            "{} changed since the checkpoint was written (checksum {}, recorded {}); resuming would not continue the same run",
            run.gguf, run.gguf_checksum, saved.gguf_checksum
        )));
    }
    if (run.block_size, run.windows, &run.windows_checksum)
        != (saved.block_size, saved.windows, &saved.windows_checksum)
    {
        return Err(err(format!(
            "the data ({}) now gives {} windows of {} tokens (checksum {}), the checkpoint recorded {} of {} ({}): \
             the data, its tokenization or the window size changed; resuming would not continue the same run",
            run.sources.join(", "),
            run.windows,
            run.block_size,
            run.windows_checksum,
            saved.windows,
            saved.block_size,
            saved.windows_checksum
        )));
    }
    ckpt::load_adapter(&dir, &state, model)?;
    let params = model.lora_params();
    let mut opt = new_optimizer(&params, &state.train)?;
    ckpt::load_optimizer(&dir, &state, &mut opt, model)?;
    let metrics_path = out.join(metrics::FILE);
    let history: Vec<Record> = metrics::read(&metrics_path)?
        .into_iter()
        .filter(|r| r.step() <= state.step)
        .collect();
    let metrics = MetricsWriter::create(&metrics_path, &history)?;
    console::out(&format!(
        "resuming {} at step {} of {}",
        out.display(),
        state.step,
        state.train.steps
    ));
    Session {
        model,
        params,
        opt,
        windows,
        state,
        history,
        metrics,
        out: out.clone(),
        _lock: lock,
    }
    .run(opts)
}

fn check_stop_at(opts: &RunOptions) -> Result<()> {
    if opts.stop_at == Some(0) {
        return Err(err("--stop-at must be at least 1".into()));
    }
    Ok(())
}

/// Locks `out` for this process and removes what a killed writer left there.
fn take_run_dir(out: &Path) -> Result<RunLock> {
    let lock = RunLock::acquire(out)?;
    for staging in [checkpoint::TMP, ADAPTER_STAGED] {
        run_dir::remove_leftovers(out, staging)?;
    }
    Ok(lock)
}

fn new_optimizer(params: &[(String, Tensor)], cfg: &TrainConfig) -> Result<AdamW> {
    AdamW::new(params.to_vec(), cfg.lr, (cfg.beta1, cfg.beta2), 1e-8, cfg.weight_decay)
}

/// Everything a LoRA training session holds.
struct Session<'a> {
    model: &'a mut Llama,
    params: Vec<(String, Tensor)>,
    opt: AdamW,
    windows: &'a [Window],
    state: LoraState,
    history: Vec<Record>,
    metrics: MetricsWriter,
    out: PathBuf,
    /// Held until the session ends: no other writer uses the run folder meanwhile.
    _lock: RunLock,
}

impl Session<'_> {
    /// Trains from the state's step up to `--steps` or `--stop-at`, evaluating, saving and
    /// checkpointing on the schedule; returns this session's losses.
    fn run(mut self, opts: &RunOptions) -> Result<Vec<f64>> {
        let cfg = self.state.train.clone();
        self.model.set_dtype(cfg.dtype)?;
        self.model.set_recompute(self.state.run.recompute);
        let (train, _) = split_windows(self.windows, cfg.val_fraction)?;
        let (dev, b, block) = (*self.model.device(), cfg.batch_size, self.state.run.block_size);
        let end = opts.stop_at.map_or(cfg.steps, |s| s.min(cfg.steps));
        if self.state.step == 0 && self.history.is_empty() {
            self.evaluate_and_log(0.0)?;
        }
        let mut rng = Rng::from_state(self.state.data_rng);
        let schedule = cfg.schedule();
        let mut losses = Vec::with_capacity(end.saturating_sub(self.state.step));
        let (start_step, mut session_seconds) = (self.state.step, 0.0);
        while self.state.step < end {
            let step = self.state.step + 1;
            let t0 = Instant::now();
            let (x, y) = draw_batch(train, b, block, &mut rng, &dev)?;
            let lr = schedule.lr(step - 1);
            self.opt.set_lr(lr);
            self.model.set_lora_training(Some(dropout_seed(cfg.seed, step)));
            let loss = masked_loss(self.model, &x, &y)?;
            let loss_value = loss.item()?;
            let mut grads = loss.backward()?;
            self.model.set_lora_training(None);
            let grad_norm = match cfg.grad_clip > 0.0 {
                true => clip_grad_norm(&self.params, &mut grads, cfg.grad_clip)?,
                false => 0.0,
            };
            if !loss_value.is_finite() || !grad_norm.is_finite() {
                return Err(self.diverged(&format!(
                    "step {step}: the loss is {loss_value} and the gradient norm {grad_norm}"
                )));
            }
            self.opt.step(&grads)?;
            drop(grads);
            let dt = t0.elapsed().as_secs_f64();
            session_seconds += dt;
            self.state.train_seconds += dt;
            self.state.step = step;
            losses.push(loss_value);
            self.record(Record::Train {
                step,
                loss: loss_value,
                lr,
                grad_norm,
            })?;
            let tokens_per_s = ((step - start_step) * b * block) as f64 / session_seconds.max(1e-9);
            console::out(&format!(
                "step {step}/{}: loss {loss_value:.4}, lr {lr:.2e}, grad norm {grad_norm:.3}, {tokens_per_s:.0} tok/s",
                cfg.steps
            ));
            if step.is_multiple_of(cfg.eval_interval) || step == cfg.steps || step == end {
                self.state.data_rng = rng.state();
                self.evaluate_and_log(tokens_per_s)?;
                save_adapter_atomic(self.model, &self.out)?;
                ckpt::save(&self.out, self.model, &self.opt, &self.state)?;
            }
        }
        Ok(losses)
    }

    /// The mean loss of `eval_iters` batches of each split, dropout off, from batches drawn by a
    /// generator seeded the same way at every evaluation; recorded, printed and plotted. Losses
    /// that are not finite stop the run before anything is saved.
    fn evaluate_and_log(&mut self, tokens_per_s: f64) -> Result<()> {
        let cfg = &self.state.train;
        let (train, val) = split_windows(self.windows, cfg.val_fraction)?;
        let (dev, b, block) = (*self.model.device(), cfg.batch_size, self.state.run.block_size);
        let mut means = [0.0; 2];
        {
            let _no_grad = crate::no_grad();
            for (mean, split) in means.iter_mut().zip([train, val]) {
                let mut rng = Rng::new(cfg.seed ^ EVAL_SALT);
                let mut sum = 0.0;
                for _ in 0..cfg.eval_iters {
                    let (x, y) = draw_batch(split, b, block, &mut rng, &dev)?;
                    sum += masked_loss(self.model, &x, &y)?.item()?;
                }
                *mean = sum / cfg.eval_iters as f64;
            }
        }
        let [train_loss, val_loss] = means;
        let step = self.state.step;
        if !(train_loss.is_finite() && val_loss.is_finite()) {
            return Err(self.diverged(&format!(
                "after step {step}: the evaluation losses are {train_loss} (train split) and {val_loss} (val split)"
            )));
        }
        self.record(Record::Eval {
            step,
            train_loss,
            val_loss,
            tokens_per_s,
            train_seconds: self.state.train_seconds,
        })?;
        console::out(&format!(
            "step {step}/{}: train loss {train_loss:.4}, val loss {val_loss:.4}",
            self.state.train.steps
        ));
        let svg = plot::history_svg("LoRA fine-tuning", &self.history);
        crate::model::io::write_atomic(&self.out.join(PLOT), svg.as_bytes())
    }

    fn record(&mut self, r: Record) -> Result<()> {
        self.metrics.write(&r)?;
        self.history.push(r);
        Ok(())
    }

    /// The error that stops a run whose loss or gradient norm is not finite (`what`), saying
    /// where the last adapter and checkpoint are.
    fn diverged(&self, what: &str) -> Error {
        let dir = self.out.join(ADAPTER_DIR);
        let kept = match dir.is_dir() {
            true => format!(
                "the last adapter written is in {}, its checkpoint in {} (resume it with a lower --lr)",
                dir.display(),
                self.out.join(checkpoint::DIR).display()
            ),
            false => "no adapter was written yet".to_string(),
        };
        err(format!("{what}; stopped (a lower --lr may help); {kept}"))
    }
}

/// `b` windows of `block` tokens drawn from `windows` with replacement: the ids x (B,T) and the
/// targets y (B·T).
fn draw_batch(windows: &[Window], b: usize, block: usize, rng: &mut Rng, dev: &Device) -> Result<(Tensor, Tensor)> {
    let mut x = Vec::with_capacity(b * block);
    let mut y = Vec::with_capacity(b * block);
    for _ in 0..b {
        let (ids, targets) = &windows[rng.below(windows.len() as u64) as usize];
        x.extend_from_slice(ids);
        y.extend_from_slice(targets);
    }
    Ok((
        Tensor::from_vec(x, &[b, block], dev)?,
        Tensor::from_vec(y, &[b * block], dev)?,
    ))
}

/// The mean cross-entropy of the model's predictions for `x` (B, T) over the targets `y` (B·T)
/// that are not [`IGNORE`].
fn masked_loss(model: &Llama, x: &Tensor, y: &Tensor) -> Result<Tensor> {
    // logits are (B,T,V)
    let logits = model.forward(x)?;
    let (bt, v) = (logits.shape()[0] * logits.shape()[1], logits.shape()[2]);
    logits.reshape(&[bt, v])?.cross_entropy_with_ignore(y, Some(IGNORE))
}

/// Where the adapter is staged before it replaces [`ADAPTER_DIR`].
const ADAPTER_STAGED: &str = "adapter.tmp";

/// Writes the adapter to `out/adapter/`: into `out/adapter.tmp/`, then swapped in, so that a
/// reader always finds a complete adapter (the old or the new one).
pub fn save_adapter_atomic(model: &Llama, out: &Path) -> Result<PathBuf> {
    let target = out.join(ADAPTER_DIR);
    let staged = out.join(ADAPTER_STAGED);
    if staged.exists() {
        std::fs::remove_dir_all(&staged).map_err(|e| Error::io(format!("removing {}", staged.display()), e))?;
    }
    model.save_adapter(&staged)?;
    atomic::swap_dir(&staged, &target, &out.join(format!("{ADAPTER_DIR}.old")))?;
    Ok(target)
}
