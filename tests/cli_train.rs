//! The `kiln` binary end to end: train, resume, finetune, generate, and bad input.
//! Tiny models and a handful of steps.

use std::path::Path;
use std::process::Output;

#[path = "common/cli.rs"]
mod cli;
use cli::{kiln, temp_dir, text, write_corpus, TINY};

fn train(out: &Path, data: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["train", "--tokenizer", "char", "--data", data.to_str().unwrap()];
    args.extend_from_slice(&["--out", out.to_str().unwrap()]);
    args.extend_from_slice(TINY);
    args.extend_from_slice(&["--sample-tokens", "20"]);
    args.extend_from_slice(extra);
    kiln(&args)
}

#[test]
fn train_resume_generate_and_finetune() {
    let root = temp_dir("flow");
    let data = write_corpus(&root, "a.txt", "to be or not to be, that is the question.\n");
    let out = root.join("run");
    let o = train(&out, &data, &["--steps", "6", "--stop-at", "3"]);
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("parameters"), "parameter count missing: {stdout}");
    assert!(stdout.contains("val loss"), "{stdout}");
    assert!(stdout.contains("--- sample"), "{stdout}");

    // --resume may change the schedule but not the model
    let o = kiln(&["train", "--resume", "--out", out.to_str().unwrap(), "--n-layer", "3"]);
    let (_, stderr) = text(&o);
    assert!(!o.status.success());
    assert!(stderr.contains("--n-layer") && stderr.contains("--resume"), "{stderr}");
    let o = kiln(&[
        "train",
        "--resume",
        "--out",
        out.to_str().unwrap(),
        "--sample-tokens",
        "0",
    ]);
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("resuming") && stdout.contains("step 6/6"), "{stdout}");

    // generation: same seed, same text; the prompt comes first
    let gen = |seed: &str| {
        let o = kiln(&[
            "generate",
            "--checkpoint",
            out.to_str().unwrap(),
            "--prompt",
            "to be",
            "--max-new-tokens",
            "30",
            "--seed",
            seed,
        ]);
        let (stdout, stderr) = text(&o);
        assert!(o.status.success(), "{stderr}");
        assert!(stderr.contains("parameters"), "{stderr}");
        stdout
    };
    let a = gen("1");
    assert!(a.starts_with("to be"), "{a:?}");
    assert_eq!(a, gen("1"));
    assert_ne!(a, gen("2"));

    // a prompt outside the character vocabulary names the characters
    let o = kiln(&[
        "generate",
        "--checkpoint",
        out.to_str().unwrap(),
        "--prompt",
        "Zebra €5",
    ]);
    let (stdout, stderr) = text(&o);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr.contains("'Z'") && stderr.contains("'€'") && stderr.contains("'5'"),
        "{stderr}"
    );
    assert!(stdout.is_empty(), "{stdout}");

    // fine-tune on new text (within the vocabulary), into its own folder
    let new = write_corpus(&root, "b.txt", "not to be is the question, or is it.\n");
    let ft = root.join("ft");
    let o = kiln(&[
        "finetune",
        "--from",
        out.to_str().unwrap(),
        "--data",
        new.to_str().unwrap(),
        "--out",
        ft.to_str().unwrap(),
        "--steps",
        "3",
        "--batch-size",
        "4",
        "--eval-iters",
        "2",
        "--sample-tokens",
        "0",
    ]);
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("fine-tuning checkpoint"), "{stdout}");
    assert!(ft.join("checkpoint").join("state.json").is_file());
    // the original run is untouched
    assert!(out.join("checkpoint").join("state.json").is_file());

    // fine-tuning on text with characters the model cannot encode
    let alien = write_corpus(&root, "c.txt", "QQQ!\n");
    let o = kiln(&[
        "finetune",
        "--from",
        out.to_str().unwrap(),
        "--data",
        alien.to_str().unwrap(),
        "--out",
        root.join("ft2").to_str().unwrap(),
    ]);
    let (_, stderr) = text(&o);
    assert!(!o.status.success());
    assert!(stderr.contains("'Q'") && stderr.contains("c.txt"), "{stderr}");
    std::fs::remove_dir_all(&root).unwrap();
}

/// The training settings saved in a run's checkpoint (`state.json`'s `train`).
fn saved_settings(out: &Path) -> serde_json::Value {
    let state = std::fs::read_to_string(out.join("checkpoint/state.json")).unwrap();
    serde_json::from_str::<serde_json::Value>(&state).unwrap()["train"].clone()
}

