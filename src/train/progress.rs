//! The training progress bar: indicatif's with the `progress` feature; without it there is no bar
//! ([`Bar::new`] returns `None`) and the trainer prints plain lines instead.

/// A bar of `total` steps on stderr.
#[cfg(feature = "progress")]
pub(crate) struct Bar(indicatif::ProgressBar);

/// No bar: the `progress` feature is off, so no value of this type exists.
#[cfg(not(feature = "progress"))]
pub(crate) enum Bar {}

#[cfg(feature = "progress")]
impl Bar {
    /// A bar at step `start` of `total`.
    pub(crate) fn new(start: usize, total: usize) -> Option<Bar> {
        let bar = indicatif::ProgressBar::new(total as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:30.cyan/blue} {pos}/{len} steps | {msg} | {elapsed_precise} ETA {eta_precise}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        bar.set_position(start as u64);
        bar.reset_eta();
        Some(Bar(bar))
    }

    /// Prints `line` above the bar.
    pub(crate) fn println(&self, line: &str) {
        self.0.println(line);
    }

    /// Moves the bar to `step`, with `msg` next to it.
    pub(crate) fn set(&self, step: usize, msg: String) {
        self.0.set_position(step as u64);
        self.0.set_message(msg);
    }

    /// Removes the bar.
    pub(crate) fn finish(&self) {
        self.0.finish_and_clear();
    }
}

#[cfg(not(feature = "progress"))]
impl Bar {
    pub(crate) fn new(_start: usize, _total: usize) -> Option<Bar> {
        None
    }

    pub(crate) fn println(&self, _line: &str) {
        match *self {}
    }

    pub(crate) fn set(&self, _step: usize, _msg: String) {
        match *self {}
    }

    pub(crate) fn finish(&self) {
        match *self {}
    }
}
