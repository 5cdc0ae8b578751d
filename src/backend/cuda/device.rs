//! A CUDA device: its executor (the real GPU or the emulator), its limits (launch.rs), and the
//! per-device registry. Devices are opened once, on first use, and live for the rest of the process.

use super::emu::Emu;
use super::launch::{Args, Kernel, LaunchConfig, Limits};
use super::real::Gpu;
use crate::{Device, Error, Result};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

/// The two executors under the one CUDA backend.
pub enum Executor {
    Real(Gpu),
    Emu(Emu),
}

impl Executor {
    pub fn alloc(&self, bytes: usize) -> Result<u64> {
        match self {
            Executor::Real(g) => g.alloc(bytes),
            Executor::Emu(e) => e.alloc(bytes),
        }
    }

    pub fn free(&self, ptr: u64) {
        match self {
            Executor::Real(g) => g.free(ptr),
            Executor::Emu(e) => e.free(ptr),
        }
    }

    /// Host to device: `src` to `dst..dst + src.len()`.
    pub fn htod(&self, dst: u64, src: &[u8]) -> Result<()> {
        match self {
            Executor::Real(g) => g.htod(dst, src),
            Executor::Emu(e) => e.htod(dst, src),
        }
    }

    /// Device to host; waits for all earlier work on the device.
    pub fn dtoh(&self, dst: &mut [u8], src: u64) -> Result<()> {
        match self {
            Executor::Real(g) => g.dtoh(dst, src),
            Executor::Emu(e) => e.dtoh(dst, src),
        }
    }

    pub fn dtod(&self, dst: u64, src: u64, bytes: usize) -> Result<()> {
        match self {
            Executor::Real(g) => g.dtod(dst, src, bytes),
            Executor::Emu(e) => e.dtod(dst, src, bytes),
        }
    }

    fn launch(&self, kernel: &Kernel, cfg: &LaunchConfig, args: &mut Args) -> Result<()> {
        match self {
            Executor::Real(g) => g.launch(kernel, cfg, args),
            Executor::Emu(e) => e.launch(kernel, cfg, args),
        }
    }
}

/// One device of the CUDA backend.
pub struct CudaDevice {
    device: Device,
    limits: Limits,
    executor: Executor,
}

impl CudaDevice {
    /// The device for `Device::Emu` or `Device::Cuda(n)`, opened on first use. A missing driver or
    /// GPU is an `Error::DeviceUnavailable` saying why, never a panic.
    pub fn get(device: &Device) -> Result<Arc<CudaDevice>> {
        match *device {
            Device::Emu => {
                static EMU: OnceLock<Arc<CudaDevice>> = OnceLock::new();
                Ok(EMU
                    .get_or_init(|| {
                        Arc::new(CudaDevice {
                            device: Device::Emu,
                            limits: Limits::emulated(),
                            executor: Executor::Emu(Emu::open()),
                        })
                    })
                    .clone())
            }
            Device::Cuda(ordinal) => {
                static GPUS: OnceLock<Mutex<HashMap<usize, Arc<CudaDevice>>>> = OnceLock::new();
                let mut open = GPUS
                    .get_or_init(Default::default)
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                if let Some(d) = open.get(&ordinal) {
                    return Ok(d.clone());
                }
                let (gpu, limits) = Gpu::open(ordinal).map_err(|reason| Error::DeviceUnavailable {
                    device: *device,
                    reason,
                })?;
                let d = Arc::new(CudaDevice {
                    device: *device,
                    limits,
                    executor: Executor::Real(gpu),
                });
                open.insert(ordinal, d.clone());
                Ok(d)
            }
            Device::Cpu => Err(Error::invalid("cuda", "Device::Cpu is not a CUDA device")),
        }
    }

    pub fn device(&self) -> Device {
        self.device
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    pub fn executor(&self) -> &Executor {
        &self.executor
    }

    /// Checks the launch shape against the device's limits, then launches.
    pub fn launch(&self, kernel: Kernel, cfg: LaunchConfig, args: &mut Args) -> Result<()> {
        cfg.check(&kernel, &self.limits)?;
        self.executor.launch(&kernel, &cfg, args)
    }
}

/// The number of CUDA GPUs this process can use (0 without a driver).
pub fn gpu_count() -> usize {
    Gpu::count().unwrap_or(0)
}