/// The step count of a run's saved AdamW state, and m²/v for every element of every
/// parameter whose second moment is not negligible. After the first step from a fresh
/// optimizer m = (1−β1)·g and v = (1−β2)·g², so every ratio is (1−β1)²/(1−β2) whatever the
/// gradient; moments carried over from an earlier run would mix in older gradients.
fn moment_ratios(out: &Path) -> (f64, Vec<f64>) {
    let (tensors, _) =
        kiln::model::io::load_tensors(&out.join("checkpoint/optimizer.safetensors"), &kiln::Device::Cpu).unwrap();
    let get = |name: &str| {
        let t = &tensors.iter().find(|(n, _)| n == name).unwrap().1;
        t.to_vec::<f64>().unwrap()
    };
    let mut ratios = Vec::new();
    for (name, _) in tensors.iter().filter(|(n, _)| n.ends_with(".exp_avg")) {
        let (m, v) = (get(name), get(&format!("{name}_sq")));
        for (m, v) in m.iter().zip(&v) {
            // below this, v = (1−β2)·g² in f32 has lost bits to underflow
            if *v > 1e-30 {
                ratios.push(m * m / v);
            }
        }
    }
    (get("step")[0], ratios)
}

fn assert_first_step_moments(out: &Path, beta1: f64, beta2: f64) {
    let (step, ratios) = moment_ratios(out);
    assert_eq!(step, 1.0, "the optimizer's step count");
    assert!(ratios.len() > 500, "only {} moments to check", ratios.len());
    let want = (1.0 - beta1) * (1.0 - beta1) / (1.0 - beta2);
    for r in ratios {
        // m and v are f32: a few roundings, each a relative 6e-8
        assert!(
            (r - want).abs() <= 1e-5 * want,
            "m²/v = {r}, want {want} (β1 {beta1}, β2 {beta2})"
        );
    }
}

