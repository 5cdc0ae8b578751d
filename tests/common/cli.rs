//! Running the built `kiln` binary from integration tests: a fresh scratch folder per test, the
//! command, its output as text, a tiny corpus and the flags of a tiny model. Included with
//! `#[path = "common/cli.rs"] mod cli;` by the tests that run the binary.
#![allow(dead_code)] // each test file uses its own subset

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// An empty folder under the system's temp dir, unique to this test process and `name`.
pub fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kiln-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The `kiln` binary of this build with `args`, not yet started.
pub fn kiln_cmd(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kiln"));
    c.args(args);
    c
}

/// Runs `kiln args` to the end and returns its status and output.
pub fn kiln(args: &[&str]) -> Output {
    kiln_cmd(args).output().expect("the kiln binary runs")
}

/// (stdout, stderr) as text.
pub fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// A text file `dir/name` of `line` repeated 200 times: enough windows for a tiny model.
pub fn write_corpus(dir: &Path, name: &str, line: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, line.repeat(200)).unwrap();
    p
}

/// The flags of a tiny GPT that trains in well under a second a step.
pub const TINY: &[&str] = &[
    "--n-layer",
    "1",
    "--n-head",
    "2",
    "--n-embd",
    "16",
    "--block-size",
    "16",
    "--batch-size",
    "4",
    "--eval-interval",
    "3",
    "--eval-iters",
    "2",
];
