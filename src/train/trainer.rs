//! The training loop: batches → loss → backward (accumulated over micro-batches) → clip →
//! AdamW with warmup + cosine learning rate; periodic evaluation, metrics, loss plot and
//! checkpoint.
//!
//! Reproducibility: three generators, all seeded from `TrainConfig::seed`: one draws the
//! initial weights, one the training batches, one the dropout masks. The last two are saved
//! in every checkpoint with the weights and the optimizer moments, so a resumed run draws
//! the same batches and masks and, on the CPU, computes the same losses bit for bit as a
//! run that was never interrupted. Evaluation uses its own generator, re-seeded at every
//! evaluation (the same batches each time), so it never shifts the training stream.
//!
//! A window plan (`TrainConfig::windows`) and initial weights from a file (`Init::Scratch`'s
//! `weights`) take the place of the weight and batch generators (evaluation batches included),
//! to replay another program's run.
//!
//! Data-parallel runs ([`train_data_parallel`], [`resume_data_parallel`]) run this same loop on
//! every rank, each on its slice of every batch (see [`super::data_parallel`]); rank 0 alone
//! writes the run folder and prints.

use super::buckets::GradientReduction;
use super::checkpoint::{self, DataInfo, TrainState};
use super::config::TrainConfig;
use super::console;
use super::data_parallel::DataParallel;
use super::metrics::{self, MetricsWriter, Record};
use super::plot;
use super::progress::Bar;
use super::run_dir::{self, RunLock};
use super::zero::Zero1;
use crate::data::{tokenize_cached, Corpus, Dataset, Split, WindowPlan, EMBEDDED};
use crate::model::{Gpt, GptConfig};
use crate::optim::{clip_coefficient, AdamW};
use crate::tokenizer::{Tokenizer, TokenizerKind};
use crate::{BackwardObserver, Device, Error, Gradients, Result, Rng, Tensor};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The token cache's file name inside the run folder.
pub const TOKEN_CACHE: &str = "tokens.bin";
/// The loss plot's file name inside the run folder.
pub const PLOT: &str = "loss.svg";
/// Mixed into the seed of the evaluation batches.
pub(super) const EVAL_SALT: u64 = 0x5EED_0FE7_A1B2;

/// Where a run starts from.
pub enum Init {
    /// A new model of this shape (`vocab_size` is replaced by the tokenizer's), with a
    /// tokenizer of this kind built for the corpus. Its weights are drawn from the seed, or
    /// read from `weights` (a safetensors file with kiln's names: another program's
    /// initialisation, to replay its run).
    Scratch {
        /// The model's shape.
        model: GptConfig,
        /// The tokenizer to build for the corpus.
        tokenizer: TokenizerKind,
        /// A safetensors file of initial weights, in place of random ones.
        weights: Option<PathBuf>,
    },
    /// Fine-tuning: these weights and their tokenizer; `source` is recorded in the state.
    From {
        /// The model to fine-tune.
        model: Box<Gpt>,
        /// Its tokenizer.
        tokenizer: Tokenizer,
        /// Where the weights came from (a checkpoint folder, a Hugging Face folder), for `state.json`.
        source: String,
    },
}

/// Options that do not change what is computed.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// The run folder: the checkpoint, `metrics.jsonl`, the plot and the token cache go there.
    pub out_dir: PathBuf,
    /// The device to train on.
    pub device: Device,
    /// Stop (with a checkpoint) after this many steps in total, to resume later.
    pub stop_at: Option<usize>,
    /// Print progress (a bar on a terminal, plain lines otherwise).
    pub verbose: bool,
}

/// What a finished (or stopped) run hands back.
pub struct Outcome {
    /// The trained model.
    pub model: Gpt,
    /// Its tokenizer.
    pub tokenizer: Tokenizer,
    /// The optimizer steps completed in total.
    pub step: usize,
    /// The training loss of the last step, if any ran.
    pub train_loss: Option<f64>,
    /// The validation loss of the last evaluation, if any ran.
    pub val_loss: Option<f64>,
    /// Training throughput of this session (tokens per second, evaluation excluded).
    pub tokens_per_s: f64,
    /// The checkpoint folder written last.
    pub checkpoint: PathBuf,
}

fn train_err(msg: String) -> Error {
    Error::Invalid { op: "train", msg }
}

/// Prints through the progress bar when there is one, else as plain lines.
struct Reporter {
    bar: Option<Bar>,
    verbose: bool,
}

impl Reporter {
    fn new(verbose: bool, start: usize, total: usize) -> Reporter {
        use std::io::IsTerminal;
        let bar = if verbose && std::io::stderr().is_terminal() {
            Bar::new(start, total)
        } else {
            None
        };
        Reporter { bar, verbose }
    }

    fn line(&self, s: &str) {
        if !self.verbose {
            return;
        }
        match &self.bar {
            Some(bar) => bar.println(s),
            None => console::out(s),
        }
    }

    fn step(&self, step: usize, msg: String) {
        if let Some(bar) = &self.bar {
            bar.set(step, msg);
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish();
        }
    }
}

/// `1234567` → `1.23M`.
pub fn human(n: f64) -> String {
    match n.abs() {
        x if x >= 1e9 => format!("{:.2}G", n / 1e9),
        x if x >= 1e6 => format!("{:.2}M", n / 1e6),
        x if x >= 1e4 => format!("{:.1}k", n / 1e3),
        _ => format!("{n:.0}"),
    }
}

