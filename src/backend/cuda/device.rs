//! A CUDA device: its executor (the real GPU or the emulator), its limits (launch.rs), and the
//! per-device registry. Devices are opened once, on first use, and live for the rest of the process.
//!
//! A device has two [`Lane`]s: the compute stream, where every allocation, copy and launch is
//! queued, and the communication stream, where NCCL's all-reduces run beside the kernels (real.rs).
//! [`Marker`]s order them: [`CudaDevice::mark`] marks the point a lane has reached,
//! [`CudaDevice::wait_for`] makes a lane wait for a marker on the device (the host goes on), and
//! [`CudaDevice::reached`] asks without blocking. On Emu, which runs every copy and launch before
//! returning, every marker is reached when it is made, so the same calls are trivially correct.

use super::emu::Emu;
use super::launch::{Args, Kernel, LaunchConfig, Limits};
pub use super::real::Lane;
use super::real::{Event, Gpu};
use crate::{Device, Error, Result};
use cudarc::driver::sys;
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

    /// Frees a buffer from [`Executor::alloc`]; on Emu an address that is not a live buffer is an error.
    ///
    /// # Safety
    /// `ptr` came from this executor's `alloc` and is freed once, and nothing uses the buffer
    /// afterwards (no owner, no launch in flight). [`DeviceBuffer`](super::memory::DeviceBuffer)
    /// is the safe owner that keeps this promise.
    pub unsafe fn free(&self, ptr: u64) -> Result<()> {
        match self {
            // SAFETY: the caller's contract.
            Executor::Real(g) => unsafe { g.free(ptr) },
            // SAFETY: the caller's contract.
            Executor::Emu(e) => unsafe { e.free(ptr) },
        }
    }

    /// Host to device: `src` to `dst..dst + src.len()`.
    ///
    /// # Safety
    /// `dst..dst + src.len()` lies in a live buffer of this device that nothing else accesses
    /// during the copy. (Emu checks the range against its allocation table and refuses a bad one;
    /// a GPU cannot, and a wild address there corrupts device memory.) The safe way in is
    /// [`DeviceBuffer::write`](super::memory::DeviceBuffer::write).
    pub unsafe fn htod(&self, dst: u64, src: &[u8]) -> Result<()> {
        match self {
            // SAFETY: the caller's contract.
            Executor::Real(g) => unsafe { g.htod(dst, src) },
            // SAFETY: the caller's contract.
            Executor::Emu(e) => unsafe { e.htod(dst, src) },
        }
    }

    /// Device to host; waits for all earlier work on the device.
    ///
    /// # Safety
    /// As [`Executor::htod`], for `src..src + dst.len()`.
    pub unsafe fn dtoh(&self, dst: &mut [u8], src: u64) -> Result<()> {
        match self {
            // SAFETY: the caller's contract.
            Executor::Real(g) => unsafe { g.dtoh(dst, src) },
            // SAFETY: the caller's contract.
            Executor::Emu(e) => unsafe { e.dtoh(dst, src) },
        }
    }

    /// Device to device (the ranges may overlap only on Emu).
    ///
    /// # Safety
    /// As [`Executor::htod`], for both ranges.
    pub unsafe fn dtod(&self, dst: u64, src: u64, bytes: usize) -> Result<()> {
        match self {
            // SAFETY: the caller's contract.
            Executor::Real(g) => unsafe { g.dtod(dst, src, bytes) },
            // SAFETY: the caller's contract.
            Executor::Emu(e) => unsafe { e.dtod(dst, src, bytes) },
        }
    }

    fn launch(&self, kernel: &Kernel, cfg: &LaunchConfig, args: &mut Args) -> Result<()> {
        match self {
            Executor::Real(g) => g.launch(kernel, cfg, args),
            Executor::Emu(e) => e.launch(kernel, cfg, args),
        }
    }
}

/// A point in a device's queued work, made by [`CudaDevice::mark`]: an event on a GPU; on Emu,
/// where the work has run by the time it is queued, a point already reached.
pub struct Marker(Option<Event>);

impl std::fmt::Debug for Marker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Marker(event)"
        } else {
            "Marker(reached)"
        })
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
                // The first use decides for the whole process (a bad KILN_EMU_THREADS stays an error).
                static EMU: OnceLock<std::result::Result<Arc<CudaDevice>, String>> = OnceLock::new();
                EMU.get_or_init(|| {
                    Ok(Arc::new(CudaDevice {
                        device: Device::Emu,
                        limits: Limits::emulated(),
                        executor: Executor::Emu(Emu::open().map_err(|e| e.to_string())?),
                    }))
                })
                .clone()
                .map_err(|reason| Error::DeviceUnavailable {
                    device: Device::Emu,
                    reason,
                })
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

    /// The raw CUDA stream of `lane` on a GPU (for libraries such as NCCL that queue their own
    /// work); None on Emu.
    pub fn stream(&self, lane: Lane) -> Option<sys::CUstream> {
        match &self.executor {
            Executor::Real(gpu) => Some(gpu.stream_of(lane)),
            Executor::Emu(_) => None,
        }
    }

    /// Marks the point `lane` has reached: the marker is reached once the work queued there so
    /// far has run.
    pub fn mark(&self, lane: Lane) -> Result<Marker> {
        match &self.executor {
            Executor::Real(gpu) => {
                let event = gpu.marker()?;
                gpu.record_on(&event, lane)?;
                Ok(Marker(Some(event)))
            }
            Executor::Emu(_) => Ok(Marker(None)),
        }
    }

    /// Makes `lane` wait for `marker` on the device, without blocking the host: the work queued
    /// on `lane` from now on runs after the work before the marker.
    pub fn wait_for(&self, lane: Lane, marker: &Marker) -> Result<()> {
        match (&self.executor, &marker.0) {
            (Executor::Real(gpu), Some(event)) => gpu.wait_event(lane, event),
            _ => Ok(()),
        }
    }

    /// Whether the work before `marker` has all run; never blocks. A fault in that work is an
    /// error.
    pub fn reached(&self, marker: &Marker) -> Result<bool> {
        match (&self.executor, &marker.0) {
            (Executor::Real(gpu), Some(event)) => gpu.query(event),
            _ => Ok(true),
        }
    }

    /// Blocks the host until the work before `marker` has run.
    pub fn host_wait(&self, marker: &Marker) -> Result<()> {
        match (&self.executor, &marker.0) {
            (Executor::Real(gpu), Some(event)) => gpu.host_wait(event),
            _ => Ok(()),
        }
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