#[test]
fn finetune_has_its_own_schedule_and_a_fresh_optimizer() {
    let root = temp_dir("ftdefaults");
    let data = write_corpus(&root, "a.txt", "to be or not to be, that is the question.\n");
    let out = root.join("run");
    let o = train(&out, &data, &["--steps", "6"]);
    assert!(o.status.success(), "{:?}", text(&o));
    let (pre_step, _) = moment_ratios(&out);
    assert_eq!(pre_step, 6.0);

    // no optimisation flags: fine-tuning's schedule, not the checkpoint's nor train's; --stop-at 1
    // writes the checkpoint (with the whole run's settings) after one step
    let new = write_corpus(&root, "b.txt", "not to be is the question, or is it.\n");
    let finetune = |name: &str, extra: &[&str]| {
        let ft = root.join(name);
        let mut args = vec![
            "finetune",
            "--from",
            out.to_str().unwrap(),
            "--data",
            new.to_str().unwrap(),
        ];
        args.extend_from_slice(&["--out", ft.to_str().unwrap(), "--stop-at", "1", "--sample-tokens", "0"]);
        args.extend_from_slice(extra);
        let o = kiln(&args);
        assert!(o.status.success(), "{:?}", text(&o));
        ft
    };
    let ft = finetune("ft", &[]);
    let s = saved_settings(&ft);
    assert_eq!((s["steps"].as_u64(), s["lr"].as_f64()), (Some(200), Some(3e-4)), "{s}");
    assert_eq!(
        (s["warmup"].as_u64(), s["eval_interval"].as_u64()),
        (Some(20), Some(50)),
        "{s}"
    );
    let min_lr = s["min_lr"].as_f64().unwrap();
    assert!(
        (min_lr - 3e-4 / 10.0).abs() <= 1e-15,
        "min_lr {min_lr}: not a tenth of the lr 3e-4"
    );
    // the settings finetune shares with train keep train's defaults
    assert_eq!(
        (s["batch_size"].as_u64(), s["eval_iters"].as_u64()),
        (Some(12), Some(20)),
        "{s}"
    );
    // the optimizer starts fresh: one step counted (the checkpoint's was at 6), first-step moments
    assert_first_step_moments(&ft, 0.9, 0.99);

    // with --lr, min_lr follows it; --steps leaves the other fine-tuning defaults alone
    let ft = finetune("ft-lr", &["--lr", "1e-3", "--steps", "40"]);
    let s = saved_settings(&ft);
    assert_eq!((s["lr"].as_f64(), s["steps"].as_u64()), (Some(1e-3), Some(40)), "{s}");
    assert!((s["min_lr"].as_f64().unwrap() - 1e-4).abs() <= 1e-15, "{s}");
    assert_eq!(
        (s["warmup"].as_u64(), s["eval_interval"].as_u64()),
        (Some(20), Some(50)),
        "{s}"
    );
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn optimisation_flags_are_saved_with_the_run_and_reach_the_optimizer() {
    let root = temp_dir("optflags");
    let data = write_corpus(&root, "a.txt", "to be or not to be, that is the question.\n");
    let out = root.join("run");
    let flags = [
        "--steps",
        "1",
        "--lr",
        "2e-3",
        "--warmup",
        "0",
        "--beta1",
        "0.8",
        "--beta2",
        "0.95",
        "--weight-decay",
        "0.05",
        "--grad-clip",
        "0.5",
        "--grad-accum",
        "2",
    ];
    let o = train(&out, &data, &flags);
    assert!(o.status.success(), "{:?}", text(&o));
    let s = saved_settings(&out);
    for (key, want) in [
        ("lr", 2e-3),
        ("beta1", 0.8),
        ("beta2", 0.95),
        ("weight_decay", 0.05),
        ("grad_clip", 0.5),
    ] {
        assert_eq!(s[key].as_f64(), Some(want), "{key}: {s}");
    }
    assert_eq!(
        (s["grad_accum"].as_u64(), s["warmup"].as_u64()),
        (Some(2), Some(0)),
        "{s}"
    );
    // the optimizer ran with these betas: (1−0.8)²/(1−0.95) = 0.8 after its first step
    assert_first_step_moments(&out, 0.8, 0.95);

    // they may change on resume, and the change is saved
    let o = kiln(&[
        "train",
        "--resume",
        "--out",
        out.to_str().unwrap(),
        "--steps",
        "2",
        "--beta1",
        "0.85",
        "--sample-tokens",
        "0",
    ]);
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("beta1 0.8 → 0.85"), "{stdout}");
    assert_eq!(saved_settings(&out)["beta1"].as_f64(), Some(0.85));

    for (flag, value) in [("--beta1", "1"), ("--beta1", "-0.1"), ("--beta2", "1.5")] {
        let arg = format!("{flag}={value}");
        let o = train(&root.join("bad"), &data, &["--steps", "1", &arg]);
        let (_, stderr) = text(&o);
        assert_eq!(o.status.code(), Some(1), "{arg}: {stderr}");
        assert!(
            stderr.contains(&format!("{flag} must be in [0, 1), got {value}")),
            "{arg}: {stderr}"
        );
        assert!(!root.join("bad").exists(), "{arg}: a refused run wrote its folder");
    }
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn generate_takes_the_sampling_options_and_refuses_bad_ones() {
    let root = temp_dir("sampling");
    let data = write_corpus(&root, "a.txt", "to be or not to be, that is the question.\n");
    let out = root.join("run");
    let o = train(&out, &data, &["--steps", "3"]);
    assert!(o.status.success(), "{:?}", text(&o));
    let gen = |extra: &[&str]| {
        let mut args = vec!["generate", "--checkpoint", out.to_str().unwrap(), "--prompt", "to"];
        args.extend_from_slice(&["--max-new-tokens", "40"]);
        args.extend_from_slice(extra);
        let o = kiln(&args);
        let (stdout, stderr) = text(&o);
        assert!(o.status.success(), "{extra:?}: {stderr}");
        stdout
    };
    let all = ["--temperature", "0.7", "--top-k", "5", "--top-p", "0.9", "--seed", "7"];
    let a = gen(&all);
    assert!(a.starts_with("to") && a.len() > 30, "{a:?}");
    assert_eq!(a, gen(&all), "the same seed and options gave different text");
    assert_ne!(
        a,
        gen(&["--temperature", "0.7", "--top-k", "5", "--top-p", "0.9", "--seed", "8"])
    );
    // each option reaches the sampler: temperature 0, top-k 1 and a tiny top-p are all greedy,
    // whatever the seed
    let greedy = gen(&["--temperature", "0", "--seed", "1"]);
    assert_eq!(greedy, gen(&["--temperature", "0", "--seed", "2"]));
    assert_eq!(greedy, gen(&["--top-k", "1", "--seed", "3"]));
    assert_eq!(greedy, gen(&["--top-p", "1e-6", "--seed", "4"]));
    assert_ne!(greedy, gen(&["--seed", "4"]));
    // top-k 0 means every token: the same as a k above the vocabulary (the default 200 here)
    assert_eq!(gen(&["--top-k", "0", "--seed", "5"]), gen(&["--seed", "5"]));

    for (arg, want) in [
        (
            "--temperature=-1",
            "--temperature must be a finite number ≥ 0 (0: greedy), got -1",
        ),
        (
            "--temperature=inf",
            "--temperature must be a finite number ≥ 0 (0: greedy), got inf",
        ),
        ("--top-p=0", "--top-p must be in (0, 1], got 0"),
        ("--top-p=-0.5", "--top-p must be in (0, 1], got -0.5"),
        ("--top-p=1.5", "--top-p must be in (0, 1], got 1.5"),
        ("--top-p=NaN", "--top-p must be in (0, 1], got NaN"),
    ] {
        let o = kiln(&["generate", "--checkpoint", out.to_str().unwrap(), arg]);
        let (stdout, stderr) = text(&o);
        assert_eq!(o.status.code(), Some(1), "{arg}: {stderr}");
        assert!(
            stderr.starts_with("error: generate: ") && stderr.contains(want),
            "{arg}: {stderr}"
        );
        assert!(stdout.is_empty(), "{arg}: {stdout}");
    }
    // a negative k is not a number of tokens: the command line itself is refused
    let o = kiln(&["generate", "--checkpoint", out.to_str().unwrap(), "--top-k=-1"]);
    let (_, stderr) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("'-1'") && stderr.contains("--top-k"), "{stderr}");
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn missing_and_empty_data_are_clear_errors() {
    let root = temp_dir("data");
    let missing = root.join("missing.txt");
    let o = train(&root.join("r1"), &missing, &["--steps", "1"]);
    let (_, stderr) = text(&o);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr.starts_with("error:") && stderr.contains("missing.txt"),
        "{stderr}"
    );

    let empty = root.join("empty.txt");
    std::fs::write(&empty, "").unwrap();
    let o = train(&root.join("r2"), &empty, &["--steps", "1"]);
    let (_, stderr) = text(&o);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr.contains("empty.txt") && stderr.contains("empty"), "{stderr}");

    let short = root.join("short.txt");
    std::fs::write(&short, "too short").unwrap();
    let o = train(&root.join("r3"), &short, &["--steps", "1"]);
    let (_, stderr) = text(&o);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr.contains("--block-size"), "{stderr}");
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn unknown_presets_flags_and_values_are_clear_errors() {
    let o = kiln(&["train", "--preset", "gpt5"]);
    let (_, stderr) = text(&o);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr.contains("gpt5") && stderr.contains("tiny"), "{stderr}");

    let o = kiln(&["train", "--learning-rate", "3"]);
    let (_, stderr) = text(&o);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr.contains("--learning-rate"), "{stderr}");

    let o = kiln(&["train", "--tokenizer", "wordpiece"]);
    let (_, stderr) = text(&o);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr.contains("wordpiece"), "{stderr}");

    let o = kiln(&["train", "--n-head", "3"]);
    let (_, stderr) = text(&o);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr.contains("n_head"), "{stderr}");

    let o = kiln(&["train", "--device", "tpu"]);
    let (_, stderr) = text(&o);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr.contains("tpu"), "{stderr}");

    for args in [
        &["train", "--dtype", "f16"][..],
        &["generate", "--checkpoint", "x", "--dtype", "f16"],
        &["bench", "--gpt-dtype", "f16"],
    ] {
        let o = kiln(args);
        let (_, stderr) = text(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        assert!(
            stderr.contains("'f16'") && stderr.contains("[possible values: f32, bf16]"),
            "{args:?}: {stderr}"
        );
    }

    let o = kiln(&["generate"]);
    assert_eq!(o.status.code(), Some(2));
    let o = kiln(&["generate", "--checkpoint", "/nonexistent/kiln/run"]);
    let (_, stderr) = text(&o);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr.contains("no checkpoint"), "{stderr}");
    let o = kiln(&[]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn a_diverging_run_stops_and_keeps_its_checkpoint() {
    let root = temp_dir("nan");
    let data = write_corpus(&root, "a.txt", "abcabcabd\n");
    let out = root.join("run");
    let o = train(&out, &data, &["--steps", "3"]);
    assert!(o.status.success(), "{:?}", text(&o));
    let model = std::fs::read(out.join("checkpoint/model.safetensors")).unwrap();
    let o = kiln(&[
        "train",
        "--resume",
        "--out",
        out.to_str().unwrap(),
        "--steps",
        "9",
        "--lr",
        "1e38",
        "--warmup",
        "0",
    ]);
    let (_, stderr) = text(&o);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr.contains("diverged") && stderr.contains("last good checkpoint (step 3)"),
        "{stderr}"
    );
    assert_eq!(std::fs::read(out.join("checkpoint/model.safetensors")).unwrap(), model);
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn generate_from_a_hugging_face_folder() {
    let hf = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/gpt2-tiny");
    // the fixture is committed: its absence is a broken checkout, not a reason to skip
    assert!(
        Path::new(hf).join("model.safetensors").is_file(),
        "no fixture at {hf} (scripts/make_gpt2_fixture.py writes it)"
    );
    // the fixture's vocabulary is GPT-2's first 96 ids (printable ASCII)
    let run = || {
        kiln(&[
            "generate",
            "--hf",
            hf,
            "--prompt",
            "!",
            "--max-new-tokens",
            "12",
            "--seed",
            "3",
        ])
    };
    let o = run();
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "{stderr}");
    assert!(stdout.starts_with('!') && stdout.len() > 1, "{stdout:?}");
    assert_eq!(stdout, text(&run()).0);
    // GPT-2 ids the model does not have
    let o = kiln(&["generate", "--hf", hf, "--prompt", "Hello world"]);
    let (_, stderr) = text(&o);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr.contains("outside the model's vocabulary of 96"), "{stderr}");
    // fine-tuning it on ordinary text: GPT-2 ids beyond its 96 are refused up front
    let root = temp_dir("hf");
    let data = write_corpus(&root, "t.txt", "Hello world, hello kiln.\n");
    let o = kiln(&[
        "finetune",
        "--from",
        hf,
        "--data",
        data.to_str().unwrap(),
        "--out",
        root.join("ft").to_str().unwrap(),
    ]);
    let (stdout, stderr) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("fine-tuning Hugging Face model"), "{stdout}");
    assert!(stderr.contains("vocabulary has only 96 ids"), "{stderr}");
    std::fs::remove_dir_all(&root).unwrap();
}

