//! The `kiln` binary under hostile conditions (issue 21): closed and full output streams, two
//! writers on one run folder, damaged checkpoint and data files, absurd counts, leftovers of a
//! killed run. Each test runs the built binary on a tiny model for a few steps.
//! docs/reliability.md lists which promise each test checks.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

#[path = "common/cli.rs"]
mod cli;
use cli::{kiln, kiln_cmd, temp_dir, text, TINY};

fn write_corpus(dir: &Path) -> PathBuf {
    cli::write_corpus(dir, "a.txt", "to be or not to be, that is the question.\n")
}

/// `kiln train` of the tiny model on `data` into `out`, with `extra` flags.
fn train_args<'a>(out: &'a Path, data: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "train",
        "--tokenizer",
        "char",
        "--data",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(TINY);
    args.extend_from_slice(extra);
    args
}

fn assert_no_panic(o: &Output) {
    let (stdout, stderr) = text(o);
    assert!(
        o.status.code().is_some() && !stderr.contains("panicked"),
        "status {:?}\n{stdout}\n{stderr}",
        o.status
    );
}

/// Generates a few tokens from the checkpoint in `out`: the checkpoint is complete and loads.
fn assert_generates(out: &Path) {
    let o = kiln(&[
        "generate",
        "--checkpoint",
        out.to_str().unwrap(),
        "--max-new-tokens",
        "5",
    ]);
    assert!(o.status.success(), "{:?}", text(&o));
}

/// Runs `cmd` with its stdout a pipe that is closed before the process writes anything.
fn with_closed_stdout(mut cmd: Command) -> Output {
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    drop(child.stdout.take()); // the reader leaves: every write to stdout fails with EPIPE
    child.wait_with_output().unwrap()
}

/// Runs `cmd` with its stdout on /dev/full: every write fails with ENOSPC.
fn with_full_stdout(mut cmd: Command) -> Output {
    let full = std::fs::OpenOptions::new().write(true).open("/dev/full").unwrap();
    cmd.stdout(full).stderr(Stdio::piped()).output().unwrap()
}

#[test]
fn a_closed_or_full_stdout_never_panics_and_the_run_is_saved() {
    let root = temp_dir("pipe");
    let data = write_corpus(&root);
    // train with nobody reading: the run completes and its checkpoint loads
    let out = root.join("closed");
    let o = with_closed_stdout(kiln_cmd(&train_args(
        &out,
        &data,
        &["--steps", "4", "--sample-tokens", "50"],
    )));
    assert_no_panic(&o);
    assert!(o.status.success(), "{:?}", text(&o));
    assert_generates(&out);
    // train onto a full disk: the same, with a warning that the sample was lost
    let out = root.join("full");
    let o = with_full_stdout(kiln_cmd(&train_args(
        &out,
        &data,
        &["--steps", "4", "--sample-tokens", "50"],
    )));
    assert_no_panic(&o);
    let (_, stderr) = text(&o);
    assert!(o.status.success(), "{stderr}");
    assert!(stderr.contains("the sample could not be written to stdout"), "{stderr}");
    assert_generates(&out);
    // generate into a closed pipe ends quietly; onto a full disk it is an error
    let gen = || {
        kiln_cmd(&[
            "generate",
            "--checkpoint",
            out.to_str().unwrap(),
            "--max-new-tokens",
            "50",
        ])
    };
    let o = with_closed_stdout(gen());
    assert_no_panic(&o);
    assert!(o.status.success(), "{:?}", text(&o));
    let o = with_full_stdout(gen());
    assert_no_panic(&o);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).1.contains("error: writing to stdout"), "{:?}", text(&o));
    // a closed stderr: the error message is lost, the exit status is not
    let mut child = kiln_cmd(&["generate", "--checkpoint", root.join("none").to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stderr.take());
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    // the longest generation there is, read for 300 bytes: the reader leaving stops it
    let mut child = kiln_cmd(&[
        "generate",
        "--checkpoint",
        out.to_str().unwrap(),
        "--max-new-tokens",
        "18446744073709551615",
    ])
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let mut first = [0u8; 300];
    child.stdout.take().unwrap().read_exact(&mut first).unwrap();
    let o = child.wait_with_output().unwrap();
    assert_no_panic(&o);
    assert!(o.status.success(), "{:?}", text(&o));
    std::fs::remove_dir_all(&root).unwrap();
}

