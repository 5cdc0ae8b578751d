//! Every environment variable kiln reads at run time, parsed and range-checked here, so that a
//! bad value is an error naming the variable, the value and what is accepted (never a silent
//! default, and never a value that later takes the process down: `KILN_EMU_THREADS=100000`
//! once started threads until the OS refused and the process aborted).
//!
//! | variable | read by | accepted |
//! |---|---|---|
//! | `KILN_EMU_THREADS` | the emulator, when `Device::Emu` is first used | a whole number, 1 to [`MAX_EMU_THREADS`] |
//! | `KILN_EMU_CHECK`, `KILN_EMU_ORDER` | the emulator itself (kernels/emu/emu_check.cpp), at every launch; a bad value fails the launch with an error naming the variable | `off` or a comma-separated subset of `race,init,async`; `forward`, `reverse`, `random`, `random:SEED` (docs/emulator.md) |
//! | `KILN_EMU_PROFILE`, `KILN_EMU_PROFILE_JSON` | the emulator's profiler (emu_check.cpp), at every launch and at process exit (`kiln bench --profile` overrides the first); a bad value fails the launch | `0` or `1`; a file path for the JSON counts (docs/emulator.md, "The profiler") |
//! | `KILN_CUDA_SYNC` | a GPU, when opened | `0` or `1` (synchronise after every launch) |
//! | `KILN_NVRTC`, `KILN_CUDA_DIR`, `KILN_CUDA_INCLUDE`, `KILN_PTXAS`, `CUDA_HOME`, `CUDA_PATH` | the CUDA toolchain search (`backend/cuda/nvrtc.rs`'s `env_path`, which build.rs shares and so cannot call this module) | a path (empty means unset); a path that holds nothing is skipped and listed in the not-found error |
//! | `KILN_CBLAS` | `kiln bench` (the BLAS baseline) | a library path (empty means unset) |
//!
//! Build-time variables (`KILN_CUDA_ARCHS`, `KILN_EMU_DEBUG`) are read by build.rs, and the
//! tests' own (`KILN_REQUIRE_CUDA`, `PROPTEST_*`, `KILN_TEST_SEED`) by the tests; docs/reliability.md
//! lists them all.

use crate::{Error, Result};
use std::path::PathBuf;

/// The most emulator worker threads: more than any CPU kiln runs on has cores, and few enough
/// that starting them cannot exhaust the process's thread limit.
pub const MAX_EMU_THREADS: usize = 1024;

/// The value of `name`, `None` when unset or empty; not UTF-8 is an error.
fn text(name: &'static str) -> Result<Option<String>> {
    match std::env::var(name) {
        Ok(v) if v.trim().is_empty() => Ok(None),
        Ok(v) => Ok(Some(v)),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(v)) => Err(bad(name, &v.to_string_lossy(), "valid UTF-8 text")),
    }
}

fn bad(name: &'static str, value: &str, expected: &str) -> Error {
    Error::invalid(
        "environment",
        format!("{name}={value:?} is not valid: expected {expected}"),
    )
}

/// A whole number in `min..=max` from `name`, `None` when unset or empty.
pub fn count(name: &'static str, min: usize, max: usize) -> Result<Option<usize>> {
    let Some(v) = text(name)? else { return Ok(None) };
    match v.trim().parse::<usize>() {
        Ok(n) if (min..=max).contains(&n) => Ok(Some(n)),
        _ => Err(bad(name, &v, &format!("a whole number from {min} to {max}"))),
    }
}

/// A switch from `name`: `1` on, `0` (or unset, or empty) off.
pub fn flag(name: &'static str) -> Result<bool> {
    match text(name)?.as_deref().map(str::trim) {
        None | Some("0") => Ok(false),
        Some("1") => Ok(true),
        Some(v) => Err(bad(name, v, "0 or 1")),
    }
}

/// A path from `name`, `None` when unset or empty (any bytes are a valid path on Unix).
pub fn path(name: &'static str) -> Option<PathBuf> {
    std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from)
}

/// The emulator's worker threads from `KILN_EMU_THREADS`, `None` for the default (one per core).
pub fn emu_threads() -> Result<Option<usize>> {
    count("KILN_EMU_THREADS", 1, MAX_EMU_THREADS)
}

/// Whether `KILN_CUDA_SYNC=1` asks a GPU to wait for every launch (to pin an error on its kernel).
pub fn cuda_sync() -> Result<bool> {
    flag("KILN_CUDA_SYNC")
}

#[cfg(test)]
mod tests {
    use super::*;

    // Each test uses its own variable: the environment is shared by the test threads.
    #[test]
    fn counts_are_range_checked() {
        let var = "KILN_TEST_ENV_COUNT";
        for (value, want) in [("4", Ok(Some(4))), (" 16 ", Ok(Some(16))), ("", Ok(None))] {
            std::env::set_var(var, value);
            assert_eq!(count(var, 1, 1024).map_err(|e| e.to_string()), want, "{value:?}");
        }
        for value in ["-1", "0", "100000", "four", "1e3", "18446744073709551616"] {
            std::env::set_var(var, value);
            let err = count(var, 1, 1024).unwrap_err().to_string();
            assert!(
                err.contains(var) && err.contains(value) && err.contains("1 to 1024"),
                "{err}"
            );
        }
        std::env::remove_var(var);
        assert_eq!(count(var, 1, 1024).unwrap(), None);
    }

    #[test]
    fn flags_are_zero_or_one() {
        let var = "KILN_TEST_ENV_FLAG";
        std::env::set_var(var, "1");
        assert!(flag(var).unwrap());
        std::env::set_var(var, "0");
        assert!(!flag(var).unwrap());
        std::env::set_var(var, "yes");
        assert!(flag(var).unwrap_err().to_string().contains("0 or 1"));
        std::env::remove_var(var);
        assert!(!flag(var).unwrap());
    }

    #[test]
    fn text_that_is_not_utf8_is_an_error() {
        use std::ffi::OsString;
        use std::os::unix::ffi::OsStringExt;
        let var = "KILN_TEST_ENV_BYTES";
        std::env::set_var(var, OsString::from_vec(vec![0x66, 0xff]));
        assert!(flag(var).unwrap_err().to_string().contains(var));
        std::env::remove_var(var);
    }
}
