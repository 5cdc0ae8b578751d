//! `kiln finetune --gguf` end to end on the binary, with the tiny chat Llama of
//! tests/fixtures/llama-chat and a small JSONL chat file written here: the loss over the data
//! (computed here in f64 from the logits, assistant tokens only) falls, the adapter folder loads
//! with `Llama::load_adapter` and changes the logits, `kiln chat --lora` uses it, and a bad line
//! is refused naming its file and line; a run stopped and resumed computes the losses of an
//! uninterrupted one bit for bit and evaluates a held-out split; flags that would be ignored
//! (the adapter's shape with --from or --resume) are refused naming both flags. `--base-dtype q`
//! (quantized base, on SmolLM2) and `bf16` train as `f32` does, and a resumed run keeps its base.

use kiln::model::Llama;
use kiln::tokenizer::Tokenizer;
use kiln::train::lora::{pack_windows, read_examples, IGNORE};
use kiln::train::metrics::{self, Record};
use kiln::{Device, Tensor};
use std::path::Path;

#[path = "common/cli.rs"]
mod cli;
use cli::{kiln, temp_dir, text};

#[path = "common/smollm2.rs"]
mod smollm2;

const MODEL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/llama-chat/model.gguf");
const BLOCK: usize = 32;

/// A chat file that teaches one distinctive answer style.
fn write_chats(dir: &Path) -> std::path::PathBuf {
    let pairs = [
        ("what colour is the sky?", "Green, always green."),
        ("how are you?", "Green, always green."),
        ("what is two plus two?", "Green, always green."),
        ("name a fruit", "Green, always green."),
        ("who wrote this?", "Green, always green."),
        ("tell me a joke", "Green, always green."),
    ];
    let mut text = String::new();
    for (q, a) in pairs {
        text.push_str(&format!(
            "{{\"messages\": [{{\"role\": \"user\", \"content\": \"{q}\"}}, {{\"role\": \"assistant\", \"content\": \"{a}\"}}]}}\n"
        ));
    }
    let p = dir.join("chats.jsonl");
    std::fs::write(&p, text).unwrap();
    p
}

/// The mean cross-entropy over every trained target of `windows`, in f64 from the logits.
fn masked_loss(model: &Llama, windows: &[(Vec<u32>, Vec<u32>)]) -> f64 {
    let v = model.config().vocab_size;
    let (mut sum, mut n) = (0.0f64, 0usize);
    for (ids, targets) in windows {
        let x = Tensor::from_vec(ids.clone(), &[1, ids.len()], &Device::Cpu).unwrap();
        let logits = model.forward(&x).unwrap().to_vec::<f32>().unwrap();
        for (t, &target) in targets.iter().enumerate() {
            if target == IGNORE {
                continue;
            }
            let row = &logits[t * v..(t + 1) * v];
            let max = row.iter().fold(f64::NEG_INFINITY, |m, &z| m.max(z as f64));
            let lse = max + row.iter().map(|&z| (z as f64 - max).exp()).sum::<f64>().ln();
            sum += lse - row[target as usize] as f64;
            n += 1;
        }
    }
    assert!(n > 0);
    sum / n as f64
}

