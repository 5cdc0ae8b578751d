//! `metrics.jsonl`: one JSON object per line, appended as training goes.
//!
//! ```text
//! {"kind":"train","step":1,"loss":5.5451,"lr":9.9e-6,"grad_norm":1.03}
//! {"kind":"eval","step":250,"train_loss":2.31,"val_loss":2.35,"tokens_per_s":21000.0,"train_seconds":8.9}
//! ```
//!
//! `step` counts completed optimizer steps: a `train` row holds the loss of the batch whose
//! gradients made step `step`; an `eval` row is measured after `step` steps (0: before
//! training). Losses are written with Rust's shortest round-trip formatting, so a value
//! read back is bit for bit the one computed.

use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

/// The file of a run folder where each step and evaluation is appended, one JSON [`Record`] per line.
pub const FILE: &str = "metrics.jsonl";

/// One line of `metrics.jsonl`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Record {
    /// One optimizer step.
    Train {
        /// The number of steps completed, this one included (1 for the first).
        step: usize,
        /// The training loss of this step (mean cross-entropy over its micro-batches, in nats).
        loss: f64,
        /// The learning rate this step used.
        lr: f64,
        /// The global gradient norm before clipping.
        grad_norm: f64,
    },
    /// One evaluation: the mean loss over a fixed number of batches of each split.
    Eval {
        /// The number of steps completed when it ran.
        step: usize,
        /// The mean loss on training batches, in nats.
        train_loss: f64,
        /// The mean loss on validation batches, in nats.
        val_loss: f64,
        /// Training throughput of this session so far.
        tokens_per_s: f64,
        /// Training seconds since the run began (evaluation and checkpoints excluded).
        train_seconds: f64,
    },
}

impl Record {
    /// The step the record belongs to.
    pub fn step(&self) -> usize {
        match self {
            Record::Train { step, .. } | Record::Eval { step, .. } => *step,
        }
    }
}

/// Reads every record of a metrics file (a missing file has none); see [`parse`].
pub fn read(path: &Path) -> Result<Vec<Record>> {
    match std::fs::read(path) {
        Ok(bytes) => parse(&bytes, &path.display().to_string()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(Error::io(format!("reading {}", path.display()), e)),
    }
}

/// Parses the bytes of a metrics file (`source` names it in errors). Every line must be a
/// record, except blank lines and a last line without its newline (a record cut short by a
/// crash), which are passed over; any other line that is not a record (edited, damaged, not
/// UTF-8) is an error naming its number, so a resumed run never silently drops the records
/// after it. Never panics, whatever the bytes.
pub fn parse(bytes: &[u8], source: &str) -> Result<Vec<Record>> {
    let pieces: Vec<&[u8]> = bytes.split(|&b| b == b'\n').collect();
    let mut out = Vec::with_capacity(pieces.len());
    for (i, line) in pieces.iter().enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let parsed = match std::str::from_utf8(line) {
            Ok(text) => serde_json::from_str::<Record>(text).map_err(|e| e.to_string()),
            Err(e) => Err(format!("not UTF-8 (invalid byte at column {})", e.valid_up_to() + 1)),
        };
        match parsed {
            Ok(r) => out.push(r),
            Err(_) if i + 1 == pieces.len() => {} // the unfinished last line of a crashed run
            Err(why) => {
                return Err(Error::Invalid {
                    op: "metrics",
                    msg: format!(
                        "{source} line {} is not a metrics record: {why}; fix or delete that line \
                         (the records after it are kept)",
                        i + 1
                    ),
                })
            }
        }
    }
    Ok(out)
}

/// Appends records to `metrics.jsonl`.
pub struct MetricsWriter {
    path: PathBuf,
    file: std::io::BufWriter<std::fs::File>,
}

impl MetricsWriter {
    /// Starts the file over with `keep` (the records up to a resumed checkpoint; empty for a
    /// new run), written atomically, then opens it for appending.
    pub fn create(path: &Path, keep: &[Record]) -> Result<MetricsWriter> {
        let mut text = String::new();
        for r in keep {
            text.push_str(&serde_json::to_string(r).expect("records serialise"));
            text.push('\n');
        }
        crate::model::io::write_atomic(path, text.as_bytes())?;
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
        Ok(MetricsWriter {
            path: path.to_path_buf(),
            file: std::io::BufWriter::new(file),
        })
    }

    /// Appends one record (flushed, so `tail -f` shows it at once).
    pub fn write(&mut self, r: &Record) -> Result<()> {
        let line = serde_json::to_string(r).expect("records serialise");
        writeln!(self.file, "{line}")
            .and_then(|()| self.file.flush())
            .map_err(|e| Error::io(format!("writing {}", self.path.display()), e))
    }
}