/// The training losses of a run folder's metrics.jsonl.
fn train_losses(out: &Path) -> Vec<f64> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r["kind"] == "train")
        .map(|r| r["loss"].as_f64().unwrap())
        .collect()
}

#[test]
fn train_on_emu_in_f32_and_bf16_tracks_the_cpu() {
    let root = temp_dir("emu");
    let data = write_corpus(&root, "emu.txt", "the emulator runs the kernels. ");
    let run = |name: &str, device: &str, dtype: &str| {
        let out = root.join(name);
        let o = train(&out, &data, &["--device", device, "--dtype", dtype, "--steps", "3"]);
        let (stdout, stderr) = text(&o);
        assert!(o.status.success(), "{name}: {stdout}{stderr}");
        assert!(stdout.contains(&format!("on {device} in {dtype}")), "{name}: {stdout}");
        (out, train_losses(&root.join(name)))
    };
    let (_, cpu) = run("cpu-f32", "cpu", "f32");
    let (_, emu) = run("emu-f32", "emu", "f32");
    let (emu_bf16_dir, emu_bf16) = run("emu-bf16", "emu", "bf16");
    assert_eq!((cpu.len(), emu.len(), emu_bf16.len()), (3, 3, 3));
    for ((c, e), h) in cpu.iter().zip(&emu).zip(&emu_bf16) {
        // f32: the kernels sum in other orders than the CPU (tests/gpt_emu.rs)
        assert!((e - c).abs() <= 1e-4 * c, "Emu f32 loss {e}, the CPU's {c}");
        // bf16: within one bf16 rounding of the loss (u = 2^-8; derived in tests/gpt_bf16.rs)
        assert!((h - c).abs() <= c / 256.0, "Emu bf16 loss {h}, the CPU's f32 {c}");
    }
    // the compute dtype is saved with the run's settings (the weights stay f32) and kept on resume
    let state = std::fs::read_to_string(emu_bf16_dir.join("checkpoint/state.json")).unwrap();
    assert!(state.contains("\"dtype\": \"bf16\""), "{state}");
    let out = emu_bf16_dir.to_str().unwrap();
    let o = kiln(&[
        "train",
        "--resume",
        "--out",
        out,
        "--device",
        "emu",
        "--steps",
        "4",
        "--sample-tokens",
        "0",
    ]);
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "{stdout}{stderr}");
    assert!(
        stdout.contains("on emu in bf16") && !stdout.contains("dtype"),
        "{stdout}"
    );
    let o = kiln(&[
        "generate",
        "--checkpoint",
        out,
        "--device",
        "emu",
        "--dtype",
        "bf16",
        "--max-new-tokens",
        "5",
    ]);
    let (_, stderr) = text(&o);
    assert!(o.status.success() && stderr.contains("computing in bf16"), "{stderr}");
}
