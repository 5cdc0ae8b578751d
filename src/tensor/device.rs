//! Where a tensor's data lives.

/// A compute device.
///
/// - `Cpu`: the reference backend, and fast CPU paths tested against it.
/// - `Cuda(n)`: the n-th NVIDIA GPU, running kiln's own kernels.
/// - `Emu`: the CUDA backend with a CPU executor underneath, for testing kernels without a GPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Device {
    /// The host CPU.
    Cpu,
    /// The NVIDIA GPU of this ordinal (0 is the first), reached through the CUDA driver.
    Cuda(usize),
    /// The CUDA kernels run on the CPU by kiln's emulator (docs/emulator.md).
    Emu,
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
            Device::Emu => f.write_str("emu"),
        }
    }
}

impl std::str::FromStr for Device {
    type Err = crate::Error;

    /// Parses "cpu", "emu", "cuda" (= cuda:0) or "cuda:N".
    fn from_str(s: &str) -> crate::Result<Self> {
        match s {
            "cpu" => Ok(Device::Cpu),
            "emu" => Ok(Device::Emu),
            "cuda" => Ok(Device::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Device::Cuda)
                .ok_or_else(|| {
                    crate::Error::invalid(
                        "device",
                        format!("unknown device {s:?}; expected cpu, emu, cuda or cuda:N"),
                    )
                }),
        }
    }
}