/// One line describing a model's shape and size.
pub fn describe_model(cfg: &GptConfig, params: usize) -> String {
    format!(
        "{} parameters (n_layer {}, n_head {}, n_embd {}, block_size {}, vocab_size {}, dropout {}, {})",
        human(params as f64),
        cfg.n_layer,
        cfg.n_head,
        cfg.n_embd,
        cfg.block_size,
        cfg.vocab_size,
        cfg.dropout,
        if cfg.bias { "bias" } else { "no bias" }
    )
}

/// Everything a training session holds.
struct Session {
    run_dir: PathBuf,
    /// The ranks this session trains with (one process alone outside data-parallel runs).
    ranks: DataParallel,
    device: Device,
    model: Gpt,
    params: Vec<(String, crate::Tensor)>,
    opt: Optimizer,
    tokenizer: Tokenizer,
    data: Dataset,
    /// Where the batches come from when they are not drawn ([`TrainConfig::windows`]).
    windows: Option<WindowPlan>,
    state: TrainState,
    /// The metrics so far (on rank 0; the other ranks keep only this session's).
    history: Vec<Record>,
    /// Rank 0's `metrics.jsonl` (None on the other ranks, which write nothing).
    metrics: Option<MetricsWriter>,
    /// Held by rank 0 until the session ends: no other writer uses the run folder meanwhile.
    _lock: Option<RunLock>,
}

/// Starts a new run in `opts.out_dir` on `data` (no files: the embedded corpus). A start that
/// fails removes the folder if it made it.
pub fn train(init: Init, data: &[PathBuf], cfg: TrainConfig, opts: &RunOptions) -> Result<Outcome> {
    train_data_parallel(&DataParallel::single(), init, data, cfg, opts)
}

/// [`train`] on every rank of `ranks`: `cfg.batch_size` is the global batch, which each rank
/// slices (it must split evenly over the ranks). Rank 0 alone makes and writes the run folder;
/// every rank returns the same outcome.
pub fn train_data_parallel(
    ranks: &DataParallel,
    init: Init,
    data: &[PathBuf],
    cfg: TrainConfig,
    opts: &RunOptions,
) -> Result<Outcome> {
    cfg.validate()?;
    check_stop_at(opts)?;
    ranks.check_batch(cfg.batch_size)?;
    if !ranks.is_root() {
        return start(ranks, init, data, cfg, opts)?.run(opts);
    }
    let made = run_dir::create(&opts.out_dir)?;
    match start(ranks, init, data, cfg, opts) {
        Ok(session) => session.run(opts),
        Err(e) => {
            run_dir::remove_created(&opts.out_dir, &made);
            Err(e)
        }
    }
}

/// Takes the run folder (rank 0) and prepares a new run in it: model, tokens, optimizer,
/// metrics file.
fn start(ranks: &DataParallel, init: Init, data: &[PathBuf], cfg: TrainConfig, opts: &RunOptions) -> Result<Session> {
    let run_dir = &opts.out_dir;
    let root = ranks.is_root();
    let lock = root.then(|| take_run_dir(run_dir, opts)).transpose()?;
    if let Ok(dir) = checkpoint::find(run_dir) {
        let step = checkpoint::read_meta(&dir).map(|(_, _, s)| s.step).unwrap_or(0);
        return Err(train_err(format!(
            "{} already holds a run (checkpoint at step {step}); continue it with --resume, or choose another --out",
            run_dir.display()
        )));
    }
    let corpus = Corpus::from_files(data)?;
    let (model, tokenizer, init_name) = match init {
        Init::Scratch {
            model,
            tokenizer,
            weights,
        } => {
            let tok = Tokenizer::for_corpus(tokenizer, &corpus.text);
            let model_cfg = GptConfig {
                vocab_size: tok.vocab_size(),
                ..model
            };
            match weights {
                None => (
                    Gpt::new(model_cfg, &mut Rng::new(cfg.seed), &opts.device)?,
                    tok,
                    "scratch".to_string(),
                ),
                Some(path) => {
                    let mut gpt = Gpt::zeros(model_cfg, &opts.device)?;
                    gpt.load_safetensors(&path)?;
                    (gpt, tok, format!("weights {}", path.display()))
                }
            }
        }
        Init::From {
            model,
            tokenizer,
            source,
        } => (*model, tokenizer, source),
    };
    let cache = root.then(|| run_dir.join(TOKEN_CACHE));
    let (ids, _) = tokenize_cached(&corpus, &tokenizer, cache.as_deref())?;
    if let Some(&max) = ids.iter().max() {
        if max as usize >= model.config().vocab_size {
            return Err(train_err(format!(
                "the text encodes to token id {max}, but the model's vocabulary has only {} ids \
                 (a tokenizer bigger than the model?)",
                model.config().vocab_size
            )));
        }
    }
    let windows = read_windows(&cfg)?;
    let cache_key = crate::data::CacheKey {
        corpus: corpus.fingerprint(),
        tokenizer: tokenizer.fingerprint(),
    };
    let checksums = [(
        TOKEN_CACHE.to_string(),
        checkpoint::checksum_text(crate::data::cache_checksum(cache_key, &ids)),
    )]
    .into();
    let data_info = DataInfo {
        sources: corpus.sources.clone(),
        corpus_hash: corpus.fingerprint(),
        tokens: ids.len(),
        windows_hash: windows.as_ref().map(|(_, hash)| *hash),
    };
    let dataset = Dataset::new(ids, cfg.val_fraction)?;
    dataset.check_block(model.config().block_size)?;
    // Separate streams for batches and dropout, derived from the seed.
    let mut seeder = Rng::new(cfg.seed ^ 0xDA7A);
    let state = TrainState {
        step: 0,
        data_rng: Rng::new(seeder.next_u64()).state(),
        dropout_rng: Rng::new(seeder.next_u64()).state(),
        train: cfg,
        data: data_info,
        init: init_name,
        train_seconds: 0.0,
        last_train_loss: None,
        last_val_loss: None,
        kiln_version: env!("CARGO_PKG_VERSION").to_string(),
        checksums,
    };
    let params = model.params();
    let opt = Optimizer::new(ranks, &params, new_optimizer(&params, &state.train)?)?;
    let metrics = root
        .then(|| MetricsWriter::create(&run_dir.join(metrics::FILE), &[]))
        .transpose()?;
    Ok(Session {
        run_dir: run_dir.clone(),
        ranks: ranks.clone(),
        device: opts.device,
        model,
        params,
        opt,
        tokenizer,
        data: dataset,
        windows: windows.map(|(plan, _)| plan),
        state,
        history: Vec::new(),
        metrics,
        _lock: lock,
    })
}

