//! What a benchmark case is given ([`Setup`]) and what it hands back to be timed ([`Work`]):
//! shared by the table of cases (cases.rs) and the library baselines (library.rs).

use super::check::Check;
use crate::{Device, Result};

/// What a case needs to build its inputs.
pub struct Setup<'a> {
    pub dev: Device,
    /// The size, in the case's [`Case::dims`](super::cases::Case::dims) form.
    pub dims: &'a [usize],
    /// Rotate inputs over at least this many bytes (several times the last-level cache).
    pub rotate_bytes: usize,
}

impl Setup<'_> {
    /// Input sets of `bytes` each to rotate over: enough to exceed `rotate_bytes`, at most 16.
    pub fn sets(&self, bytes: f64) -> usize {
        ((self.rotate_bytes as f64 / bytes.max(1.0)).ceil() as usize).clamp(1, 16)
    }
}

/// The timed work of one case at one size.
pub struct Work {
    /// Floating-point operations of one call (0 where memory traffic is the measure).
    pub flops: f64,
    /// The fewest bytes one call must move through memory (each input read once, each output
    /// written once).
    pub bytes: f64,
    /// Of `bytes`, those written (the rest are read): the row's memory roofline streams the same
    /// mix (roofline.rs).
    pub written: f64,
    /// Input sets rotated between calls.
    pub sets: usize,
    /// One call on input set `i % sets`.
    pub run: Box<dyn FnMut(usize) -> Result<()>>,
    /// Runs the op once on input set 0 and compares its output with the CPU reference (check.rs);
    /// None for a library baseline, which is not ours to check.
    pub check: Option<Box<dyn FnMut() -> Result<Check>>>,
}
