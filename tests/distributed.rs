//! `kiln train --distributed` under `mpirun` (the `mpi` feature; docs/distributed.md): two ranks
//! with `--batch-size 6` train what one process with `--batch-size 12` trains, rank 0 alone
//! writes the run folder, a checkpoint of either moves to the other, and a killed rank ends the
//! job; with dropout, with small gradient buckets overlapped with the backward, and with ZeRO-1
//! (sharded AdamW moments), too. Needs Open MPI's `mpirun`
//! (scripts/test.sh installs it); runs the ranks on one machine with `--oversubscribe` (more
//! ranks than cores are allowed) and `--allow-run-as-root` (CI is root).
#![cfg(feature = "mpi")]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

#[path = "common/cli.rs"]
mod cli;
use cli::{kiln_cmd, temp_dir, text, write_corpus};

/// A tiny model and schedule, evaluated every 4 steps (the learning rate rises fast enough that
/// the weights change visibly from step to step); 8 steps unless `--steps` is given.
const RUN: &[&str] = &[
    "--tokenizer",
    "char",
    "--n-layer",
    "1",
    "--n-head",
    "2",
    "--n-embd",
    "16",
    "--block-size",
    "16",
    "--warmup",
    "2",
    "--lr",
    "1e-2",
    "--eval-interval",
    "4",
    "--eval-iters",
    "3",
    "--sample-tokens",
    "0",
];

fn args<'a>(data: &'a Path, out: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec![
        "train",
        "--data",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    a.extend_from_slice(RUN);
    if !extra.contains(&"--steps") {
        a.extend_from_slice(&["--steps", "8"]);
    }
    a.extend_from_slice(extra);
    a
}

/// `mpirun` with `groups` of (ranks, kiln arguments): one group is `mpirun -np N kiln ARGS`,
/// several are MPI's `A : B` form, where each group's ranks get that group's arguments. Each rank
/// runs one thread (two ranks share the 2 cores of CI).
fn mpirun(groups: &[(usize, Vec<&str>)]) -> Command {
    let mut c = Command::new("mpirun");
    c.args(["--oversubscribe", "--allow-run-as-root"]);
    for (i, (ranks, a)) in groups.iter().enumerate() {
        if i > 0 {
            c.arg(":");
        }
        c.args(["-np", &ranks.to_string(), "-x", "RAYON_NUM_THREADS=1"]);
        c.arg(env!("CARGO_BIN_EXE_kiln")).args(a);
    }
    c.env("RAYON_NUM_THREADS", "1");
    c
}

fn run(mut c: Command) -> Output {
    let o = c.output().unwrap_or_else(|e| {
        panic!("cannot start {c:?}: {e} (the mpi feature's tests need Open MPI's mpirun: scripts/test.sh installs it)")
    });
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "{c:?} failed\n{stdout}\n{stderr}");
    o
}

/// One process.
fn single(a: Vec<&str>) -> Output {
    let mut c = kiln_cmd(&a);
    c.env("RAYON_NUM_THREADS", "1");
    run(c)
}