/// Locks `run_dir` for this process and removes what a killed writer left there.
fn take_run_dir(run_dir: &Path, opts: &RunOptions) -> Result<RunLock> {
    let lock = RunLock::acquire(run_dir)?;
    let removed = run_dir::remove_leftovers(run_dir, checkpoint::TMP)?;
    if opts.verbose && !removed.is_empty() {
        let names: Vec<String> = removed.iter().map(|p| p.display().to_string()).collect();
        console::out(&format!("removed what an interrupted run left: {}", names.join(", ")));
    }
    Ok(lock)
}

/// Continues the run in `opts.out_dir` from its checkpoint. `change` may alter the saved
/// training settings (a longer run, a lower learning rate); with no change the resumed run
/// reproduces the uninterrupted one exactly (on the CPU).
pub fn resume(opts: &RunOptions, change: impl FnOnce(&mut TrainConfig)) -> Result<Outcome> {
    resume_data_parallel(&DataParallel::single(), opts, change)
}

/// [`resume`] on every rank of `ranks`, from a checkpoint written by any number of ranks (it
/// holds the global batch, which must split evenly over these ranks after `change`). Every
/// rank reads the checkpoint; rank 0 alone writes.
pub fn resume_data_parallel(
    ranks: &DataParallel,
    opts: &RunOptions,
    change: impl FnOnce(&mut TrainConfig),
) -> Result<Outcome> {
    let run_dir = &opts.out_dir;
    let root = ranks.is_root();
    check_stop_at(opts)?;
    checkpoint::find(run_dir)?;
    let lock = root.then(|| take_run_dir(run_dir, opts)).transpose()?;
    let loaded = checkpoint::load(run_dir, &opts.device)?;
    let mut state = loaded.state;
    let before = state.train.clone();
    change(&mut state.train);
    state.train.validate()?;
    ranks.check_batch(state.train.batch_size)?;
    if state.train.steps < state.step {
        return Err(train_err(format!(
            "the run in {} is at step {}, past --steps {}; give --steps {} or more to train further",
            run_dir.display(),
            state.step,
            state.train.steps,
            state.step
        )));
    }
    if state.train.seed != before.seed
        || state.train.val_fraction != before.val_fraction
        || state.train.windows != before.windows
    {
        return Err(train_err(
            "a resumed run keeps its seed, data split and window plan; start a new run to change them".into(),
        ));
    }
    let windows = read_windows(&state.train)?;
    if windows.as_ref().map(|(_, hash)| *hash) != state.data.windows_hash {
        return Err(train_err(format!(
            "the window plan {} changed since the checkpoint was written; resuming would not continue the same run",
            state.train.windows.as_deref().unwrap_or(Path::new("")).display()
        )));
    }
    let ids = resume_tokens(
        run_dir,
        &state,
        &loaded.tokenizer,
        loaded.model.config().vocab_size,
        root,
    )?;
    let dataset = Dataset::new(ids, state.train.val_fraction)?;
    dataset.check_block(loaded.model.config().block_size)?;
    let params = loaded.model.params();
    let mut opt = new_optimizer(&params, &state.train)?;
    checkpoint::load_optimizer(&loaded.dir, &state, &mut opt, &opts.device)?;
    // a checkpoint holds the whole moments (gathered when ZeRO-1 wrote it): shard them again
    let opt = Optimizer::new(ranks, &params, opt)?;
    // rank 0 rewrites metrics.jsonl up to the checkpoint's step; the others need no history
    // (the checkpoint's step is at least 1, so a resumed run is never fresh)
    let (history, metrics) = if root {
        let metrics_path = run_dir.join(metrics::FILE);
        let history: Vec<Record> = metrics::read(&metrics_path)?
            .into_iter()
            .filter(|r| r.step() <= state.step)
            .collect();
        let metrics = MetricsWriter::create(&metrics_path, &history)?;
        (history, Some(metrics))
    } else {
        (Vec::new(), None)
    };
    let session = Session {
        run_dir: run_dir.clone(),
        ranks: ranks.clone(),
        device: opts.device,
        model: loaded.model,
        params,
        opt,
        tokenizer: loaded.tokenizer,
        data: dataset,
        windows: windows.map(|(plan, _)| plan),
        state,
        history,
        metrics,
        _lock: lock,
    };
    if opts.verbose && root {
        console::out(&format!(
            "resuming {} at step {} of {}",
            run_dir.display(),
            session.state.step,
            session.state.train.steps
        ));
        if session.state.train != before {
            console::out(&format!(
                "  with changed settings: {}",
                describe_changes(&before, &session.state.train)
            ));
        }
    }
    session.run(opts)
}

