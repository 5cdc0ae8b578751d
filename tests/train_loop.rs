//! The training loop: exact resume, divergence, checkpoints, gradient accumulation.
//! Tiny models and a few steps, so the whole file runs in seconds.

use kiln::model::GptConfig;
use kiln::tokenizer::TokenizerKind;
use kiln::train::data_parallel::{Collective, DataParallel, InFlight};
use kiln::train::{self, checkpoint, metrics, Init, RunOptions, TrainConfig};
use kiln::{DType, Device};
use std::path::{Path, PathBuf};

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kiln-test-loop-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A small text with structure to learn.
fn write_corpus(dir: &Path) -> PathBuf {
    let mut text = String::new();
    for i in 0..300 {
        text.push_str(&format!("the {} cat sat on the {} mat.\n", i % 7, (i * 3) % 5));
    }
    let p = dir.join("corpus.txt");
    std::fs::write(&p, text).unwrap();
    p
}

fn tiny_model(dropout: f64) -> GptConfig {
    GptConfig {
        vocab_size: 0, // set from the tokenizer
        block_size: 16,
        n_layer: 1,
        n_head: 2,
        n_embd: 16,
        dropout,
        bias: true,
    }
}

fn tiny_train(steps: usize) -> TrainConfig {
    TrainConfig {
        steps,
        batch_size: 4,
        grad_accum: 1,
        lr: 3e-3,
        min_lr: 3e-4,
        warmup: 2,
        eval_interval: 4,
        eval_iters: 2,
        ..TrainConfig::default()
    }
}

fn opts(out: &Path, stop_at: Option<usize>) -> RunOptions {
    RunOptions {
        out_dir: out.to_path_buf(),
        device: Device::Cpu,
        stop_at,
        verbose: false,
    }
}

fn scratch(dropout: f64) -> Init {
    Init::Scratch {
        model: tiny_model(dropout),
        tokenizer: TokenizerKind::Char,
        weights: None,
    }
}

fn weights(dir: &Path) -> Vec<(String, Vec<f32>)> {
    let l = checkpoint::load(dir, &Device::Cpu).unwrap();
    l.model
        .params()
        .into_iter()
        .map(|(n, t)| (n, t.to_vec::<f32>().unwrap()))
        .collect()
}

/// Every loss-like number of a run, in order (throughput and timing excluded).
fn losses(dir: &Path) -> Vec<(usize, Vec<u64>)> {
    metrics::read(&dir.join(metrics::FILE))
        .unwrap()
        .into_iter()
        .map(|r| match r {
            metrics::Record::Train {
                step,
                loss,
                lr,
                grad_norm,
            } => (step, vec![loss.to_bits(), lr.to_bits(), grad_norm.to_bits()]),
            metrics::Record::Eval {
                step,
                train_loss,
                val_loss,
                ..
            } => (step, vec![train_loss.to_bits(), val_loss.to_bits()]),
        })
        .collect()
}