/// The run folder's `metrics.jsonl`, one JSON object per record.
fn metrics(out: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// The same records (kind, step, learning rate) with the same losses and gradient norms within
/// f32 reduction-order tolerance: the two runs sum their gradients in different orders.
fn assert_same_run(got: &[serde_json::Value], want: &[serde_json::Value]) {
    assert_eq!(got.len(), want.len(), "records\n{got:#?}\nvs\n{want:#?}");
    for (g, w) in got.iter().zip(want) {
        assert_eq!(g["kind"], w["kind"], "{g} vs {w}");
        assert_eq!(g["step"], w["step"], "{g} vs {w}");
        assert_eq!(g["lr"], w["lr"], "{g} vs {w}");
        for key in ["loss", "grad_norm", "train_loss", "val_loss"] {
            let (Some(a), Some(b)) = (g[key].as_f64(), w[key].as_f64()) else {
                assert_eq!(g[key], w[key], "{key}: {g} vs {w}");
                continue;
            };
            assert!(
                (a - b).abs() <= 1e-5 * b.abs().max(1.0),
                "{key} at step {}: {a} on the ranks, {b} in one process",
                w["step"]
            );
        }
    }
}

struct Setup {
    root: PathBuf,
    data: PathBuf,
}

fn setup(name: &str) -> Setup {
    let root = temp_dir(name);
    let data = write_corpus(&root, "a.txt", "to be or not to be, that is the question.\n");
    Setup { root, data }
}

#[test]
fn two_ranks_with_batch_6_train_as_one_process_with_batch_12() {
    let s = setup("dist-equal");
    let (one, two, other) = (s.root.join("one"), s.root.join("two"), s.root.join("rank1"));
    single(args(&s.data, &one, &["--batch-size", "12"]));
    // rank 0 is told to write `two`, rank 1 `rank1`: rank 1 must write nothing at all
    let o = run(mpirun(&[
        (1, args(&s.data, &two, &["--distributed", "--batch-size", "6"])),
        (1, args(&s.data, &other, &["--distributed", "--batch-size", "6"])),
    ]));
    let (stdout, _) = text(&o);
    assert!(!other.exists(), "rank 1 wrote {}", other.display());
    assert_eq!(stdout.matches("model: ").count(), 1, "rank 0 alone prints\n{stdout}");
    assert!(stdout.contains("batch 12 on 2 ranks (6 sequences each)"), "{stdout}");
    // every step's loss, gradient norm and evaluation: those of one process, written once
    let want = metrics(&one);
    assert_eq!(want.len(), 8 + 3, "8 steps and 3 evaluations");
    assert_same_run(&metrics(&two), &want);
    let files = |d: &Path| {
        let mut f: Vec<_> = std::fs::read_dir(d).unwrap().map(|e| e.unwrap().file_name()).collect();
        f.sort();
        f
    };
    assert_eq!(files(&two), files(&one));
}

/// Gradient buckets of 0.002 MiB (524 values: the tiny model's ~3.6k gradient values travel in
/// several buckets, whose all-reduces start while the backward runs), with and without gradient
/// accumulation (whose last micro-batch's backward overlaps): still the one-process run.
#[test]
fn small_buckets_overlapped_with_the_backward_train_as_one_process() {
    let s = setup("dist-buckets");
    for accum in ["1", "2"] {
        let (one, two) = (s.root.join(format!("one-{accum}")), s.root.join(format!("two-{accum}")));
        single(args(&s.data, &one, &["--batch-size", "12", "--grad-accum", accum]));
        let o = run(mpirun(&[(
            2,
            args(
                &s.data,
                &two,
                &[
                    "--distributed",
                    "--batch-size",
                    "6",
                    "--grad-accum",
                    accum,
                    "--bucket-mib",
                    "0.002",
                ],
            ),
        )]));
        // rank 0 reports the buckets: several, for the tiny model's ~3.6k values
        let (stdout, _) = text(&o);
        let buckets: usize = stdout
            .split("gradients: ")
            .nth(1)
            .and_then(|rest| rest.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("rank 0 reports the buckets\n{stdout}"));
        assert!(buckets >= 3, "{stdout}");
        assert_same_run(&metrics(&two), &metrics(&one));
    }
}

/// `ranks` processes: one plain process, or `mpirun -np ranks`.
fn launch(ranks: usize, a: Vec<&str>) -> Output {
    if ranks == 1 {
        single(a)
    } else {
        run(mpirun(&[(ranks, a)]))
    }
}

/// Trains to step 4 on `first.0` ranks with `first.1`'s flags (on top of `base`), resumes the run
/// to the end on `then.0` ranks with `then.1`'s flags, and checks the joined run against `want`.
fn stop_at_4_then_resume(
    base: &[&str],
    out: &Path,
    data: &Path,
    first: (usize, &[&str]),
    then: (usize, &[&str]),
    want: &[serde_json::Value],
) {
    let mut a = args(data, out, base);
    a.extend_from_slice(first.1);
    a.extend_from_slice(&["--stop-at", "4"]);
    launch(first.0, a);
    let mut resume = vec!["train", "--resume"];
    resume.extend_from_slice(then.1);
    resume.extend_from_slice(&["--out", out.to_str().unwrap(), "--sample-tokens", "0"]);
    let o = launch(then.0, resume);
    assert!(text(&o).0.contains("resuming"), "{}", text(&o).0);
    assert_same_run(&metrics(out), want);
}

#[test]
fn a_checkpoint_of_two_ranks_resumes_on_one_and_the_reverse() {
    let s = setup("dist-resume");
    let whole = s.root.join("whole");
    single(args(&s.data, &whole, &["--batch-size", "12"]));
    let want = metrics(&whole);
    // 2 ranks to step 4, then one process to the end
    let from_two = s.root.join("from-two");
    stop_at_4_then_resume(
        &[],
        &from_two,
        &s.data,
        (2, &["--distributed", "--batch-size", "6"]),
        (1, &[]),
        &want,
    );
    // one process to step 4, then 2 ranks to the end (the saved batch of 12, 6 on each)
    let from_one = s.root.join("from-one");
    let twelve: &[&str] = &["--batch-size", "12"];
    stop_at_4_then_resume(&[], &from_one, &s.data, (1, twelve), (2, &["--distributed"]), &want);
}

/// A clip that every step of the tiny run exceeds, so that the norm computed from the shards
/// decides every update.
const CLIP: &[&str] = &["--grad-clip", "0.05"];

/// [`args`] with [`CLIP`] and `extra`.
fn clipped<'a>(data: &'a Path, out: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
    let mut a = args(data, out, CLIP);
    a.extend_from_slice(extra);
    a
}

