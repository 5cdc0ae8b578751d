//! Lines for the person watching: progress and results on stdout, warnings on stderr, written
//! without `println!`, which panics when its stream is closed (`kiln train | head -1`) or full
//! (`kiln train > /dev/full`). A line that cannot be written is dropped: the run, its
//! checkpoints and its metrics go on.

use std::io::Write;

/// Writes `line` and a newline to stdout, if it can.
pub fn out(line: &str) {
    let _ = writeln!(std::io::stdout().lock(), "{line}");
}

/// Writes `line` and a newline to stderr, if it can.
pub fn err(line: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// Writes `warning: {line}` to stderr, if it can.
pub fn warn(line: &str) {
    err(&format!("warning: {line}"));
}