#[test]
fn resume_reproduces_the_uninterrupted_run_bit_for_bit() {
    let root = temp_dir("resume");
    let data = vec![write_corpus(&root)];
    // in f32 and in bf16 mixed precision (the compute dtype is saved with the run and kept)
    for dtype in [DType::F32, DType::BF16] {
        // dropout and gradient accumulation on, so every generator and the optimizer state matter
        let mut cfg = tiny_train(10);
        cfg.grad_accum = 2;
        cfg.dtype = dtype;
        let (full, split) = (root.join(format!("full-{dtype}")), root.join(format!("split-{dtype}")));
        let a = train::train(scratch(0.1), &data, cfg.clone(), &opts(&full, None)).unwrap();
        assert_eq!(a.step, 10);

        let b1 = train::train(scratch(0.1), &data, cfg.clone(), &opts(&split, Some(6))).unwrap();
        assert_eq!(b1.step, 6);
        let b2 = train::resume(&opts(&split, None), |_| {}).unwrap();
        assert_eq!((b2.step, b2.model.dtype()), (10, dtype));

        let (la, lb) = (losses(&full), losses(&split));
        // 10 steps and evaluations at 0, 4, 8, 10 in the full run; the split run also evaluated
        // (and checkpointed) where it stopped, at 6
        let lb_without_stop: Vec<_> = lb
            .iter()
            .filter(|(step, v)| !(*step == 6 && v.len() == 2))
            .cloned()
            .collect();
        assert_eq!(la.len(), 10 + 4, "{la:?}");
        assert_eq!(
            la, lb_without_stop,
            "{dtype}: resumed run diverged from the uninterrupted one"
        );
        assert_eq!(weights(&full), weights(&split));
        assert_eq!(a.val_loss.map(f64::to_bits), b2.val_loss.map(f64::to_bits));
    }
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn training_lowers_the_loss_and_writes_its_files() {
    let root = temp_dir("learn");
    let data = vec![write_corpus(&root)];
    let out = root.join("run");
    let mut cfg = tiny_train(40);
    cfg.eval_interval = 20;
    cfg.lr = 1e-2;
    let o = train::train(scratch(0.0), &data, cfg, &opts(&out, None)).unwrap();
    let evals: Vec<f64> = metrics::read(&out.join(metrics::FILE))
        .unwrap()
        .into_iter()
        .filter_map(|r| match r {
            metrics::Record::Eval { val_loss, .. } => Some(val_loss),
            _ => None,
        })
        .collect();
    assert_eq!(evals.len(), 3);
    assert!(evals[2] < evals[0] - 0.5, "val loss did not fall: {evals:?}");
    assert_eq!(o.val_loss, Some(evals[2]));
    for f in [train::PLOT, train::TOKEN_CACHE, metrics::FILE] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let svg = std::fs::read_to_string(out.join(train::PLOT)).unwrap();
    assert!(svg.contains("<polyline") && svg.contains("val (eval)"));
    let ck = out.join(checkpoint::DIR);
    for f in [
        checkpoint::MODEL,
        checkpoint::OPTIMIZER,
        checkpoint::CONFIG,
        checkpoint::TOKENIZER,
        checkpoint::STATE,
    ] {
        assert!(ck.join(f).is_file(), "{f} missing");
    }
    let (cfg, tok, state) = checkpoint::read_meta(&ck).unwrap();
    assert_eq!(state.step, 40);
    assert_eq!(cfg.vocab_size, tok.vocab_size());
    assert!(!out.join("checkpoint.tmp").exists() && !out.join("checkpoint.old").exists());
    // a new run may not overwrite it
    let err = train::train(scratch(0.0), &data, tiny_train(2), &opts(&out, None))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("--resume"), "{err}");
    std::fs::remove_dir_all(&root).unwrap();
}

/// A finished 4-step run in `<temp>/run`, with its weights and metrics as they were.
struct FinishedRun {
    root: PathBuf,
    data: Vec<PathBuf>,
    out: PathBuf,
    weights: Vec<(String, Vec<f32>)>,
    metrics: String,
}

impl FinishedRun {
    fn new(name: &str) -> FinishedRun {
        let root = temp_dir(name);
        let data = vec![write_corpus(&root)];
        let out = root.join("run");
        train::train(scratch(0.0), &data, tiny_train(4), &opts(&out, None)).unwrap();
        FinishedRun {
            weights: weights(&out),
            metrics: std::fs::read_to_string(out.join(metrics::FILE)).unwrap(),
            root,
            data,
            out,
        }
    }

    /// After the run was continued and stopped on a non-finite loss: its checkpoint is still
    /// the one of step 4, with the weights it had, and the metrics written before are intact.
    fn assert_checkpoint_kept(&self) {
        let (_, _, state) = checkpoint::read_meta(&checkpoint::find(&self.out).unwrap()).unwrap();
        assert_eq!(state.step, 4);
        assert_eq!(weights(&self.out), self.weights, "the good checkpoint was overwritten");
        let metrics_after = std::fs::read_to_string(self.out.join(metrics::FILE)).unwrap();
        assert!(metrics_after.starts_with(&self.metrics));
    }
}

