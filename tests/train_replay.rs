//! Replaying a recorded run: `TrainConfig::windows` (a window plan, `kiln train --windows`)
//! and `Init::Scratch { weights }` (`kiln train --init-weights`). The expected losses are
//! computed here from the plan's windows cut out of the token ids by hand, with the model
//! loaded from the same weights file, not by the training loop under test.

use kiln::data::{EvalWindows, WindowPlan};
use kiln::model::{Gpt, GptConfig};
use kiln::tokenizer::{Tokenizer, TokenizerKind};
use kiln::train::{self, checkpoint, metrics, Init, RunOptions, TrainConfig};
use kiln::{Device, Rng, Tensor};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[path = "common/cli.rs"]
mod cli;
use cli::temp_dir;

const TEXT_LINES: usize = 300;

fn corpus_text() -> String {
    (0..TEXT_LINES)
        .map(|i| format!("the {} cat sat on the {} mat.\n", i % 7, (i * 3) % 5))
        .collect()
}

fn model_cfg(vocab_size: usize) -> GptConfig {
    GptConfig {
        vocab_size,
        block_size: 16,
        n_layer: 1,
        n_head: 2,
        n_embd: 16,
        dropout: 0.0,
        bias: false,
    }
}

const BATCH: usize = 3;
const EVAL_ITERS: usize = 2;

fn train_cfg(steps: usize, windows: &Path) -> TrainConfig {
    TrainConfig {
        steps,
        batch_size: BATCH,
        lr: 3e-3,
        min_lr: 3e-4,
        warmup: 2,
        eval_interval: 4,
        eval_iters: EVAL_ITERS,
        windows: Some(windows.to_path_buf()),
        ..TrainConfig::default()
    }
}

/// The corpus's token ids and its nanoGPT split point, ⌊0.9·n⌋ in integers.
fn ids_and_split() -> (Vec<u32>, usize) {
    let text = corpus_text();
    let ids = Tokenizer::for_corpus(TokenizerKind::Char, &text).encode(&text).unwrap();
    let n_train = ids.len() * 9 / 10;
    (ids, n_train)
}

/// Window starts from a little LCG of the test's own (not kiln's generator).
fn starts(state: &mut u64, below: usize, count: usize) -> Vec<usize> {
    (0..count)
        .map(|_| {
            *state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((*state >> 33) as usize) % below
        })
        .collect()
}

/// A plan for `steps` steps with evaluations at `eval_steps`.
fn plan(steps: usize, eval_steps: &[usize]) -> WindowPlan {
    let (ids, n_train) = ids_and_split();
    let (train_below, val_below) = (n_train - 16, ids.len() - n_train - 16);
    let mut s = 42u64;
    let train = (0..steps).map(|_| starts(&mut s, train_below, BATCH)).collect();
    let eval = eval_steps
        .iter()
        .map(|&step| {
            let e = EvalWindows {
                train: (0..EVAL_ITERS).map(|_| starts(&mut s, train_below, BATCH)).collect(),
                val: (0..EVAL_ITERS).map(|_| starts(&mut s, val_below, BATCH)).collect(),
            };
            (step, e)
        })
        .collect::<BTreeMap<_, _>>();
    WindowPlan { train, eval }
}

fn write_json(path: &Path, plan: &WindowPlan) {
    std::fs::write(path, serde_json::to_vec(plan).unwrap()).unwrap();
}

/// Writes the corpus, a plan and initial weights (drawn with seed 99) into `dir`.
fn setup(dir: &Path, steps: usize, eval_steps: &[usize]) -> (PathBuf, PathBuf, PathBuf, WindowPlan) {
    let corpus = dir.join("corpus.txt");
    std::fs::write(&corpus, corpus_text()).unwrap();
    let plan = plan(steps, eval_steps);
    let windows = dir.join("windows.json");
    write_json(&windows, &plan);
    let vocab = Tokenizer::for_corpus(TokenizerKind::Char, &corpus_text()).vocab_size();
    let weights = dir.join("init.safetensors");
    Gpt::new(model_cfg(vocab), &mut Rng::new(99), &Device::Cpu)
        .unwrap()
        .save_safetensors(&weights)
        .unwrap();
    (corpus, windows, weights, plan)
}

