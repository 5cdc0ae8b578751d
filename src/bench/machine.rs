//! The machine a benchmark ran on, recorded beside its figures (the table's header and the JSON of
//! `kiln bench` and `kiln bench --gguf`): kiln's version, the CPU's model and threads, its
//! last-level cache, and the GPU.

use crate::backend::cuda::device::{CudaDevice, Executor};
use crate::Device;

/// What ran the benchmark.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Machine {
    /// kiln's version (Cargo.toml's).
    pub kiln_version: String,
    /// The CPU's model name (`model name` of /proc/cpuinfo), or the architecture where that is
    /// not available.
    pub cpu: String,
    /// Hardware threads this process may run on.
    pub cpu_threads: usize,
    /// Threads kiln's parallel loops use (`RAYON_NUM_THREADS`, else one per hardware thread).
    pub threads: usize,
    /// The largest CPU cache, in bytes, where the OS says (Linux: /sys/devices/system/cpu).
    pub last_level_cache_bytes: Option<usize>,
    /// The GPU's name, multiprocessors and compute capability, for `cuda` devices; a line saying
    /// so for Emu.
    pub gpu: Option<String>,
}

impl Machine {
    /// The machine that runs this process, with the GPU of `dev`.
    pub fn this(dev: &Device) -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        Machine {
            kiln_version: env!("CARGO_PKG_VERSION").to_string(),
            cpu: cpu_model(&cpuinfo).unwrap_or_else(|| std::env::consts::ARCH.to_string()),
            cpu_threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            threads: rayon::current_num_threads(),
            last_level_cache_bytes: last_level_cache(),
            gpu: gpu(dev),
        }
    }

    /// One line for a table's header.
    pub fn line(&self) -> String {
        let mut s = format!(
            "kiln {}; CPU {} ({} hardware threads, {} used",
            self.kiln_version, self.cpu, self.cpu_threads, self.threads
        );
        if let Some(b) = self.last_level_cache_bytes {
            s.push_str(&format!(", last-level cache {} MiB", b as f64 / (1 << 20) as f64));
        }
        s.push(')');
        if let Some(g) = &self.gpu {
            s.push_str(&format!("; GPU {g}"));
        }
        s
    }
}

/// The first `model name` of a /proc/cpuinfo text.
fn cpu_model(cpuinfo: &str) -> Option<String> {
    cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

/// A cache size as sysfs writes it ("32768K", "1M", "512").
fn cache_size(text: &str) -> Option<usize> {
    let t = text.trim();
    let (digits, unit) = match t.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => t.split_at(i),
        None => (t, ""),
    };
    let n: usize = digits.parse().ok()?;
    match unit {
        "" => Some(n),
        "K" => n.checked_mul(1 << 10),
        "M" => n.checked_mul(1 << 20),
        "G" => n.checked_mul(1 << 30),
        _ => None,
    }
}

/// The largest cache of CPU 0 that Linux lists.
fn last_level_cache() -> Option<usize> {
    let dir = std::fs::read_dir("/sys/devices/system/cpu/cpu0/cache").ok()?;
    dir.filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("index"))
        .filter_map(|e| cache_size(&std::fs::read_to_string(e.path().join("size")).ok()?))
        .max()
}

/// The GPU behind `dev`, if it is one (and opens).
fn gpu(dev: &Device) -> Option<String> {
    match dev {
        Device::Cpu => None,
        Device::Emu => Some("none: Emu runs the CUDA kernels in a CPU emulator".into()),
        Device::Cuda(_) => {
            let d = CudaDevice::get(dev).ok()?;
            let Executor::Real(g) = d.executor() else {
                return None;
            };
            let l = d.limits();
            Some(format!(
                "{} ({} SMs, compute capability {}.{})",
                g.name(),
                l.sm_count,
                l.compute_capability.0,
                l.compute_capability.1
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_model_and_cache_sizes_are_read() {
        let info = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 9B14\nflags\t: fpu\n";
        assert_eq!(cpu_model(info).as_deref(), Some("AMD EPYC 9B14"));
        assert_eq!(cpu_model("processor : 0\n"), None);
        assert_eq!(cache_size("32768K\n"), Some(32 << 20));
        assert_eq!(
            (cache_size("2M"), cache_size("512"), cache_size("x")),
            (Some(2 << 20), Some(512), None)
        );
    }

    #[test]
    fn the_line_names_version_cpu_and_threads() {
        let m = Machine::this(&Device::Cpu);
        let line = m.line();
        assert!(
            line.starts_with(&format!("kiln {}; CPU ", env!("CARGO_PKG_VERSION"))),
            "{line}"
        );
        assert!(m.cpu_threads >= 1 && m.threads >= 1 && m.gpu.is_none(), "{m:?}");
    }
}