fn check_stop_at(opts: &RunOptions) -> Result<()> {
    if opts.stop_at == Some(0) {
        return Err(train_err("--stop-at must be at least 1".into()));
    }
    Ok(())
}

fn describe_changes(a: &TrainConfig, b: &TrainConfig) -> String {
    let (ja, jb) = (
        serde_json::to_value(a).expect("serialises"),
        serde_json::to_value(b).expect("serialises"),
    );
    let (Some(ma), Some(mb)) = (ja.as_object(), jb.as_object()) else {
        return String::new();
    };
    ma.iter()
        .filter(|(k, v)| mb.get(*k) != Some(v))
        .map(|(k, v)| format!("{k} {v} → {}", mb[k]))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The resumed run's tokens: the cache in the run folder if it is intact and matches the
/// checkpoint, else the source files again (which must not have changed; the cache is then
/// rewritten when `write_cache`). Either way the ids must have the checksum the checkpoint
/// recorded.
fn resume_tokens(
    run_dir: &Path,
    state: &TrainState,
    tok: &Tokenizer,
    vocab: usize,
    write_cache: bool,
) -> Result<Vec<u32>> {
    let key = crate::data::CacheKey {
        corpus: state.data.corpus_hash,
        tokenizer: tok.fingerprint(),
    };
    let cache = run_dir.join(TOKEN_CACHE);
    let verified = |ids: Vec<u32>, whence: &str| -> Result<Vec<u32>> {
        let sum = checkpoint::checksum_text(crate::data::cache_checksum(key, &ids));
        checkpoint::verify(state, Path::new(TOKEN_CACHE), &sum).map_err(|_| {
            train_err(format!(
                "the tokens {whence} differ from those the checkpoint recorded (checksum {sum}, {} records {}); \
                 resuming would not continue the same run",
                checkpoint::STATE,
                state.checksums.get(TOKEN_CACHE).map_or("none", String::as_str)
            ))
        })?;
        Ok(ids)
    };
    // a damaged cache is rebuilt from the sources when they are unchanged; otherwise it is
    // the error
    let damage = match crate::data::read_token_cache(&cache, Some(key), vocab) {
        Ok(Some((_, ids))) => return verified(ids, &format!("in {}", cache.display())),
        Ok(None) => None,
        Err(e) => Some(e),
    };
    let corpus = if state.data.sources == [EMBEDDED] {
        Ok(Corpus::embedded())
    } else {
        Corpus::from_files(&state.data.sources.iter().map(PathBuf::from).collect::<Vec<_>>())
    };
    let corpus = match corpus {
        Ok(c) if c.fingerprint() == state.data.corpus_hash => c,
        _ => {
            return Err(damage.unwrap_or_else(|| {
                train_err(format!(
                    "the training text ({}) changed since the checkpoint was written (or cannot be read), \
                     and the token cache {} is gone; resuming would not continue the same run",
                    state.data.sources.join(", "),
                    cache.display()
                ))
            }))
        }
    };
    if let Some(e) = damage {
        console::warn(&format!("{e}; tokenizing the unchanged sources again"));
    }
    let ids = tokenize_cached(&corpus, tok, write_cache.then_some(cache.as_path()))?.0;
    verified(ids, &format!("of {}", state.data.sources.join(", ")))
}

fn read_windows(cfg: &TrainConfig) -> Result<Option<(WindowPlan, u64)>> {
    cfg.windows.as_deref().map(WindowPlan::read).transpose()
}

fn new_optimizer(params: &[(String, crate::Tensor)], cfg: &TrainConfig) -> Result<AdamW> {
    AdamW::new(params.to_vec(), cfg.lr, (cfg.beta1, cfg.beta2), 1e-8, cfg.weight_decay)
}

impl Session {
    fn cfg(&self) -> &TrainConfig {
        &self.state.train
    }

    /// Whether the run evaluates (and checkpoints) after `done` steps, when it stops at `end`.
    fn evaluates_after(&self, done: usize, end: usize) -> bool {
        let cfg = self.cfg();
        done.is_multiple_of(cfg.eval_interval) || done == cfg.steps || done == end
    }

    /// The training loop: describe the run, check a window plan, evaluate a fresh run at step 0,
    /// then train one step at a time, evaluating and checkpointing on the schedule, until `end`.
    fn run(mut self, opts: &RunOptions) -> Result<Outcome> {
        crate::backend::cpu::retain_freed_memory();
        let cfg = self.cfg().clone();
        self.model.set_dtype(cfg.dtype)?;
        let end = opts.stop_at.map_or(cfg.steps, |s| s.min(cfg.steps));
        let tokens_per_step = cfg.tokens_per_step(self.model.config().block_size)?;
        let reporter = Reporter::new(opts.verbose && self.ranks.is_root(), self.state.step, cfg.steps);
        self.describe(&reporter, tokens_per_step);
        let fresh = self.state.step == 0 && self.history.is_empty();
        self.check_window_plan(end, fresh)?;
        let mut last_checkpoint = checkpoint::find(&self.run_dir).ok().map(|_| self.state.step);
        if fresh {
            self.evaluate_and_log(&reporter, 0.0, last_checkpoint)?;
        }
        let mut rngs = StepRngs {
            data: Rng::from_state(self.state.data_rng),
            // each rank draws its rows' slice of the masks of the whole batch
            dropout: Rng::from_state(self.state.dropout_rng).with_part(self.ranks.rank(), self.ranks.world()),
        };
        let mut speed = Throughput::new(self.state.step, tokens_per_step);
        while self.state.step < end {
            let loss = match self.train_step(&mut rngs, &mut speed) {
                Ok(loss) => loss,
                Err(StepError::Diverged { step, what }) => {
                    reporter.finish();
                    return Err(self.diverged(step, &what, last_checkpoint));
                }
                Err(StepError::Failed(e)) => return Err(e),
            };
            let tok_s = speed.tokens_per_s(self.state.step);
            reporter.step(self.state.step, format!("loss {loss:.4} | {} tok/s", human(tok_s)));
            if self.evaluates_after(self.state.step, end) {
                self.state.data_rng = rngs.data.state();
                self.state.dropout_rng = rngs.dropout.state();
                self.evaluate_and_log(&reporter, tok_s, last_checkpoint)?;
                let when = format!("after step {}", self.state.step);
                self.ranks.check_identical(&self.params, &when)?;
                if let Some(opt_state) = self.opt.checkpoint_state(&self.ranks)? {
                    checkpoint::save_with_optimizer_state(
                        &self.run_dir,
                        &self.model,
                        &opt_state,
                        &self.tokenizer,
                        &self.state,
                    )?;
                }
                last_checkpoint = Some(self.state.step);
            }
        }
        reporter.finish();
        let tokens_per_s = speed.tokens_per_s(self.state.step);
        self.finish(opts, tokens_per_s)
    }

    /// The model, the data and the plan, one line each.
    fn describe(&self, reporter: &Reporter, tokens_per_step: usize) {
        let cfg = self.cfg();
        reporter.line(&format!(
            "model: {}",
            describe_model(self.model.config(), self.model.num_params())
        ));
        reporter.line(&format!(
            "data: {} — {} tokens ({} train, {} val), tokenizer {}",
            self.state.data.sources.join(", "),
            self.state.data.tokens,
            self.data.train.len(),
            self.data.val.len(),
            self.tokenizer.describe()
        ));
        let world = self.ranks.world();
        if let Optimizer::Zero1(zero) = &self.opt {
            let (mine, whole) = zero.moment_bytes();
            let bytes = |b: usize| crate::error::human_bytes(b as u128);
            reporter.line(&format!(
                "ZeRO-1: AdamW moments sharded over {world} ranks: {} on rank 0 instead of {} (saves {} per rank)",
                bytes(mine),
                bytes(whole),
                bytes(whole - mine)
            ));
        }
        if world > 1 && matches!(self.opt, Optimizer::Whole(_)) {
            let buckets = self.ranks.begin_reduction(&self.params).buckets();
            let plural = if buckets == 1 { "" } else { "s" };
            let size = crate::error::human_bytes(4 * self.ranks.bucket_floats() as u128);
            let when = if self.ranks.overlaps() {
                "as soon as the backward has finished it"
            } else {
                "after the backward"
            };
            let place = if self.ranks.collective().reduces_on_device() {
                " on the device"
            } else {
                ""
            };
            reporter.line(&format!(
                "gradients: {buckets} bucket{plural} of about {size}, each all-reduced{place} {when}"
            ));
        }
        let ranks = if world > 1 {
            format!(" on {world} ranks ({} sequences each)", cfg.batch_size / world)
        } else {
            String::new()
        };
        reporter.line(&format!(
            "training: {} steps of {} tokens (batch {}{ranks} × grad_accum {} × block {}), lr {} → {} (warmup {}), on {} in {}; writing {}",
            cfg.steps,
            tokens_per_step,
            cfg.batch_size,
            cfg.grad_accum,
            self.model.config().block_size,
            cfg.lr,
            cfg.min_lr,
            cfg.warmup,
            self.device,
            cfg.dtype,
            self.run_dir.display()
        ));
    }

    /// With `--windows`, that the plan lists a batch for every step and evaluation this session
    /// runs (up to `end`), before any is trained.
    fn check_window_plan(&self, end: usize, fresh: bool) -> Result<()> {
        let Some(plan) = &self.windows else { return Ok(()) };
        let cfg = self.cfg();
        let eval_steps: Vec<usize> = (self.state.step..=end)
            .filter(|&s| (s == 0 && fresh) || (s > self.state.step && self.evaluates_after(s, end)))
            .collect();
        plan.check(
            &self.data,
            self.model.config().block_size,
            cfg.batch_size,
            end * cfg.grad_accum,
            &eval_steps,
            cfg.eval_iters,
        )
    }

    /// One optimizer step: the scheduled learning rate, forward and backward over the
    /// micro-batches, clipping, the update, and its metrics record. Returns the step's loss.
    fn train_step(&mut self, rngs: &mut StepRngs, speed: &mut Throughput) -> std::result::Result<f64, StepError> {
        let step = self.state.step;
        let t0 = Instant::now();
        let lr = self.cfg().schedule().lr(step);
        // every rank's mean over its rows → the mean over the global batch: with the whole
        // optimizer on every rank, all-reduced in buckets (host vectors, or tensors on the device
        // where the collective sums there: NCCL) that start during the last backward
        let averaged = self.ranks.world() > 1 && matches!(self.opt, Optimizer::Whole(_));
        let overlap = averaged && self.ranks.overlaps();
        let mut reduction = overlap.then(|| self.ranks.begin_reduction(&self.params));
        let (loss, mut grads) = self.forward_backward(step, &mut rngs.data, &mut rngs.dropout, reduction.as_mut())?;
        if let Some(reduction) = reduction {
            reduction.finish(&mut grads)?;
        } else if averaged {
            self.ranks.average_gradients(&self.params, &mut grads)?;
        }
        let mut loss = [loss];
        self.ranks.mean(&mut loss)?;
        let [loss] = loss;
        let clip = self.cfg().grad_clip;
        let max_norm = if clip > 0.0 { clip } else { f64::MAX };
        // clipped to the global norm (on every rank, or this rank's shard under ZeRO-1, whose
        // reduce-scatter runs here, after the backward); the whole optimizer applies the
        // clipping's coefficient inside its update (`step_scaled`: no pass writing scaled copies)
        let (norm, update, scale) = match &self.opt {
            Optimizer::Whole(_) => {
                let (norm, scale) = clip_coefficient(&self.params, &grads, max_norm)?;
                (norm, grads, scale)
            }
            Optimizer::Zero1(zero) => {
                let (norm, reduced) = zero.reduce_gradients(&grads, max_norm)?;
                drop(grads);
                (norm, reduced, 1.0)
            }
        };
        if !loss.is_finite() || !norm.is_finite() {
            let what = if loss.is_finite() {
                format!("the gradient norm is {norm} (loss {loss})")
            } else {
                format!("the loss is {loss}")
            };
            return Err(StepError::Diverged {
                step: step + 1,
                what: format!("{what} (learning rate {lr:e})"),
            });
        }
        match &mut self.opt {
            Optimizer::Whole(opt) => {
                opt.set_lr(lr);
                opt.step_scaled(&update, scale)?;
            }
            Optimizer::Zero1(zero) => zero.step(lr, &update)?,
        }
        drop(update);
        let dt = t0.elapsed().as_secs_f64();
        speed.seconds += dt;
        self.state.train_seconds += dt;
        self.state.step = step + 1;
        self.state.last_train_loss = Some(loss);
        self.record(Record::Train {
            step: step + 1,
            loss,
            lr,
            grad_norm: norm,
        })?;
        Ok(loss)
    }

    /// The closing line and the outcome.
    fn finish(self, opts: &RunOptions, tokens_per_s: f64) -> Result<Outcome> {
        self.ranks
            .check_identical(&self.params, &format!("at the end (step {})", self.state.step))?;
        let ckpt = self.run_dir.join(checkpoint::DIR);
        if opts.verbose && self.ranks.is_root() {
            console::out(&format!(
                "done: step {}/{}, train loss {}, val loss {}, {} tokens/s; checkpoint {}",
                self.state.step,
                self.cfg().steps,
                fmt_loss(self.state.last_train_loss),
                fmt_loss(self.state.last_val_loss),
                human(tokens_per_s),
                ckpt.display()
            ));
        }
        Ok(Outcome {
            model: self.model,
            tokenizer: self.tokenizer,
            step: self.state.step,
            train_loss: self.state.last_train_loss,
            val_loss: self.state.last_val_loss,
            tokens_per_s,
            checkpoint: ckpt,
        })
    }

    /// Step `step`'s loss (mean over the micro-batches) and summed gradients, on this rank's
    /// rows of each micro-batch. With a `reduction`, the last micro-batch's backward hands it
    /// each parameter's summed gradient as soon as it is final, and the gradients returned are
    /// those of the earlier micro-batches only (for [`GradientReduction::finish`]).
    fn forward_backward(
        &self,
        step: usize,
        data_rng: &mut Rng,
        dropout_rng: &mut Rng,
        mut reduction: Option<&mut GradientReduction<'_>>,
    ) -> Result<(f64, Gradients)> {
        let cfg = self.cfg();
        let block = self.model.config().block_size;
        let mut total = Gradients::default();
        let mut loss_sum = 0.0;
        for micro in 0..cfg.grad_accum {
            let drawn;
            let starts = match &self.windows {
                Some(plan) => &plan.train[step * cfg.grad_accum + micro],
                None => {
                    drawn = self.data.draw_starts(Split::Train, cfg.batch_size, block, data_rng)?;
                    &drawn
                }
            };
            let (x, y) = self
                .data
                .windows(Split::Train, self.ranks.shard(starts)?, block, &self.device)?;
            let loss = self.model.loss_train(&x, &y, dropout_rng)?;
            loss_sum += loss.to_scalar::<f64>()?;
            let loss = if cfg.grad_accum > 1 {
                loss.mul_scalar(1.0 / cfg.grad_accum as f64)?
            } else {
                loss
            };
            if let (Some(reduction), true) = (reduction.as_deref_mut(), micro + 1 == cfg.grad_accum) {
                loss.backward_observed(&mut LastMicroBatch {
                    earlier: &total,
                    reduction,
                })?;
                break;
            }
            let grads = loss.backward()?;
            if micro == 0 {
                total = grads;
                continue;
            }
            let _no_grad = crate::no_grad();
            for (_, p) in &self.params {
                if let Some(g) = grads.get(p) {
                    let sum = match total.get(p) {
                        Some(acc) => acc.add(g)?,
                        None => g.clone(),
                    };
                    total.insert(p, sum);
                }
            }
        }
        Ok((loss_sum / cfg.grad_accum as f64, total))
    }

    /// Mean loss over `eval_iters` batches of each split, in evaluation mode, from batches
    /// that are the same at every evaluation (or the window plan's for this step); each rank
    /// evaluates its rows of every batch, and the ranks' means are averaged.
    fn evaluate(&self) -> Result<(f64, f64)> {
        let _no_grad = crate::no_grad();
        let cfg = self.cfg();
        let block = self.model.config().block_size;
        let mut out = [0.0; 2];
        for (slot, split) in [Split::Train, Split::Val].into_iter().enumerate() {
            let mut rng = Rng::new(cfg.seed ^ EVAL_SALT);
            let mut sum = 0.0;
            for i in 0..cfg.eval_iters {
                let drawn;
                let starts = match &self.windows {
                    Some(plan) => plan.eval_batch(self.state.step, split, i),
                    None => {
                        drawn = self.data.draw_starts(split, cfg.batch_size, block, &mut rng)?;
                        &drawn
                    }
                };
                let (x, y) = self
                    .data
                    .windows(split, self.ranks.shard(starts)?, block, &self.device)?;
                sum += self.model.loss(&x, &y)?.to_scalar::<f64>()?;
            }
            out[slot] = sum / cfg.eval_iters as f64;
        }
        self.ranks.mean(&mut out)?;
        Ok((out[0], out[1]))
    }

    /// Evaluates, records the losses and redraws the plot; a loss that is not finite stops the
    /// run (see [`Session::diverged`]) before anything is written, so it is never checkpointed.
    fn evaluate_and_log(
        &mut self,
        reporter: &Reporter,
        tokens_per_s: f64,
        last_checkpoint: Option<usize>,
    ) -> Result<()> {
        let (train_loss, val_loss) = self.evaluate()?;
        if !(train_loss.is_finite() && val_loss.is_finite()) {
            reporter.finish();
            let step = self.state.step;
            let losses = format!("the evaluation losses are {train_loss} (train split) and {val_loss} (val split)");
            // The training loss of the last step was finite (it is checked first): that step's
            // update is what broke the weights, so its learning rate is the one to name.
            let whose = match step {
                0 => "of the starting weights, before any step".to_string(),
                s => format!("after a step at learning rate {:e}", self.cfg().schedule().lr(s - 1)),
            };
            return Err(self.diverged(step, &format!("{losses} {whose}"), last_checkpoint));
        }
        self.state.last_val_loss = Some(val_loss);
        self.record(Record::Eval {
            step: self.state.step,
            train_loss,
            val_loss,
            tokens_per_s,
            train_seconds: self.state.train_seconds,
        })?;
        reporter.line(&format!(
            "step {:>5}/{}: train loss {train_loss:.4}, val loss {val_loss:.4}{}",
            self.state.step,
            self.cfg().steps,
            if tokens_per_s > 0.0 {
                format!(", {} tokens/s, {:.1} s", human(tokens_per_s), self.state.train_seconds)
            } else {
                String::new()
            }
        ));
        self.write_plot()
    }

    /// The error that stops a run at `step` once a loss or the gradient norm is not finite
    /// (`what` says which, and its value). Both the training step and the evaluation stop
    /// through here, so the message always says where the last good checkpoint is; the caller
    /// returns it at once, writing nothing more.
    fn diverged(&self, step: usize, what: &str, last_checkpoint: Option<usize>) -> Error {
        // At step 0 the weights were never updated: a lower learning rate cannot help.
        let advice = if step == 0 { "" } else { "; try a lower --lr" };
        let kept = match last_checkpoint {
            Some(s) => format!(
                "The last good checkpoint (step {s}) is kept in {}; resume it with a lower --lr.",
                self.run_dir.join(checkpoint::DIR).display()
            ),
            None => format!("No checkpoint had been written yet{advice}."),
        };
        train_err(format!(
            "training diverged at step {step}: {what}; stopped without saving. {kept}"
        ))
    }

    fn record(&mut self, r: Record) -> Result<()> {
        if let Some(metrics) = &mut self.metrics {
            metrics.write(&r)?;
        }
        self.history.push(r);
        Ok(())
    }

    /// Redraws the loss plot (rank 0).
    fn write_plot(&self) -> Result<()> {
        if !self.ranks.is_root() {
            return Ok(());
        }
        let title = format!(
            "{} — {}",
            self.run_dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            self.state.data.sources.join(", ")
        );
        let svg = plot::history_svg(&title, &self.history);
        crate::model::io::write_atomic(&self.run_dir.join(PLOT), svg.as_bytes())
    }
}

/// The observer of a step's last backward under data parallelism: each gradient, summed with the
/// earlier micro-batches' (as the accumulation of `forward_backward` sums it), goes to the
/// step's all-reduce as soon as it is final, and the reductions in flight are tested after
/// every node.
struct LastMicroBatch<'a, 'r> {
    earlier: &'a Gradients,
    reduction: &'a mut GradientReduction<'r>,
}

impl BackwardObserver for LastMicroBatch<'_, '_> {
    fn gradient_ready(&mut self, leaf: &Tensor, grad: &Tensor) -> Result<()> {
        match self.earlier.get(leaf) {
            Some(acc) => self.reduction.ready(leaf, &acc.add(grad)?),
            None => self.reduction.ready(leaf, grad),
        }
    }
    fn node_done(&mut self) -> Result<()> {
        self.reduction.progress()
    }
}

/// A session's optimizer: one AdamW, or AdamW with its moments sharded over the ranks (ZeRO-1,
/// [`DataParallel::zero_stage`] 1).
enum Optimizer {
    Whole(AdamW),
    Zero1(Zero1),
}

impl Optimizer {
    /// `opt` as the ranks' ZeRO stage wants it: as it is, or sharded.
    fn new(ranks: &DataParallel, params: &[(String, crate::Tensor)], opt: AdamW) -> Result<Optimizer> {
        Ok(match ranks.zero_stage() {
            0 => Optimizer::Whole(opt),
            _ => Optimizer::Zero1(Zero1::new(ranks, params, opt)?),
        })
    }

    /// The whole optimizer state for a checkpoint, on rank 0 (None on the others). Every rank
    /// calls it: under ZeRO-1 the moments are gathered from the ranks.
    fn checkpoint_state(&self, ranks: &DataParallel) -> Result<Option<Vec<(String, crate::Tensor)>>> {
        match self {
            Optimizer::Whole(opt) => ranks.is_root().then(|| opt.state()).transpose(),
            Optimizer::Zero1(zero) => {
                let state = zero.state()?;
                Ok(ranks.is_root().then_some(state))
            }
        }
    }
}

/// The two random streams a training step draws from (batches, dropout masks), saved in
/// checkpoints so a resumed run repeats them.
struct StepRngs {
    data: Rng,
    dropout: Rng,
}

/// This session's training speed: seconds spent in steps since `start_step`.
struct Throughput {
    start_step: usize,
    tokens_per_step: usize,
    seconds: f64,
}

impl Throughput {
    fn new(start_step: usize, tokens_per_step: usize) -> Throughput {
        Throughput {
            start_step,
            tokens_per_step,
            seconds: 0.0,
        }
    }

    /// Tokens per second over this session's steps up to `step` (0 before the first).
    fn tokens_per_s(&self, step: usize) -> f64 {
        if self.seconds > 0.0 {
            (step - self.start_step) as f64 * self.tokens_per_step as f64 / self.seconds
        } else {
            0.0
        }
    }
}

/// Why a training step stopped the run: the loss or gradient norm is not finite (reported with
/// the checkpoint to go back to), or an error.
enum StepError {
    Diverged { step: usize, what: String },
    Failed(Error),
}

impl From<Error> for StepError {
    fn from(e: Error) -> StepError {
        StepError::Failed(e)
    }
}

fn fmt_loss(l: Option<f64>) -> String {
    l.map_or("-".into(), |l| format!("{l:.4}"))
}

#[cfg(test)]
mod tests {
    use crate::backend::cpu::vectorise::{cap_width, width, Width};
    use crate::model::{Gpt, GptConfig};
    use crate::optim::{clip_grad_norm, AdamW};
    use crate::{Device, Result, Rng, Tensor};

    /// Two steps of a small nanoGPT (layer norms without bias, the fused QKV attention, the GELU
    /// epilogue, cross-entropy, clipping, AdamW) on the CPU end with the same weights, bit for bit,
    /// whatever vectors the CPU loops run on (the baseline, AVX2, AVX-512: each the machine has).
    /// Widths 40 and 160 and 19 positions leave tails at every vector size.
    #[test]
    fn a_training_step_gives_the_same_bits_at_every_vector_width() {
        let steps = |w: Width| -> Result<Vec<Vec<u32>>> {
            let cfg = GptConfig {
                vocab_size: 67,
                block_size: 19,
                n_layer: 2,
                n_head: 4,
                n_embd: 40,
                dropout: 0.0,
                bias: false,
            };
            let dev = Device::Cpu;
            let previous = cap_width(w);
            let run = || -> Result<Vec<Vec<u32>>> {
                let model = Gpt::new(cfg, &mut Rng::new(7), &dev)?;
                let params = model.params();
                let tensors: Vec<Tensor> = params.iter().map(|(_, t)| t.clone()).collect();
                let mut opt = AdamW::new(params, 1e-2, (0.9, 0.99), 1e-8, 0.1)?;
                let ids: Vec<u32> = (0..3 * 19).map(|i| (i * 31 % 67) as u32).collect();
                let targets: Vec<u32> = (0..3 * 19).map(|i| (i * 17 % 67) as u32).collect();
                let (ids, targets) = (
                    Tensor::from_vec(ids, &[3, 19], &dev)?,
                    Tensor::from_vec(targets, &[3, 19], &dev)?,
                );
                for _ in 0..2 {
                    let mut grads = model.loss_train(&ids, &targets, &mut Rng::new(1))?.backward()?;
                    clip_grad_norm(&tensors, &mut grads, 0.5)?;
                    opt.step(&grads)?;
                }
                model
                    .params()
                    .iter()
                    .map(|(_, t)| Ok(t.to_vec::<f32>()?.iter().map(|v| v.to_bits()).collect()))
                    .collect()
            };
            let out = run();
            cap_width(previous);
            out
        };
        let base = steps(Width::Base).unwrap();
        for w in [Width::Avx2, Width::Avx512].into_iter().filter(|&w| w <= width()) {
            assert!(steps(w).unwrap() == base, "{w:?} changed the weights' bits");
        }
    }
}