fn init(weights: &Path) -> Init {
    Init::Scratch {
        model: model_cfg(0),
        tokenizer: TokenizerKind::Char,
        weights: Some(weights.to_path_buf()),
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

/// Trains from `weights` on `corpus`.
fn run(
    weights: &Path,
    corpus: &Path,
    cfg: TrainConfig,
    out: &Path,
    stop_at: Option<usize>,
) -> kiln::Result<train::Outcome> {
    train::train(init(weights), &[corpus.to_path_buf()], cfg, &opts(out, stop_at))
}

/// The mean loss of `model` over batches of windows of `tokens` starting at `batches`.
fn mean_loss(model: &Gpt, tokens: &[u32], batches: &[Vec<usize>]) -> f64 {
    let losses: Vec<f64> = batches
        .iter()
        .map(|starts| {
            let x: Vec<u32> = starts.iter().flat_map(|&i| tokens[i..i + 16].to_vec()).collect();
            let y: Vec<u32> = starts.iter().flat_map(|&i| tokens[i + 1..i + 17].to_vec()).collect();
            let x = Tensor::from_vec(x, &[starts.len(), 16], &Device::Cpu).unwrap();
            let y = Tensor::from_vec(y, &[starts.len(), 16], &Device::Cpu).unwrap();
            model.loss(&x, &y).unwrap().to_scalar::<f64>().unwrap()
        })
        .collect();
    losses.iter().sum::<f64>() / losses.len() as f64
}

fn eval_at(records: &[metrics::Record], at: usize) -> (f64, f64) {
    records
        .iter()
        .find_map(|r| match *r {
            metrics::Record::Eval {
                step,
                train_loss,
                val_loss,
                ..
            } if step == at => Some((train_loss, val_loss)),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no evaluation at step {at}"))
}

fn train_losses(records: &[metrics::Record]) -> Vec<(usize, u64)> {
    records
        .iter()
        .filter_map(|r| match *r {
            metrics::Record::Train { step, loss, .. } => Some((step, loss.to_bits())),
            _ => None,
        })
        .collect()
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-6 * b.abs()
}

#[test]
fn a_run_takes_its_batches_from_the_plan_and_its_weights_from_the_file() {
    let dir = temp_dir("plan");
    let (corpus, windows, weights, plan) = setup(&dir, 6, &[0, 4, 6]);
    let out = dir.join("run");
    run(&weights, &corpus, train_cfg(6, &windows), &out, None).unwrap();
    let records = metrics::read(&out.join(metrics::FILE)).unwrap();

    let (ids, n_train) = ids_and_split();
    let (train_ids, val_ids) = ids.split_at(n_train);
    let vocab = Tokenizer::for_corpus(TokenizerKind::Char, &corpus_text()).vocab_size();
    let mut start = Gpt::new(model_cfg(vocab), &mut Rng::new(0), &Device::Cpu).unwrap();
    start.load_safetensors(&weights).unwrap();
    // step 0: the plan's evaluation batches on the file's weights
    let (train0, val0) = eval_at(&records, 0);
    let want = (
        mean_loss(&start, train_ids, &plan.eval[&0].train),
        mean_loss(&start, val_ids, &plan.eval[&0].val),
    );
    assert!(
        close(train0, want.0) && close(val0, want.1),
        "{:?} vs {want:?}",
        (train0, val0)
    );
    // step 1's loss is the file's weights on the plan's first training batch
    let step1 = f64::from_bits(train_losses(&records)[0].1);
    let want1 = mean_loss(&start, train_ids, &plan.train[..1]);
    assert!(close(step1, want1), "{step1} vs {want1}");
    // the last evaluation: the trained weights on the plan's batches for step 6
    let trained = checkpoint::load(&out, &Device::Cpu).unwrap().model;
    let (train6, val6) = eval_at(&records, 6);
    assert!(close(train6, mean_loss(&trained, train_ids, &plan.eval[&6].train)));
    assert!(close(val6, mean_loss(&trained, val_ids, &plan.eval[&6].val)));
    assert!(val6 < val0, "training did not lower the val loss: {val0} → {val6}");
    let state = checkpoint::load(&out, &Device::Cpu).unwrap().state;
    assert!(state.init.contains("init.safetensors"), "{}", state.init);

    // the seed no longer draws anything: another seed gives the same run, bit for bit
    let other = dir.join("other-seed");
    let cfg = TrainConfig {
        seed: 7,
        ..train_cfg(6, &windows)
    };
    run(&weights, &corpus, cfg, &other, None).unwrap();
    let again = metrics::read(&other.join(metrics::FILE)).unwrap();
    assert_eq!(train_losses(&again), train_losses(&records));
}

#[test]
fn resume_with_a_plan_reproduces_the_uninterrupted_run_and_notices_a_changed_plan() {
    let dir = temp_dir("resume");
    // the stopped run also evaluates where it stops (step 3)
    let (corpus, windows, weights, plan) = setup(&dir, 6, &[0, 3, 4, 6]);
    let whole = dir.join("whole");
    run(&weights, &corpus, train_cfg(6, &windows), &whole, None).unwrap();
    let parts = dir.join("parts");
    run(&weights, &corpus, train_cfg(6, &windows), &parts, Some(3)).unwrap();
    train::resume(&opts(&parts, None), |_| {}).unwrap();
    let read = |d: &Path| train_losses(&metrics::read(&d.join(metrics::FILE)).unwrap());
    assert_eq!(read(&parts), read(&whole));

    // a plan file that changed since the checkpoint would make the resumed run another run
    let stopped = dir.join("stopped");
    let corpus = dir.join("corpus.txt");
    run(&weights, &corpus, train_cfg(6, &windows), &stopped, Some(3)).unwrap();
    let mut edited = plan;
    edited.train[4][0] += 1;
    write_json(&windows, &edited);
    let err = train::resume(&opts(&stopped, None), |_| {}).err().unwrap().to_string();
    assert!(err.contains("windows.json") && err.contains("changed"), "{err}");
}

#[test]
fn plans_that_do_not_cover_the_run_are_refused_before_it_starts() {
    let dir = temp_dir("bad");
    let (corpus, windows, weights, plan) = setup(&dir, 6, &[0, 4, 6]);
    let (ids, n_train) = ids_and_split();
    let mut cases: Vec<(&str, WindowPlan, &str)> = Vec::new();
    let mut short = plan.clone();
    short.train.truncate(5);
    cases.push(("short", short, "holds 5 training batches, but the run takes 6"));
    let mut narrow = plan.clone();
    narrow.train[2].pop();
    cases.push(("narrow", narrow, "batch 2, has 2 windows, expected --batch-size 3"));
    let mut outside = plan.clone();
    outside.eval.get_mut(&4).unwrap().val[1][0] = ids.len() - n_train - 16;
    cases.push(("outside", outside, "validation split starts at"));
    let mut few = plan.clone();
    few.eval.get_mut(&6).unwrap().train.pop();
    cases.push((
        "few",
        few,
        "evaluation at step 6 (training) holds 1 batches, expected --eval-iters 2",
    ));
    let mut no_eval = plan.clone();
    no_eval.eval.remove(&4);
    cases.push(("no-eval", no_eval, "no evaluation batches for step 4"));
    for (name, bad, want) in cases {
        write_json(&windows, &bad);
        let out = dir.join(name);
        let err = run(&weights, &corpus, train_cfg(6, &windows), &out, None)
            .err()
            .unwrap_or_else(|| panic!("{name}: the bad plan was accepted"))
            .to_string();
        assert!(err.contains(want), "{name}: {err}");
        assert!(checkpoint::find(&out).is_err(), "{name}: a checkpoint was written");
        assert!(
            metrics::read(&out.join(metrics::FILE)).unwrap().is_empty(),
            "{name}: it trained"
        );
    }
    std::fs::write(&windows, r#"{"train": [[1, 2, 3]], "evals": {}}"#).unwrap();
    let err = run(&weights, &corpus, train_cfg(6, &windows), &dir.join("json"), None)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("windows.json") && err.contains("unknown field `evals`"),
        "{err}"
    );
    let missing = dir.join("absent.json");
    let err = run(&weights, &corpus, train_cfg(6, &missing), &dir.join("gone"), None)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("absent.json"), "{err}");
}

#[test]
fn initial_weights_of_another_shape_are_refused_by_name() {
    let dir = temp_dir("shape");
    let (corpus, windows, _, _) = setup(&dir, 6, &[0, 4, 6]);
    let other = dir.join("wide.safetensors");
    let vocab = Tokenizer::for_corpus(TokenizerKind::Char, &corpus_text()).vocab_size();
    let wide = GptConfig {
        n_embd: 32,
        ..model_cfg(vocab)
    };
    Gpt::new(wide, &mut Rng::new(1), &Device::Cpu)
        .unwrap()
        .save_safetensors(&other)
        .unwrap();
    let err = run(&other, &corpus, train_cfg(6, &windows), &dir.join("run"), None)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("wte") && err.contains("32"), "{err}");
}

#[test]
fn the_command_line_replays_and_resume_keeps_the_plan() {
    let dir = temp_dir("cli");
    let (corpus, windows, weights, plan) = setup(&dir, 6, &[0, 4, 6]);
    let out = dir.join("run");
    let kiln = |extra: &[&str]| {
        let mut args = vec!["train", "--out", out.to_str().unwrap(), "--sample-tokens", "0"];
        args.extend_from_slice(extra);
        cli::kiln(&args)
    };
    #[rustfmt::skip]
    let o = kiln(&[
        "--data", corpus.to_str().unwrap(), "--tokenizer", "char",
        "--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "16", "--bias", "false",
        "--dropout", "0", "--batch-size", "3", "--steps", "6", "--eval-interval", "4", "--eval-iters", "2",
        "--init-weights", weights.to_str().unwrap(), "--windows", windows.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    // the command's step-0 evaluation is the file's weights on the plan's batches
    let records = metrics::read(&out.join(metrics::FILE)).unwrap();
    let (ids, n_train) = ids_and_split();
    let vocab = Tokenizer::for_corpus(TokenizerKind::Char, &corpus_text()).vocab_size();
    let mut start = Gpt::new(model_cfg(vocab), &mut Rng::new(0), &Device::Cpu).unwrap();
    start.load_safetensors(&weights).unwrap();
    let (_, val0) = eval_at(&records, 0);
    let want = mean_loss(&start, &ids[n_train..], &plan.eval[&0].val);
    assert!(close(val0, want), "{val0} vs {want}");
    // a resumed run keeps its plan: giving one again is refused by name
    let o = kiln(&["--resume", "--windows", windows.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && stderr.contains("drop --windows"), "{stderr}");
    let o = kiln(&["--resume", "--init-weights", weights.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && stderr.contains("drop --init-weights"),
        "{stderr}"
    );
}
