//! `kiln finetune --gguf` end to end on the binary, with the tiny chat Llama of
//! tests/fixtures/llama-chat and a small JSONL chat file written here: the loss over the data
//! (computed here in f64 from the logits, assistant tokens only) falls, the adapter folder loads
//! with `Llama::load_adapter` and changes the logits, `kiln chat --lora` uses it, and a bad line
//! is refused naming its file and line.

use kiln::model::Llama;
use kiln::tokenizer::Tokenizer;
use kiln::train::lora::{pack_windows, read_examples, IGNORE};
use kiln::train::metrics::{self, Record};
use kiln::{Device, Tensor};
use std::path::Path;

#[path = "common/cli.rs"]
mod cli;
use cli::{kiln, temp_dir, text};

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
    // one metrics line per step, finite losses
    let records = metrics::read(&out.join(metrics::FILE)).unwrap();
    assert_eq!(records.len(), 20);
    for (i, r) in records.iter().enumerate() {
        match r {
            Record::Train { step, loss, .. } => assert!(*step == i + 1 && loss.is_finite(), "{r:?}"),
            other => panic!("unexpected record {other:?}"),
        }
    }
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
    // a learning rate that sends the adapters to 1e30 after one step: B·A overflows
    let o = kiln(&[
        "finetune",
        "--gguf",
        MODEL,
        "--data",
        data.to_str().unwrap(),
        "--steps",
        "5",
        "--lr",
        "1e30",
        "--eval-interval",
        "1",
        "--block-size",
        &BLOCK.to_string(),
        "--out",
        out.to_str().unwrap(),
    ]);
    let (stdout, err) = text(&o);
    assert!(!o.status.success(), "{stdout}\n{err}");
    assert!(
        err.contains("stopped") && err.contains("the last adapter written"),
        "{err}"
    );
    let mut model = Llama::from_gguf(MODEL, &Device::Cpu).unwrap();
    model.load_adapter(out.join("adapter")).unwrap();
}