#[test]
fn zero1_trains_as_plain_data_parallel_and_as_one_process() {
    let s = setup("dist-zero1");
    let (one, plain, zero) = (s.root.join("one"), s.root.join("plain"), s.root.join("zero"));
    single(clipped(&s.data, &one, &["--batch-size", "12"]));
    run(mpirun(&[(
        2,
        clipped(&s.data, &plain, &["--distributed", "--batch-size", "6"]),
    )]));
    let o = run(mpirun(&[(
        2,
        clipped(&s.data, &zero, &["--distributed", "--batch-size", "6", "--zero", "1"]),
    )]));
    let (stdout, _) = text(&o);
    assert!(
        stdout.contains("ZeRO-1: AdamW moments sharded over 2 ranks"),
        "{stdout}"
    );
    let want = metrics(&one);
    assert!(
        want.iter()
            .filter(|r| r["kind"] == "train")
            .all(|r| r["grad_norm"].as_f64().unwrap() > 0.05),
        "every step must clip: {want:#?}"
    );
    assert_same_run(&metrics(&zero), &metrics(&plain));
    assert_same_run(&metrics(&zero), &want);
}

#[test]
fn a_zero1_checkpoint_resumes_on_one_rank_and_one_resumes_under_zero1() {
    let s = setup("dist-zero1-resume");
    let whole = s.root.join("whole");
    single(clipped(&s.data, &whole, &["--batch-size", "12"]));
    let want = metrics(&whole);
    // 2 ranks with sharded moments to step 4, then one process (the moments gathered whole)
    let from_zero = s.root.join("from-zero");
    let zero_half: &[&str] = &["--distributed", "--batch-size", "6", "--zero", "1"];
    stop_at_4_then_resume(CLIP, &from_zero, &s.data, (2, zero_half), (1, &[]), &want);
    // one process to step 4, then 2 ranks that shard its moments
    let from_one = s.root.join("from-one");
    let twelve: &[&str] = &["--batch-size", "12"];
    let zero: &[&str] = &["--distributed", "--zero", "1"];
    stop_at_4_then_resume(CLIP, &from_one, &s.data, (1, twelve), (2, zero), &want);
}

