//! scripts/gpu-check.sh without a GPU: stand-ins (tests/fixtures/gpu-check/) for nvidia-smi, the
//! packed kiln binary and the packed test binaries record how the script calls them, so its order,
//! arguments, pass/fail logic and summary are checked here; what the real binaries do on a GPU is
//! not.

use std::path::{Path, PathBuf};
use std::process::Command;

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kiln-test-gpu-check-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn copy_exe(from: &Path, to: &Path) {
    std::fs::create_dir_all(to.parent().unwrap()).unwrap();
    std::fs::copy(from, to).unwrap(); // keeps the executable bit
}

#[test]
fn gpu_check_runs_its_steps_in_order_and_trains_gpt2_in_bf16() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let fakes = root.join("tests/fixtures/gpu-check");
    let dir = temp_dir("fakes");
    let (pack, path_dir, out, log) = (
        dir.join("pack"),
        dir.join("path"),
        dir.join("out"),
        dir.join("calls.log"),
    );
    copy_exe(&fakes.join("kiln"), &pack.join("bin/kiln"));
    for test in ["devices", "gpt_bf16"] {
        copy_exe(&fakes.join("test-binary"), &pack.join("tests").join(test));
    }
    // packed as pack-gpu-check.sh packs them: gzipped
    let gzip = Command::new("sh")
        .arg("-c")
        .arg("gzip -9 bin/* tests/*")
        .current_dir(&pack)
        .status()
        .unwrap();
    assert!(gzip.success() && pack.join("bin/kiln.gz").is_file());
    copy_exe(&fakes.join("nvidia-smi"), &path_dir.join("nvidia-smi"));
    let path = format!("{}:{}", path_dir.display(), std::env::var("PATH").unwrap_or_default());
    let run = Command::new(root.join("scripts/gpu-check.sh"))
        .arg(&out)
        .env("PATH", path)
        .env("KILN_GPU_CHECK_PACK", &pack)
        .env("FAKE_LOG", &log)
        // an NCCL library "found": the script passes it on to kiln in KILN_NCCL
        .env("KILN_NCCL", fakes.join("nvidia-smi"))
        .output()
        .expect("bash runs the script");
    let shown = format!(
        "{}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    let summary = shown
        .split("== gpu-check summary")
        .nth(1)
        .unwrap_or_else(|| panic!("no summary:\n{shown}"));
    let row = |name: &str| {
        summary
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no row {name:?} in the summary:\n{summary}"))
            .to_string()
    };
    for name in [
        "test devices",
        "test gpt_bf16",
        "bench",
        "gpt f32",
        "train gpt2 bf16",
        "nccl allreduce",
    ] {
        assert!(
            row(name)[16..].trim_start().starts_with("ok"),
            "{name}: {}\n{shown}",
            row(name)
        );
    }
    assert!(row("bench").contains("100.0 ms per step"), "{}", row("bench"));
    assert!(
        row("train gpt2 bf16").contains("train loss 10.700 -> 8.200 over 30 steps"),
        "{}",
        row("train gpt2 bf16")
    );
    // PyTorch needs a GPU (and torch): without them its row fails, and so does the check
    let torch_ok = row("torch gpt2")[16..].trim_start().starts_with("ok");
    assert_eq!(run.status.code(), Some(if torch_ok { 0 } else { 1 }), "{shown}");

    let calls = std::fs::read_to_string(&log).unwrap();
    let calls: Vec<&str> = calls.lines().collect();
    assert_eq!(calls.len(), 6, "{calls:#?}");
    assert!(
        calls[0].starts_with("devices --test-threads") && calls[1].starts_with("gpt_bf16"),
        "{calls:#?}"
    );
    assert!(
        calls[2].starts_with("kiln bench --device cuda --gpt-steps 5"),
        "{}",
        calls[2]
    );
    assert!(calls[3].contains("--kernels gpt --gpt-dtype f32"), "{}", calls[3]);
    assert!(
        calls[4].starts_with("kiln train --device cuda --preset gpt2 --tokenizer gpt2 --dtype bf16"),
        "{}",
        calls[4]
    );
    assert!(
        calls[5].starts_with("kiln bench --device cuda --kernels allreduce --collective nccl"),
        "{}",
        calls[5]
    );
    let nccl = row("nccl allreduce");
    assert!(
        nccl.contains("peak algorithm bandwidth 1234.500 GB/s") && nccl.contains("every sum exact"),
        "{nccl}"
    );
    for log in [
        "bench.log",
        "gpt-f32.log",
        "train.log",
        "torch.log",
        "gpu.txt",
        "nccl.log",
    ] {
        assert!(out.join(log).is_file(), "{log} written");
    }
}

#[test]
fn gpu_check_without_packed_binaries_or_a_gpu_stops_with_status_2() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = temp_dir("missing");
    let run = Command::new(root.join("scripts/gpu-check.sh"))
        .arg(dir.join("out"))
        .env("KILN_GPU_CHECK_PACK", dir.join("nothing"))
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&run.stderr).contains("pack-gpu-check.sh"));

    let pack = dir.join("pack");
    copy_exe(&root.join("tests/fixtures/gpu-check/kiln"), &pack.join("bin/kiln"));
    let run = Command::new(root.join("scripts/gpu-check.sh"))
        .arg(dir.join("out"))
        .env("KILN_GPU_CHECK_PACK", &pack)
        .env("PATH", "/usr/bin:/bin") // no nvidia-smi (a machine with a GPU has it elsewhere too)
        .output()
        .unwrap();
    if run.status.code() != Some(2) && Command::new("nvidia-smi").output().is_ok() {
        return; // this machine's nvidia-smi is on /usr/bin: nothing to prove here
    }
    assert_eq!(run.status.code(), Some(2), "{}", String::from_utf8_lossy(&run.stderr));
    assert!(String::from_utf8_lossy(&run.stderr).contains("does not see a GPU"));
}

#[test]
fn gpu_check_without_nccl_skips_its_step_without_failing() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let fakes = root.join("tests/fixtures/gpu-check");
    let dir = temp_dir("no-nccl");
    let (pack, path_dir, log) = (dir.join("pack"), dir.join("path"), dir.join("calls.log"));
    copy_exe(&fakes.join("kiln"), &pack.join("bin/kiln"));
    copy_exe(&fakes.join("nvidia-smi"), &path_dir.join("nvidia-smi"));
    let path = format!("{}:{}", path_dir.display(), std::env::var("PATH").unwrap_or_default());
    let run = Command::new(root.join("scripts/gpu-check.sh"))
        .arg(dir.join("out"))
        .env("PATH", path)
        .env("KILN_GPU_CHECK_PACK", &pack)
        .env("FAKE_LOG", &log)
        .env_remove("KILN_NCCL")
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&run.stdout);
    let row = shown
        .lines()
        .find(|l| l.starts_with("nccl allreduce"))
        .unwrap_or_else(|| panic!("no nccl row:\n{shown}"));
    if !row[16..].trim_start().starts_with("skipped") {
        // this machine has an NCCL library where the script looks: the fake ran instead
        assert!(shown.contains("NCCL: "), "{shown}");
        return;
    }
    assert!(
        row.contains("no NCCL library found") && row.contains("nvidia-nccl-cu12"),
        "{row}"
    );
    let calls = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(!calls.contains("--collective nccl"), "{calls}");
}