#[test]
fn divergence_stops_with_a_clear_error_and_keeps_the_last_good_checkpoint() {
    let run = FinishedRun::new("nan");
    let (root, data) = (&run.root, &run.data);
    let err = train::resume(&opts(&run.out, None), |c| {
        c.steps = 12;
        c.lr = 1e38;
        c.warmup = 0;
    })
    .err()
    .expect("a learning rate of 1e38 must diverge")
    .to_string();
    assert!(err.contains("diverged at step"), "{err}");
    assert!(err.contains("last good checkpoint (step 4)"), "{err}");
    // the records of the steps before the divergence are kept, the failed ones were never written
    run.assert_checkpoint_kept();

    // diverging before any checkpoint says so
    let err = train::train(
        scratch(0.0),
        data,
        TrainConfig {
            lr: 1e38,
            warmup: 0,
            ..tiny_train(4)
        },
        &opts(&root.join("fresh"), None),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("No checkpoint had been written yet"), "{err}");
    std::fs::remove_dir_all(root).unwrap();
}

#[test]
fn a_non_finite_evaluation_loss_stops_the_run_and_keeps_the_last_good_checkpoint() {
    let run = FinishedRun::new("evalnan");
    let (root, data, out) = (&run.root, &run.data, &run.out);
    // Step 5's loss comes from the good step-4 weights, so it is finite; its update at a
    // learning rate of 1e38 is what breaks the weights. Step 5 is the last, so the evaluation
    // there sees them before any training step could: the training-loss check never fires.
    let err = train::resume(&opts(out, None), |c| {
        c.steps = 5;
        c.lr = 1e38;
        c.min_lr = 1e38;
        c.warmup = 0;
    })
    .err()
    .expect("weights updated at a learning rate of 1e38 cannot evaluate to a finite loss")
    .to_string();
    assert!(err.contains("diverged at step 5: the evaluation loss"), "{err}");
    assert!(err.contains("learning rate 1e38"), "{err}");
    assert!(err.contains("last good checkpoint (step 4)"), "{err}");
    run.assert_checkpoint_kept();
    // step 5's training record (finite) was written before the evaluation; nothing after it
    let records = metrics::read(&out.join(metrics::FILE)).unwrap();
    match records.last() {
        Some(metrics::Record::Train { step: 5, loss, .. }) => assert!(loss.is_finite(), "{loss}"),
        other => panic!("the last record should be step 5's training loss, not {other:?}"),
    }

    // Weights that are not finite from the start stop a new run at its step-0 evaluation,
    // before any checkpoint: here a fine-tuning start with one position embedding NaN.
    let mut loaded = checkpoint::load(out, &Device::Cpu).unwrap();
    let wpe = &loaded.model.wpe.weight;
    let mut w = wpe.to_vec::<f32>().unwrap();
    w[0] = f32::NAN;
    loaded.model.wpe.weight = kiln::Tensor::from_vec(w, wpe.shape(), &Device::Cpu)
        .unwrap()
        .requires_grad();
    let init = Init::From {
        model: Box::new(loaded.model),
        tokenizer: loaded.tokenizer,
        source: "a model with a NaN weight".into(),
    };
    let fresh = root.join("fresh");
    let err = train::train(init, data, tiny_train(4), &opts(&fresh, None))
        .err()
        .expect("a NaN weight must stop the run")
        .to_string();
    assert!(
        err.contains("diverged at step 0: the evaluation losses are NaN (train split) and NaN (val split)"),
        "{err}"
    );
    assert!(err.contains("starting weights"), "{err}");
    assert!(
        err.contains("No checkpoint had been written yet") && !err.contains("--lr"),
        "{err}"
    );
    assert!(checkpoint::find(&fresh).is_err());
    assert!(metrics::read(&fresh.join(metrics::FILE)).unwrap().is_empty());
    std::fs::remove_dir_all(root).unwrap();
}