/// With dropout, each rank draws its rows' slice of the masks that one process draws for the
/// whole batch: the runs still agree at every step.
#[test]
fn with_dropout_two_ranks_with_batch_6_train_as_one_process_with_batch_12() {
    let s = setup("dist-dropout");
    let (one, two) = (s.root.join("one"), s.root.join("two"));
    single(args(&s.data, &one, &["--batch-size", "12", "--dropout", "0.2"]));
    run(mpirun(&[(
        2,
        args(
            &s.data,
            &two,
            &["--distributed", "--batch-size", "6", "--dropout", "0.2"],
        ),
    )]));
    let want = metrics(&one);
    // the masks matter: without dropout the same run has other losses
    let plain = s.root.join("plain");
    single(args(&s.data, &plain, &["--batch-size", "12"]));
    assert_ne!(
        metrics(&plain)[1]["loss"],
        want[1]["loss"],
        "dropout 0.2 changes the first step's loss"
    );
    assert_same_run(&metrics(&two), &want);
}

#[test]
fn a_refused_setting_ends_every_rank_with_the_error() {
    let s = setup("dist-refused");
    let out = s.root.join("run");
    let a = args(&s.data, &out, &["--distributed", "--batch-size", "6", "--zero", "2"]);
    let o = mpirun(&[(2, a)]).output().expect("mpirun runs");
    let (stdout, stderr) = text(&o);
    assert!(!o.status.success(), "{stdout}\n{stderr}");
    assert!(stderr.contains("ZeRO stage 2 is not implemented"), "{stdout}\n{stderr}");
    assert!(!out.exists(), "a refused run leaves no folder");
}

/// NCCL (src/train/nccl.rs) on a machine without a GPU: `--collective nccl` on CUDA ranks fails on
/// every rank with the loading error (or, where NCCL is installed, the missing GPU), on CPU or Emu
/// ranks with the refusal; `auto` on CUDA ranks warns once that it falls back to MPI; without
/// `--distributed` the flag is refused. No run folder is left, and no rank hangs.
#[test]
fn nccl_is_refused_or_falls_back_clearly_on_every_rank() {
    let s = setup("dist-nccl");
    let out = s.root.join("run");
    let job = |extra: &[&'static str]| {
        let mut a = args(&s.data, &out, &["--distributed", "--batch-size", "6"]);
        a.extend_from_slice(extra);
        let o = mpirun(&[(2, a)]).output().expect("mpirun runs");
        let (stdout, stderr) = text(&o);
        assert!(!o.status.success(), "{stdout}\n{stderr}");
        if extra.contains(&"--collective") {
            assert!(!out.exists(), "a refused run leaves no folder");
        }
        stderr
    };
    let stderr = job(&["--collective", "nccl", "--device", "cuda"]);
    assert!(
        stderr.contains("NCCL library could not be loaded") && stderr.contains("libnccl.so.2")
            || stderr.contains("unavailable"),
        "{stderr}"
    );
    assert!(stderr.contains(" of 2): "), "a rank's error: {stderr}");
    let stderr = job(&["--collective", "nccl", "--device", "emu"]);
    assert!(stderr.contains("--collective nccl needs CUDA ranks"), "{stderr}");
    let stderr = job(&["--device", "cuda"]);
    if stderr.contains("NCCL library could not be loaded") {
        // auto without NCCL: rank 0 alone warns, then the missing GPU ends the job
        assert_eq!(stderr.matches("warning: NCCL is not used").count(), 1, "{stderr}");
        assert!(stderr.contains("through host memory and MPI"), "{stderr}");
    }
    let o = kiln_cmd(&["train", "--collective", "nccl", "--steps", "1"])
        .output()
        .unwrap();
    let (_, stderr) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--distributed"), "{stderr}");
}