#[test]
fn finetune_gguf_trains_an_adapter_that_chat_uses() {
    let dir = temp_dir("finetune-lora");
    let data = write_chats(&dir);
    let out = dir.join("run");
    let o = kiln(&[
        "finetune",
        "--gguf",
        MODEL,
        "--data",
        data.to_str().unwrap(),
        "--lora-rank",
        "4",
        "--lora-alpha",
        "8",
        "--lora-targets",
        "q_proj,v_proj,o_proj",
        "--steps",
        "20",
        "--lr",
        "1e-2",
        "--batch-size",
        "4",
        "--block-size",
        &BLOCK.to_string(),
        "--seed",
        "7",
        "--out",
        out.to_str().unwrap(),
    ]);
    let (stdout, err) = text(&o);
    assert!(o.status.success(), "{stdout}\n{err}");
    assert!(stdout.contains("step 20/20"), "{stdout}");
    // one train record per step, finite losses; evaluations at 0 and after the last step
    // (--eval-interval is 50 by default)
    let records = metrics::read(&out.join(metrics::FILE)).unwrap();
    assert_eq!(records.len(), 22);
    let train: Vec<&Record> = records.iter().filter(|r| matches!(r, Record::Train { .. })).collect();
    assert_eq!(train.len(), 20);
    for (i, r) in train.iter().enumerate() {
        match r {
            Record::Train { step, loss, .. } => assert!(*step == i + 1 && loss.is_finite(), "{r:?}"),
            other => panic!("unexpected record {other:?}"),
        }
    }
    let evals: Vec<(usize, f64, f64)> = records
        .iter()
        .filter_map(|r| match *r {
            Record::Eval {
                step,
                train_loss,
                val_loss,
                ..
            } => Some((step, train_loss, val_loss)),
            _ => None,
        })
        .collect();
    assert_eq!(evals.iter().map(|e| e.0).collect::<Vec<_>>(), [0, 20]);
    assert!(evals.iter().all(|e| e.1.is_finite() && e.2.is_finite()), "{evals:?}");
    assert!(evals[1].1 < evals[0].1, "the training split's loss falls: {evals:?}");
    assert!(out.join("checkpoint").join("state.json").is_file());
    assert!(out.join("loss.svg").is_file());
    // the adapter: a PEFT folder that loads and lowers the loss over the data
    let adapter = out.join("adapter");
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(adapter.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(config["r"], 4);
    assert!(!out.join("adapter.tmp").exists() && !out.join("adapter.old").exists());
    let base = Llama::from_gguf(MODEL, &Device::Cpu).unwrap();
    let tok = Tokenizer::from_gguf(MODEL).unwrap();
    let windows = pack_windows(&read_examples(&data, &tok).unwrap(), BLOCK);
    let mut tuned = base.clone();
    tuned.load_adapter(&adapter).unwrap();
    let (before, after) = (masked_loss(&base, &windows), masked_loss(&tuned, &windows));
    eprintln!("masked loss over the data: base {before:.4}, fine-tuned {after:.4}");
    assert!(after < 0.8 * before, "the loss fell from {before} to {after} only");
    // chat with the adapter runs
    let o = kiln(&[
        "chat",
        "--gguf",
        MODEL,
        "--lora",
        adapter.to_str().unwrap(),
        "--prompt",
        "how are you?",
        "--temperature",
        "0",
        "--max-new-tokens",
        "8",
    ]);
    let (answer, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(!answer.trim().is_empty(), "{err}");
}

#[test]
fn a_bad_chat_line_is_refused_by_file_and_line() {
    let dir = temp_dir("finetune-lora-bad");
    let data = dir.join("bad.jsonl");
    std::fs::write(
        &data,
        "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}, {\"role\": \"assistant\", \"content\": \"yo\"}]}\n{\"messages\": [\n",
    )
    .unwrap();
    let o = kiln(&[
        "finetune",
        "--gguf",
        MODEL,
        "--data",
        data.to_str().unwrap(),
        "--out",
        dir.join("run").to_str().unwrap(),
    ]);
    let (_, err) = text(&o);
    assert!(!o.status.success());
    assert!(err.contains("bad.jsonl:2"), "{err}");
    assert!(!dir.join("run").join("adapter").exists());
    // --from and --gguf together are a command-line error
    let o = kiln(&["finetune", "--gguf", MODEL, "--from", "x", "--data", "y"]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn a_loss_that_is_not_finite_stops_the_run_keeping_the_last_adapter() {
    let dir = temp_dir("finetune-lora-nan");
    let data = write_chats(&dir);
    let out = dir.join("run");
    // one good step, adapter and checkpoint written
    let mut args = short_run(&data, &out);
    args.extend(["--stop-at", "1"].map(String::from));
    run_ok(&args);
    let saved = std::fs::read(out.join("adapter").join("adapter_model.safetensors")).unwrap();
    // resumed with a learning rate that sends the adapters to 1e30 in a step: B·A overflows
    let o = kiln(&[
        "finetune",
        "--resume",
        "--out",
        out.to_str().unwrap(),
        "--lr",
        "1e30",
        "--min-lr",
        "0",
        "--eval-interval",
        "1",
    ]);
    let (stdout, err) = text(&o);
    assert!(!o.status.success(), "{stdout}\n{err}");
    assert!(
        err.contains("stopped") && err.contains("the last adapter written"),
        "{err}"
    );
    // nothing was saved after the good step: the adapter is step 1's, the checkpoint too
    assert_eq!(
        std::fs::read(out.join("adapter").join("adapter_model.safetensors")).unwrap(),
        saved
    );
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("checkpoint").join("state.json")).unwrap()).unwrap();
    assert_eq!(state["step"], 1);
    let mut model = Llama::from_gguf(MODEL, &Device::Cpu).unwrap();
    model.load_adapter(out.join("adapter")).unwrap();
}

/// The flags of a short run on the chat data of `dir` into `out`, with dropout on (its masks must
/// be replayed exactly too).
fn short_run(data: &Path, out: &Path) -> Vec<String> {
    [
        "finetune",
        "--gguf",
        MODEL,
        "--data",
        data.to_str().unwrap(),
        "--lora-rank",
        "2",
        "--lora-dropout",
        "0.1",
        "--lora-targets",
        "q_proj,k_proj,down_proj",
        "--steps",
        "6",
        "--eval-interval",
        "3",
        "--eval-iters",
        "2",
        "--lr",
        "1e-2",
        "--batch-size",
        "2",
        "--block-size",
        "16",
        "--seed",
        "11",
        "--out",
        out.to_str().unwrap(),
    ]
    .map(String::from)
    .to_vec()
}

fn run_ok(args: &[String]) -> String {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = kiln(&args);
    let (stdout, err) = text(&o);
    assert!(o.status.success(), "kiln {args:?}\n{stdout}\n{err}");
    stdout
}

/// The train records (step, loss, grad norm) and the eval records (step, train loss, val loss).
type Records = (Vec<(usize, f64, f64)>, Vec<(usize, f64, f64)>);

fn losses(run: &Path) -> Records {
    let mut out: Records = (Vec::new(), Vec::new());
    for r in metrics::read(&run.join(metrics::FILE)).unwrap() {
        match r {
            Record::Train {
                step, loss, grad_norm, ..
            } => out.0.push((step, loss, grad_norm)),
            Record::Eval {
                step,
                train_loss,
                val_loss,
                ..
            } => out.1.push((step, train_loss, val_loss)),
        }
    }
    out
}

#[test]
fn a_stopped_and_resumed_run_computes_the_uninterrupted_losses_bit_for_bit() {
    let dir = temp_dir("finetune-lora-resume");
    let data = write_chats(&dir);
    let (straight, split) = (dir.join("straight"), dir.join("split"));
    run_ok(&short_run(&data, &straight));
    // stopped after step 4, between two evaluations (3 and 6): the checkpoint of step 4 is an
    // extra one, and its evaluation must not shift the batches or masks that follow
    let mut first = short_run(&data, &split);
    first.extend(["--stop-at", "4"].map(String::from));
    run_ok(&first);
    assert_eq!(losses(&split).0.len(), 4);
    let resumed = run_ok(&["finetune", "--resume", "--out", split.to_str().unwrap()].map(String::from));
    assert!(
        resumed.contains("resuming") && resumed.contains("step 6/6"),
        "{resumed}"
    );

    let (a, b) = (losses(&straight), losses(&split));
    assert_eq!(a.0.len(), 6);
    assert_eq!(a.0, b.0, "train losses and gradient norms, bit for bit");
    assert_eq!(a.1.iter().map(|e| e.0).collect::<Vec<_>>(), [0, 3, 6]);
    assert_eq!(b.1.iter().map(|e| e.0).collect::<Vec<_>>(), [0, 3, 4, 6]);
    let common: Vec<_> = b.1.iter().filter(|e| e.0 != 4).copied().collect();
    assert_eq!(a.1, common, "evaluations, bit for bit");
    for (step, train_loss, val_loss) in &a.1 {
        assert!(
            train_loss.is_finite() && val_loss.is_finite() && train_loss != val_loss,
            "step {step}"
        );
    }
    // the same adapter, byte for byte
    let weights = |run: &Path| std::fs::read(run.join("adapter").join("adapter_model.safetensors")).unwrap();
    assert_eq!(weights(&straight), weights(&split));

    // the finished run is at --steps: more steps continue it, a new run in its folder is refused
    let o = kiln(&["finetune", "--resume", "--out", split.to_str().unwrap(), "--steps", "4"]);
    let (_, err) = text(&o);
    assert!(!o.status.success() && err.contains("past --steps 4"), "{err}");
    let o = kiln(&short_run(&data, &split).iter().map(String::as_str).collect::<Vec<_>>());
    let (_, err) = text(&o);
    assert!(!o.status.success() && err.contains("already holds a run"), "{err}");
    // changed data is refused on resume
    std::fs::write(&data, std::fs::read_to_string(&data).unwrap().replace("Green", "Blue")).unwrap();
    let o = kiln(&["finetune", "--resume", "--out", split.to_str().unwrap(), "--steps", "8"]);
    let (_, err) = text(&o);
    assert!(
        !o.status.success() && err.contains("the data") && err.contains("changed"),
        "{err}"
    );
}

/// Flags that shape the adapter or the data would be ignored with --from (a GPT) and --resume (the
/// run keeps its own): they are command-line errors naming both flags.
#[test]
fn lora_flags_with_from_or_resume_are_refused_naming_both() {
    for (args, flags) in [
        (
            vec!["finetune", "--from", "x", "--data", "y", "--lora-rank", "4"],
            ["--lora-rank", "--from"],
        ),
        (
            vec!["finetune", "--from", "x", "--data", "y", "--lora-targets", "q_proj"],
            ["--lora-targets", "--from"],
        ),
        (
            vec!["finetune", "--resume", "--out", "x", "--lora-alpha", "4"],
            ["--lora-alpha", "--resume"],
        ),
        (
            vec!["finetune", "--resume", "--out", "x", "--block-size", "64"],
            ["--block-size", "--resume"],
        ),
        (
            vec!["finetune", "--resume", "--out", "x", "--seed", "3"],
            ["--seed", "--resume"],
        ),
        (
            vec!["finetune", "--gguf", MODEL, "--data", "y", "--dropout", "0.1"],
            ["--dropout", "--gguf"],
        ),
    ] {
        let o = kiln(&args);
        let (_, err) = text(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        for flag in flags {
            assert!(err.contains(flag), "{args:?}: {err}");
        }
    }
}

/// Two steps of `--base-dtype` `base` on `model` into `out`: the train losses.
fn base_dtype_run(model: &Path, data: &Path, out: &Path, base: &str, steps: usize) -> Vec<f64> {
    let args: Vec<String> = [
        "finetune",
        "--gguf",
        model.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--base-dtype",
        base,
        "--lora-rank",
        "2",
        "--lora-targets",
        "q_proj,v_proj,down_proj",
        "--steps",
        &steps.to_string(),
        "--eval-interval",
        "100",
        "--lr",
        "1e-2",
        "--batch-size",
        "1",
        "--block-size",
        "24",
        "--seed",
        "5",
        "--out",
        out.to_str().unwrap(),
    ]
    .map(String::from)
    .to_vec();
    run_ok(&args);
    losses(out).0.iter().map(|r| r.1).collect()
}

/// QLoRA-style training on the real quantized SmolLM2: with its projections kept in Q4_1 blocks
/// the losses are those of the f32 base (every training product has at least 4 rows, so the
/// weights are decoded to f32: equal up to summation order), the run records its base, and a
/// resume loads the same base again. On the tiny fixture (f32 tensors), a bf16 base trains, in
/// bf16, within bf16's rounding of the f32 base.
#[test]
fn base_dtype_q_trains_as_the_f32_base_and_resumes_with_it() {
    let dir = temp_dir("finetune-lora-base-dtype");
    let data = write_chats(&dir);
    let bf16 = base_dtype_run(Path::new(MODEL), &data, &dir.join("tiny-bf16"), "bf16", 2);
    let f32 = base_dtype_run(Path::new(MODEL), &data, &dir.join("tiny-f32"), "f32", 2);
    for (b, f) in bf16.iter().zip(&f32) {
        assert!((b - f).abs() <= 2e-2 * f.abs(), "bf16 base loss {b} against f32 {f}");
    }
    // a bf16 base computes in bf16 (not in f32 with its weights cast back at every step)
    let train_dtype = |run: &str| {
        let state: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join(run).join("checkpoint/state.json")).unwrap())
                .unwrap();
        state["train"]["dtype"].clone()
    };
    assert_eq!(train_dtype("tiny-bf16"), "bf16");
    assert_eq!(train_dtype("tiny-f32"), "f32");
    let Some(smol) = smollm2::path() else { return };
    let q_out = dir.join("smol-q");
    let q = base_dtype_run(&smol, &data, &q_out, "q", 2);
    let f = base_dtype_run(&smol, &data, &dir.join("smol-f32"), "f32", 2);
    assert_eq!(q.len(), 2);
    for (a, b) in q.iter().zip(&f) {
        assert!(
            (a - b).abs() <= 1e-4 * b.abs(),
            "quantized base loss {a} against f32 {b}"
        );
    }
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(q_out.join("checkpoint/state.json")).unwrap()).unwrap();
    assert_eq!(state["run"]["base"], "as_stored", "{state}");
    let resumed: Vec<String> = ["finetune", "--resume", "--steps", "3", "--out", q_out.to_str().unwrap()]
        .map(String::from)
        .to_vec();
    let said = run_ok(&resumed);
    assert_eq!(losses(&q_out).0.len(), 3, "{said}");
}