/// The step of the checkpoint in the run folder `out` (or of its backup, after a kill mid-swap).
fn saved_step(out: &Path) -> u64 {
    let state = ["checkpoint", "checkpoint.old"]
        .iter()
        .find_map(|d| std::fs::read_to_string(out.join(d).join("state.json")).ok())
        .unwrap();
    serde_json::from_str::<serde_json::Value>(&state).unwrap()["step"]
        .as_u64()
        .unwrap()
}

/// Waits until `path` exists (a child process wrote it), or fails after a minute.
fn wait_for(path: &Path, child: &mut Child) {
    let t0 = Instant::now();
    while !path.exists() {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
            panic!("the trainer ended ({status}) before writing {}: {err}", path.display());
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "no {} after a minute",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_run_folder_takes_one_writer_and_readers_keep_working() {
    let root = temp_dir("lock");
    let data = write_corpus(&root);
    let out = root.join("run");
    let outs = out.to_str().unwrap();
    // a trainer that runs until it is killed, checkpointing every 3 steps
    let mut holder = kiln_cmd(&train_args(&out, &data, &["--steps", "1000000"]))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(&out.join("checkpoint/state.json"), &mut holder);
    let held_by = format!("kiln process {} is writing to it", holder.id());
    // a second writer of each kind is refused, naming the holder
    let other = root.join("other.txt");
    std::fs::write(&other, "another text entirely. ".repeat(100)).unwrap();
    for args in [
        train_args(&out, &other, &["--steps", "5"]),
        vec!["train", "--resume", "--out", outs, "--steps", "2000000"],
        vec![
            "finetune",
            "--from",
            outs,
            "--data",
            other.to_str().unwrap(),
            "--out",
            outs,
        ],
    ] {
        let o = kiln(&args);
        let (_, stderr) = text(&o);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains(&held_by), "{args:?}: {stderr}");
    }
    // a reader is not: generating from the checkpoint being rewritten (every 3 steps) works
    // every time, a swap during its read included
    for _ in 0..10 {
        assert_generates(&out);
    }
    // the refused writers left the run alone: its metrics are whole lines in step order
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    let steps: Vec<u64> = metrics
        .lines()
        .filter(|l| l.contains("\"train\""))
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["step"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert!(
        !steps.is_empty() && steps.windows(2).all(|w| w[1] == w[0] + 1),
        "{steps:?}"
    );
    // a killed holder's lock ends with it: the run resumes, one step further
    holder.kill().unwrap();
    holder.wait().unwrap();
    let steps = (saved_step(&out) + 1).to_string();
    let o = kiln(&[
        "train",
        "--resume",
        "--out",
        outs,
        "--steps",
        &steps,
        "--sample-tokens",
        "0",
    ]);
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "{stdout}{stderr}");
    std::fs::remove_dir_all(&root).unwrap();
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

/// Flips the lowest bit of the last byte of `path`.
fn flip_last_bit(path: &Path) {
    let mut bytes = std::fs::read(path).unwrap();
    *bytes.last_mut().unwrap() ^= 1;
    std::fs::write(path, bytes).unwrap();
}

/// Drops the checksums from a checkpoint's state.json, as a checkpoint written before kiln
/// recorded them: what is then left to catch a bad value is the check of the values.
fn drop_checksums(ckpt: &Path) {
    let path = ckpt.join("state.json");
    let mut state: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    state.as_object_mut().unwrap().remove("checksums").unwrap();
    std::fs::write(&path, serde_json::to_string_pretty(&state).unwrap()).unwrap();
}

/// Rewrites one tensor of a safetensors file through `edit` (its values as f64).
fn edit_tensor(path: &Path, name: &str, edit: impl FnOnce(&mut Vec<f64>)) {
    use kiln::model::io::{load_tensors, save_tensors};
    let (mut tensors, meta) = load_tensors(path, &kiln::Device::Cpu).unwrap();
    let slot = tensors.iter_mut().find(|(n, _)| n == name).unwrap();
    let mut values = slot.1.to_dtype(kiln::DType::F64).unwrap().to_vec::<f64>().unwrap();
    edit(&mut values);
    let shape = slot.1.shape().to_vec();
    let dtype = slot.1.dtype();
    slot.1 = kiln::Tensor::from_vec(values, &shape, &kiln::Device::Cpu)
        .unwrap()
        .to_dtype(dtype)
        .unwrap();
    save_tensors(path, &tensors, Some(meta)).unwrap();
}

fn expect_error(o: &Output, wants: &[&str]) {
    assert_no_panic(o);
    let (stdout, stderr) = text(o);
    assert_eq!(o.status.code(), Some(1), "{stdout}\n{stderr}");
    for want in wants {
        assert!(stderr.contains(want), "missing {want:?} in:\n{stderr}");
    }
}

#[test]
fn damaged_checkpoint_and_data_files_are_named_at_load() {
    let root = temp_dir("damage");
    let data = write_corpus(&root);
    let good = root.join("good");
    let o = kiln(&train_args(&good, &data, &["--steps", "3", "--sample-tokens", "0"]));
    assert!(o.status.success(), "{:?}", text(&o));
    let mut case = 0;
    // a fresh copy of the run for each damage
    let mut fresh = || {
        case += 1;
        let run = root.join(format!("case{case}"));
        copy_dir(&good, &run);
        run
    };
    let resume = |run: &Path| {
        kiln(&[
            "train",
            "--resume",
            "--out",
            run.to_str().unwrap(),
            "--steps",
            "4",
            "--sample-tokens",
            "0",
        ])
    };
    let generate = |run: &Path| {
        kiln(&[
            "generate",
            "--checkpoint",
            run.to_str().unwrap(),
            "--max-new-tokens",
            "3",
        ])
    };

    // a flipped bit in the weights or the optimizer state: the checksum names the file
    let run = fresh();
    flip_last_bit(&run.join("checkpoint/model.safetensors"));
    for o in [generate(&run), resume(&run)] {
        expect_error(&o, &["checkpoint/model.safetensors is damaged: its checksum is xxh3:"]);
    }
    let run = fresh();
    flip_last_bit(&run.join("checkpoint/optimizer.safetensors"));
    expect_error(&resume(&run), &["checkpoint/optimizer.safetensors is damaged"]);
    assert!(
        generate(&run).status.success(),
        "generate does not read the optimizer state"
    );

    // a flipped bit in the token cache: rebuilt from the unchanged text (with a warning), and
    // the error when the text is gone
    let run = fresh();
    flip_last_bit(&run.join("tokens.bin"));
    let o = resume(&run);
    let (_, stderr) = text(&o);
    assert!(o.status.success(), "{stderr}");
    assert!(
        stderr.contains("tokens.bin is damaged: its checksum is")
            && stderr.contains("tokenizing the unchanged sources again"),
        "{stderr}"
    );
    let moved = root.join("moved.txt");
    std::fs::rename(&data, &moved).unwrap();
    let run = fresh();
    flip_last_bit(&run.join("tokens.bin"));
    expect_error(&resume(&run), &["tokens.bin is damaged: its checksum is"]);
    // an id outside the vocabulary under an intact checksum: named with the file
    let run = fresh();
    let cache = run.join("tokens.bin");
    let (key, mut ids) = kiln::data::parse_token_cache(&std::fs::read(&cache).unwrap(), "", usize::MAX).unwrap();
    ids[7] = 1000;
    std::fs::write(&cache, kiln::data::token_cache_bytes(key, &ids)).unwrap();
    expect_error(
        &resume(&run),
        &["tokens.bin is damaged: token 7 is id 1000, outside the vocabulary of"],
    );
    std::fs::rename(&moved, &data).unwrap();

    // metrics: a bad line in the middle and a byte that is not UTF-8 are named; a last line
    // cut short by a crash is passed over
    let metrics = std::fs::read(good.join("metrics.jsonl")).unwrap();
    let lines: Vec<&[u8]> = metrics.split(|&b| b == b'\n').collect();
    for (bad, want) in [
        (&b"{\"kind\":\"train\",\"step\":"[..], "line 3 is not a metrics record"),
        (&[0xff, 0xfe][..], "line 3 is not a metrics record: not UTF-8"),
    ] {
        let run = fresh();
        let mut edited = lines.clone();
        edited[2] = bad;
        std::fs::write(run.join("metrics.jsonl"), edited.join(&b'\n')).unwrap();
        expect_error(&resume(&run), &[want]);
    }
    let run = fresh();
    let mut torn = metrics.clone();
    torn.extend_from_slice(b"{\"kind\":\"tra");
    std::fs::write(run.join("metrics.jsonl"), torn).unwrap();
    assert!(resume(&run).status.success());

    // a state.json that is not JSON, or not UTF-8
    let run = fresh();
    std::fs::write(run.join("checkpoint/state.json"), b"{\"step\": 3, \xff}").unwrap();
    expect_error(&generate(&run), &["checkpoint/state.json is not valid"]);

    // values no run can reach, in files whose checksums are not recorded: NaN weights (named
    // with their tensor), a negative second moment, an absurd step count
    let run = fresh();
    drop_checksums(&run.join("checkpoint"));
    edit_tensor(
        &run.join("checkpoint/model.safetensors"),
        "transformer.h.0.mlp.c_fc.weight",
        |v| v[5] = f64::NAN,
    );
    for o in [generate(&run), resume(&run)] {
        expect_error(
            &o,
            &["tensor transformer.h.0.mlp.c_fc.weight [64, 16] holds 1 values that are not finite (element 5 is NaN)"],
        );
    }
    let run = fresh();
    drop_checksums(&run.join("checkpoint"));
    let opt = run.join("checkpoint/optimizer.safetensors");
    edit_tensor(&opt, "transformer.wte.weight.exp_avg_sq", |v| v[0] = -1.0);
    expect_error(
        &resume(&run),
        &["bad values: transformer.wte.weight.exp_avg_sq: 1 are not finite and ≥ 0 (element 0 is -1)"],
    );
    let run = fresh();
    drop_checksums(&run.join("checkpoint"));
    let opt = run.join("checkpoint/optimizer.safetensors");
    edit_tensor(&opt, "step", |v| v[0] = 1e300);
    expect_error(&resume(&run), &["step 1e300 is not a whole number of steps"]);
    let run = fresh();
    drop_checksums(&run.join("checkpoint"));
    let opt = run.join("checkpoint/optimizer.safetensors");
    edit_tensor(&opt, "step", |v| v[0] = 2.0);
    expect_error(&resume(&run), &["has taken 2 steps, but state.json is at step 3"]);
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn absurd_counts_and_inconsistent_settings_are_refused() {
    let root = temp_dir("counts");
    let data = write_corpus(&root);
    let out = root.join("run");
    for (flags, want) in [
        (
            &["--grad-accum", "4611686018427387904"][..],
            "--steps 2000 × --grad-accum 4611686018427387904 micro-batches is more than this machine can count",
        ),
        (
            &["--min-lr", "0.01", "--lr", "0.001"],
            "--min-lr (0.01) is above --lr (0.001)",
        ),
    ] {
        expect_error(&kiln(&train_args(&out, &data, flags)), &[want]);
        assert!(!out.exists(), "{flags:?} left {}", out.display());
    }
    expect_error(
        &kiln(&["bench", "--copy-mib", "17592186044416"]),
        &["--copy-mib 17592186044416 MiB is more bytes than this machine can count"],
    );
    // the longest warmup: a tiny, finite learning rate, not an infinite one
    let o = kiln(&train_args(
        &out,
        &data,
        &[
            "--steps",
            "3",
            "--warmup",
            "18446744073709551615",
            "--sample-tokens",
            "0",
        ],
    ));
    assert!(o.status.success(), "{:?}", text(&o));
    let lrs: Vec<f64> = std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r["kind"] == "train")
        .map(|r| r["lr"].as_f64().unwrap())
        .collect();
    // step s of a warmup of 2^64 - 1 steps: lr · (s + 1) / 2^64
    let want: Vec<f64> = (1..=3).map(|s| 1e-3 * s as f64 / 2f64.powi(64)).collect();
    assert_eq!(lrs.len(), 3);
    for (got, want) in lrs.iter().zip(&want) {
        assert!((got - want).abs() <= 1e-12 * want, "{lrs:?} vs {want:?}");
    }
    // resuming a step-3 run with fewer steps
    expect_error(
        &kiln(&["train", "--resume", "--out", out.to_str().unwrap(), "--steps", "2"]),
        &["is at step 3, past --steps 2; give --steps 3 or more"],
    );
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn hugging_face_folders_say_what_they_lack() {
    let root = temp_dir("hf");
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gpt2-tiny");
    let config = std::fs::read_to_string(fixture.join("config.json")).unwrap();
    let folder = |name: &str, files: &[(&str, &str)]| {
        let d = root.join(name);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("config.json"), &config).unwrap();
        for (f, contents) in files {
            std::fs::write(d.join(f), contents).unwrap();
        }
        d
    };
    let generate = |d: &Path| kiln(&["generate", "--hf", d.to_str().unwrap()]);
    let finetune = |d: &Path| {
        let data = write_corpus(&root);
        kiln(&[
            "finetune",
            "--from",
            d.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--out",
            root.join("ft").to_str().unwrap(),
        ])
    };
    let pickle = folder("pickle", &[("pytorch_model.bin", "not a pickle")]);
    let sharded = folder(
        "sharded",
        &[
            ("model.safetensors.index.json", "{}"),
            ("model-00001-of-00002.safetensors", ""),
            ("model-00002-of-00002.safetensors", ""),
        ],
    );
    for o in [generate(&pickle), finetune(&pickle)] {
        expect_error(
            &o,
            &[
                "has no model.safetensors (it holds pytorch_model.bin)",
                "save_pretrained",
            ],
        );
    }
    expect_error(
        &generate(&sharded),
        &["it holds model-00001-of-00002.safetensors, model-00002-of-00002.safetensors, model.safetensors.index.json"],
    );
    assert!(!root.join("ft").exists(), "the failed finetune left its --out");
    // a number written as a string is named as such, not as missing
    let mut json: serde_json::Value = serde_json::from_str(&config).unwrap();
    json["n_embd"] = serde_json::json!("8");
    let typo = root.join("typo");
    copy_dir(&fixture, &typo);
    std::fs::write(typo.join("config.json"), json.to_string()).unwrap();
    expect_error(
        &generate(&typo),
        &["n_embd is \"8\", which is not a whole number ≥ 0 (write it without quotes)"],
    );
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn leftovers_are_cleaned_failed_starts_leave_nothing_and_checkpoints_are_reproducible() {
    let root = temp_dir("leftovers");
    let data = write_corpus(&root);
    let (a, b) = (root.join("a"), root.join("b"));
    for out in [&a, &b] {
        let o = kiln(&train_args(out, &data, &["--steps", "3", "--sample-tokens", "0"]));
        assert!(o.status.success(), "{:?}", text(&o));
    }
    // two runs of the same settings write the same bytes (metadata included)
    for file in ["model.safetensors", "optimizer.safetensors"] {
        let read = |run: &Path| std::fs::read(run.join("checkpoint").join(file)).unwrap();
        assert!(read(&a) == read(&b), "{file} differs between two identical runs");
    }
    // what a killed run leaves is removed by the next writer, and nothing else
    let leftovers = [".loss.svg.tmp-4242", ".tokens.bin.tmp-17", ".metrics.jsonl.tmp-99"];
    for f in leftovers {
        std::fs::write(a.join(f), "partial").unwrap();
    }
    std::fs::create_dir_all(a.join("checkpoint.tmp")).unwrap();
    std::fs::write(a.join("checkpoint.tmp/model.safetensors"), "partial").unwrap();
    std::fs::write(a.join("notes.txt"), "mine").unwrap();
    let o = kiln(&[
        "train",
        "--resume",
        "--out",
        a.to_str().unwrap(),
        "--steps",
        "4",
        "--sample-tokens",
        "0",
    ]);
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "{stderr}");
    assert!(stdout.contains("removed what an interrupted run left"), "{stdout}");
    for f in leftovers.iter().chain(&["checkpoint.tmp"]) {
        assert!(!a.join(f).exists(), "{f} is still there");
    }
    assert!(a.join("notes.txt").exists());
    // a start that fails after making --out removes it; a folder it did not make stays
    let missing = root.join("missing.txt");
    let fresh = root.join("deep/new/run");
    expect_error(&kiln(&train_args(&fresh, &missing, &[])), &["missing.txt"]);
    assert!(!root.join("deep").exists(), "the failed start left the folders it made");
    let existing = root.join("existing");
    std::fs::create_dir_all(&existing).unwrap();
    expect_error(&kiln(&train_args(&existing, &missing, &[])), &["missing.txt"]);
    assert!(existing.is_dir());
    std::fs::remove_dir_all(&root).unwrap();
}

/// The records of `metrics.jsonl` in `out` that a resumed run must reproduce bit for bit: every
/// training record (step, loss, learning rate, gradient norm) and every evaluation's losses,
/// as JSON text (which writes each f64 so that it reads back exactly); timings left out.
fn computed_records(out: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    text.lines()
        .map(|line| {
            let mut r: serde_json::Value = serde_json::from_str(line).unwrap();
            let fields = r.as_object_mut().unwrap();
            for timing in ["tokens_per_s", "train_seconds"] {
                fields.remove(timing);
            }
            r.to_string()
        })
        .collect()
}

#[test]
fn a_resumed_run_repeats_the_uninterrupted_one_bit_for_bit_on_cpu_and_emu() {
    let root = temp_dir("exact-resume");
    let data = write_corpus(&root);
    // two layers, dropout and two micro-batches a step, so every kernel of a training step runs;
    // the stop at step 4 falls between the evaluations at 3 and 6 (an extra one at the stop)
    let flags = [
        "--n-layer",
        "2",
        "--n-head",
        "2",
        "--n-embd",
        "32",
        "--block-size",
        "16",
        "--batch-size",
        "4",
        "--eval-interval",
        "3",
        "--eval-iters",
        "2",
        "--dropout",
        "0.1",
        "--grad-accum",
        "2",
        "--steps",
        "8",
        "--sample-tokens",
        "0",
    ];
    for device in ["cpu", "emu"] {
        let (whole, resumed) = (
            root.join(format!("{device}-whole")),
            root.join(format!("{device}-resumed")),
        );
        let train = |out: &Path, extra: &[&str]| {
            let mut args = vec!["train", "--tokenizer", "char", "--device", device];
            args.extend_from_slice(&["--data", data.to_str().unwrap(), "--out", out.to_str().unwrap()]);
            args.extend_from_slice(&flags);
            args.extend_from_slice(extra);
            kiln(&args)
        };
        let o = train(&whole, &[]);
        assert!(o.status.success(), "{:?}", text(&o));
        let o = train(&resumed, &["--stop-at", "4"]);
        assert!(o.status.success(), "{:?}", text(&o));
        let o = kiln(&[
            "train",
            "--resume",
            "--out",
            resumed.to_str().unwrap(),
            "--device",
            device,
            "--sample-tokens",
            "0",
        ]);
        assert!(o.status.success(), "{:?}", text(&o));
        let (a, b) = (computed_records(&whole), computed_records(&resumed));
        assert_eq!(a.iter().filter(|r| r.contains("\"train\"")).count(), 8, "{a:#?}");
        // the stopped run's extra evaluation at step 4 aside, the records are the same
        let b: Vec<String> = b
            .into_iter()
            .filter(|r| !(r.contains("\"eval\"") && r.contains("\"step\":4,")))
            .collect();
        assert_eq!(a, b, "{device}: the resumed run differs from the uninterrupted one");
        for file in ["model.safetensors", "optimizer.safetensors"] {
            let read = |run: &Path| std::fs::read(run.join("checkpoint").join(file)).unwrap();
            assert!(
                read(&whole) == read(&resumed),
                "{device}: {file} differs after the resume"
            );
        }
    }
    std::fs::remove_dir_all(&root).unwrap();
}