/// The NCCL unique id's message (src/train/nccl.rs: 512 bytes, the 128-byte id inside) through
/// `Mpi::broadcast_from_root` between 2 ranks: this test binary runs the test again under
/// `mpirun`, where rank 0 sends a known id and rank 1, its buffer filled with other bytes, must
/// receive it byte for byte.
#[test]
fn an_nccl_unique_id_crosses_the_mpi_broadcast_intact() {
    const NAME: &str = "an_nccl_unique_id_crosses_the_mpi_broadcast_intact";
    use kiln::backend::cuda::nccl::UniqueId;
    use kiln::train::data_parallel::Collective;
    use kiln::train::nccl::{decode_id, encode_id, ID_MESSAGE_BYTES};
    let mut internal = [0u8; 128];
    internal
        .iter_mut()
        .enumerate()
        .for_each(|(i, b)| *b = (255 - i * 3 % 256) as u8);
    internal[17] = 0;
    let id = UniqueId { internal };
    if std::env::var_os("KILN_TEST_MPI_RANK").is_none() {
        let mut c = Command::new("mpirun");
        c.args([
            "--oversubscribe",
            "--allow-run-as-root",
            "-np",
            "2",
            "-x",
            "KILN_TEST_MPI_RANK=1",
        ]);
        c.arg(std::env::current_exe().unwrap())
            .args(["--exact", NAME, "--nocapture", "--test-threads", "1"]);
        let o = run(c);
        let (stdout, _) = text(&o);
        assert_eq!(
            stdout.matches("1 passed").count(),
            2,
            "both ranks ran the test:\n{stdout}"
        );
        return;
    }
    let mpi = kiln::train::distributed::Mpi::init().unwrap();
    let rank = mpi.rank();
    assert_eq!(mpi.world(), 2);
    let mut msg = if rank == 0 {
        encode_id(&Ok(id))
    } else {
        [0xA5u8; ID_MESSAGE_BYTES]
    };
    mpi.broadcast_from_root(&mut msg).unwrap();
    assert_eq!(msg, encode_id(&Ok(id)), "rank {rank}");
    assert_eq!(decode_id(&msg).unwrap(), id, "rank {rank}");
}

/// The pids of the processes whose parent is `parent`, with their `OMPI_COMM_WORLD_RANK`.
fn ranks_of(parent: u32) -> Vec<(u32, String)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // pid (comm) state ppid ...: the fields after the last ')'
        let ppid = stat.rsplit(')').next().and_then(|rest| rest.split_whitespace().nth(1));
        if ppid != Some(&parent.to_string()) {
            continue;
        }
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        let rank = environ
            .split(|&b| b == 0)
            .filter_map(|v| std::str::from_utf8(v).ok())
            .find_map(|v| v.strip_prefix("OMPI_COMM_WORLD_RANK="))
            .map(str::to_string);
        if let Some(rank) = rank {
            found.push((pid, rank));
        }
    }
    found
}

#[test]
fn a_killed_rank_ends_the_job_with_an_error_instead_of_a_hang() {
    let s = setup("dist-kill");
    let out = s.root.join("run");
    let a = args(
        &s.data,
        &out,
        &["--distributed", "--batch-size", "6", "--steps", "1000000"],
    );
    let mut c = mpirun(&[(2, a)]);
    let mut job = c
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("mpirun starts");
    // wait until the ranks train (rank 0 has written a training record)
    let t0 = Instant::now();
    while !std::fs::read_to_string(out.join("metrics.jsonl")).is_ok_and(|m| m.contains("\"train\"")) {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "the job did not start training"
        );
        if job.try_wait().unwrap().is_some() {
            let mut stderr = String::new();
            std::io::Read::read_to_string(job.stderr.as_mut().unwrap(), &mut stderr).unwrap();
            panic!("the job ended before training\n{stderr}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let ranks = ranks_of(job.id());
    let (rank1, _) = ranks.iter().find(|(_, r)| r == "1").expect("rank 1 runs under mpirun");
    let killed = Command::new("kill").args(["-9", &rank1.to_string()]).status().unwrap();
    assert!(killed.success());
    let t1 = Instant::now();
    let status = loop {
        if let Some(status) = job.try_wait().unwrap() {
            break status;
        }
        if t1.elapsed() > Duration::from_secs(60) {
            let _ = job.kill();
            panic!("the job still runs 60 s after rank 1 was killed");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(job.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(!status.success(), "{stderr}");
    // Open MPI's report names the rank that died
    assert!(stderr.contains("signal 9") || stderr.contains("Killed"), "{stderr}");
}