#[test]
fn gradient_accumulation_matches_one_big_batch() {
    let root = temp_dir("accum");
    let data = vec![write_corpus(&root)];
    let big = TrainConfig {
        batch_size: 8,
        ..tiny_train(3)
    };
    let accum = TrainConfig {
        batch_size: 4,
        grad_accum: 2,
        ..tiny_train(3)
    };
    train::train(scratch(0.0), &data, big, &opts(&root.join("big"), None)).unwrap();
    train::train(scratch(0.0), &data, accum, &opts(&root.join("acc"), None)).unwrap();
    // the training records (evaluations use batches of batch_size, which differ here)
    let train_only = |v: Vec<(usize, Vec<u64>)>| v.into_iter().filter(|(_, x)| x.len() == 3).collect::<Vec<_>>();
    let (a, b) = (
        train_only(losses(&root.join("big"))),
        train_only(losses(&root.join("acc"))),
    );
    assert_eq!(a.len(), 3);
    assert_eq!(a.len(), b.len());
    for ((sa, va), (sb, vb)) in a.iter().zip(&b) {
        assert_eq!(sa, sb);
        for (x, y) in va.iter().zip(vb) {
            let (x, y) = (f64::from_bits(*x), f64::from_bits(*y));
            assert!((x - y).abs() <= 1e-4 * x.abs().max(1.0), "step {sa}: {x} vs {y}");
        }
    }
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn bad_checkpoints_are_clear_errors_and_nothing_is_lost() {
    let root = temp_dir("badckpt");
    let data = vec![write_corpus(&root)];
    let out = root.join("run");
    train::train(scratch(0.0), &data, tiny_train(4), &opts(&out, None)).unwrap();
    let ck = out.join(checkpoint::DIR);

    // a checkpoint from another config: the mismatched tensors are listed with their shapes
    let cfg_path = ck.join(checkpoint::CONFIG);
    let good_cfg = std::fs::read_to_string(&cfg_path).unwrap();
    std::fs::write(&cfg_path, good_cfg.replace("\"n_embd\": 16", "\"n_embd\": 32")).unwrap();
    let err = checkpoint::load(&out, &Device::Cpu).err().unwrap().to_string();
    assert!(
        err.contains("shape mismatch") && err.contains("transformer.wte.weight"),
        "{err}"
    );
    assert!(err.contains(", 16]") && err.contains(", 32]"), "{err}");
    std::fs::write(&cfg_path, &good_cfg).unwrap();

    // a truncated safetensors file: its checksum, recorded in state.json, no longer matches
    let model_path = ck.join(checkpoint::MODEL);
    let good = std::fs::read(&model_path).unwrap();
    std::fs::write(&model_path, &good[..good.len() / 2]).unwrap();
    let err = checkpoint::load(&out, &Device::Cpu).err().unwrap().to_string();
    assert!(err.contains("model.safetensors is damaged: its checksum is"), "{err}");
    let err = train::resume(&opts(&out, None), |_| {}).err().unwrap().to_string();
    assert!(err.contains("model.safetensors is damaged"), "{err}");
    // and without a recorded checksum (a checkpoint from before kiln kept them), the parser
    // names the file
    let state_path = ck.join(checkpoint::STATE);
    let good_state = std::fs::read_to_string(&state_path).unwrap();
    let mut state: checkpoint::TrainState = serde_json::from_str(&good_state).unwrap();
    state.checksums.clear();
    std::fs::write(&state_path, serde_json::to_string(&state).unwrap()).unwrap();
    let err = checkpoint::load(&out, &Device::Cpu).err().unwrap().to_string();
    assert!(
        err.contains("model.safetensors") && err.contains("truncated or corrupt"),
        "{err}"
    );
    std::fs::write(&state_path, &good_state).unwrap();
    // garbage
    std::fs::write(&model_path, b"definitely not safetensors").unwrap();
    assert!(checkpoint::load(&out, &Device::Cpu).is_err());
    std::fs::write(&model_path, &good).unwrap();
    assert!(checkpoint::load(&out, &Device::Cpu).is_ok());

    // a corrupt optimizer state stops a resume, not a generation
    let opt_path = ck.join(checkpoint::OPTIMIZER);
    let good_opt = std::fs::read(&opt_path).unwrap();
    std::fs::write(&opt_path, &good_opt[..100]).unwrap();
    let err = train::resume(&opts(&out, None), |_| {}).err().unwrap().to_string();
    assert!(err.contains("optimizer.safetensors"), "{err}");
    assert!(checkpoint::load(&out, &Device::Cpu).is_ok());
    std::fs::write(&opt_path, &good_opt).unwrap();

    // nothing there
    let err = checkpoint::load(&root.join("nothing"), &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("no checkpoint") && err.contains("does not exist"), "{err}");
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn a_crash_during_the_checkpoint_swap_leaves_a_usable_checkpoint() {
    let root = temp_dir("swap");
    let data = vec![write_corpus(&root)];
    let out = root.join("run");
    train::train(scratch(0.0), &data, tiny_train(4), &opts(&out, None)).unwrap();
    let w = weights(&out);
    // as if the process died after `checkpoint → checkpoint.old` and while writing checkpoint.tmp
    std::fs::rename(out.join("checkpoint"), out.join("checkpoint.old")).unwrap();
    std::fs::create_dir_all(out.join("checkpoint.tmp")).unwrap();
    std::fs::write(out.join("checkpoint.tmp").join(checkpoint::MODEL), b"half").unwrap();
    assert_eq!(checkpoint::find(&out).unwrap(), out.join("checkpoint.old"));
    assert_eq!(weights(&out), w);
    // resuming finishes the run and cleans up
    let o = train::resume(&opts(&out, None), |c| c.steps = 6).unwrap();
    assert_eq!(o.step, 6);
    assert!(out.join("checkpoint").join(checkpoint::STATE).is_file());
    assert!(!out.join("checkpoint.old").exists() && !out.join("checkpoint.tmp").exists());
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn resume_refuses_changed_training_text() {
    let root = temp_dir("changed");
    let data = vec![write_corpus(&root)];
    let out = root.join("run");
    train::train(scratch(0.0), &data, tiny_train(4), &opts(&out, None)).unwrap();
    // with the token cache the run continues even if the source file changes or goes away
    std::fs::remove_file(&data[0]).unwrap();
    assert!(train::resume(&opts(&out, None), |c| c.steps = 5).is_ok());
    // without it, changed text is refused
    std::fs::remove_file(out.join(train::TOKEN_CACHE)).unwrap();
    std::fs::write(&data[0], "different text entirely ".repeat(100)).unwrap();
    let err = train::resume(&opts(&out, None), |c| c.steps = 6)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("changed since the checkpoint"), "{err}");
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn numbers_in_metrics_and_state_read_back_bit_for_bit() {
    // a resumed run rereads its learning rates and the losses from JSON: a parser that is
    // off by one ulp would break the exact resume
    let mut rng = kiln::Rng::new(5);
    for _ in 0..20_000 {
        let x = f64::from_bits(rng.next_u64() >> 2) * 1e-3;
        let back: f64 = serde_json::from_str(&serde_json::to_string(&x).unwrap()).unwrap();
        assert_eq!(back.to_bits(), x.to_bits(), "{x:e}");
    }
    let cfg = TrainConfig {
        lr: 3e-4,
        min_lr: 3e-4 / 10.0,
        beta2: 1.0 - 1.0 / 3.0,
        ..TrainConfig::default()
    };
    let back: TrainConfig = serde_json::from_str(&serde_json::to_string(&cfg).unwrap()).unwrap();
    assert_eq!(back, cfg);
}

/// Rank 0 of 2 whose other rank adds half of each value to every sum (a function of the value,
/// so the buckets' layout does not matter), summing where the data lies when `on_device` (as
/// NCCL does on CUDA ranks) or in host vectors (as MPI does); it counts the non-blocking and the
/// blocking gradient all-reduces.
struct HalfOther {
    on_device: bool,
    started: std::cell::Cell<usize>,
    blocking: std::cell::Cell<usize>,
}

impl HalfOther {
    fn new(on_device: bool) -> std::rc::Rc<HalfOther> {
        std::rc::Rc::new(HalfOther {
            on_device,
            started: Default::default(),
            blocking: Default::default(),
        })
    }
}

/// A device sum already complete when started (the fake has no stream to run it on).
struct Done(kiln::Tensor);

impl InFlight<kiln::Tensor> for Done {
    fn test(&mut self) -> kiln::Result<bool> {
        Ok(true)
    }
    fn wait(self: Box<Self>) -> kiln::Result<kiln::Tensor> {
        Ok(self.0)
    }
}

fn plus_half(bucket: &kiln::Tensor) -> kiln::Result<kiln::Tensor> {
    let mut v = bucket.to_vec::<f32>()?;
    v.iter_mut().for_each(|x| *x += 0.5 * *x);
    kiln::Tensor::from_vec(v, bucket.shape(), bucket.device())
}

impl Collective for HalfOther {
    fn rank(&self) -> usize {
        0
    }
    fn world(&self) -> usize {
        2
    }
    fn all_reduce_sum_f32(&self, buf: &mut [f32]) -> kiln::Result<()> {
        self.blocking.set(self.blocking.get() + 1);
        buf.iter_mut().for_each(|x| *x += 0.5 * *x);
        Ok(())
    }
    fn all_reduce_sum_f64(&self, buf: &mut [f64]) -> kiln::Result<()> {
        // the losses and presence counts: the other rank's are this rank's
        buf.iter_mut().for_each(|v| *v *= 2.0);
        Ok(())
    }
    fn all_reduce_max_u64(&self, _: &mut [u64]) -> kiln::Result<()> {
        Ok(())
    }
    fn reduce_scatter_sum_f32(&self, _: &[f32], _: &mut [f32]) -> kiln::Result<()> {
        unreachable!("no ZeRO here")
    }
    fn all_gather_f32(&self, _: &[f32], _: &mut [f32]) -> kiln::Result<()> {
        unreachable!("no ZeRO here")
    }
    fn reduces_on_device(&self) -> bool {
        self.on_device
    }
    fn all_reduce_sum_tensor(&self, bucket: &kiln::Tensor) -> kiln::Result<kiln::Tensor> {
        self.blocking.set(self.blocking.get() + 1);
        plus_half(bucket)
    }
    fn start_all_reduce_sum_tensor(&self, bucket: &kiln::Tensor) -> kiln::Result<Box<dyn InFlight<kiln::Tensor>>> {
        self.started.set(self.started.get() + 1);
        Ok(Box::new(Done(plus_half(bucket)?)))
    }
}

/// Two "ranks" on Emu whose collective sums on the device (what NCCL does on CUDA ranks): the
/// training loop overlaps the device buckets' all-reduces with the backward (non-blocking
/// starts, no blocking device all-reduce), and trains bit for bit as with the all-reduce after
/// the backward (`with_overlap(false)`: src/train/device_buckets.rs) and as with host buckets,
/// with and without gradient accumulation.
#[test]
fn overlapped_device_buckets_train_as_the_reduction_after_the_backward() {
    let root = temp_dir("device-overlap");
    let data = vec![write_corpus(&root)];
    for accum in [1, 2] {
        let cfg = TrainConfig {
            grad_accum: accum,
            ..tiny_train(3)
        };
        let run = |name: &str, fake: &std::rc::Rc<HalfOther>, overlap: bool| {
            let dir = root.join(format!("{name}-{accum}"));
            let ranks = DataParallel::new(fake.clone())
                .with_bucket_floats(500)
                .unwrap()
                .with_overlap(overlap);
            let o = RunOptions {
                device: Device::Emu,
                ..opts(&dir, None)
            };
            train::train_data_parallel(&ranks, scratch(0.0), &data, cfg.clone(), &o).unwrap();
            dir
        };
        let (overlapped, after, host) = (HalfOther::new(true), HalfOther::new(true), HalfOther::new(false));
        let a = run("overlapped", &overlapped, true);
        let b = run("after", &after, false);
        let c = run("host", &host, true);
        // the tiny model's ~3.6k values in buckets of 500: several per step, all non-blocking
        assert!(overlapped.started.get() >= 3 * 3, "{}", overlapped.started.get());
        assert_eq!(overlapped.blocking.get(), 0);
        assert_eq!(after.started.get(), 0);
        assert!(after.blocking.get() >= 3 * 3, "{}", after.blocking.get());
        assert_eq!(losses(&a), losses(&b), "grad_accum {accum}");
        assert_eq!(losses(&a), losses(&c), "grad_accum {accum}");
        assert_eq!(weights(&a), weights(&b));
        assert_eq!(weights(&a), weights(&c));
    }
    std::fs::remove_dir_all(&root).unwrap();
}
