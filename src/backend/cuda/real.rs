//! The real executor: an NVIDIA GPU through the CUDA driver API (cudarc's thin `result` layer,
//! loaded dynamically). The driver library is looked for before anything touches it, so a machine
//! without one gets an error, never a panic.
//!
//! One primary context and two streams per device: the compute stream, on which allocation, copies
//! and launches are ordered (device-to-host copies wait for it), and the communication stream, on
//! which NCCL's all-reduces run beside the compute stream's kernels; the two are ordered against
//! each other only by events ([`Gpu::marker`], [`Gpu::record_on`], [`Gpu::wait_event`]). A kernel that faults is reported by the next call
//! that waits (set `KILN_CUDA_SYNC=1` to wait after every launch and name the faulting kernel).
//! Modules are loaded once per device and kernel file, at first use: the embedded CUBIN for the
//! device's architecture if build.rs made one, else the embedded PTX (JIT-compiled by the driver),
//! else the source compiled now by NVRTC for the device's architecture.

use super::kernels;
use super::launch::{Args, Kernel, LaunchConfig, Limits};
use super::nvrtc;
use crate::{Error, Result};
use cudarc::driver::result as cu;
use cudarc::driver::sys;
use std::collections::HashMap;
use std::ffi::c_void;
use std::path::Path;
use std::sync::{Mutex, OnceLock};

/// One of a GPU's two streams.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lane {
    /// The stream of every allocation, copy and kernel ([`Gpu::stream`]).
    Compute,
    /// The stream of NCCL's all-reduces, concurrent with the compute stream's work
    /// ([`Gpu::comm_stream`]).
    Comm,
}

/// An opened GPU.
pub struct Gpu {
    ordinal: usize,
    /// The driver's name for the device, e.g. "NVIDIA H100 80GB HBM3".
    name: String,
    ctx: sys::CUcontext,
    stream: sys::CUstream,
    /// The communication stream: work on it runs concurrently with `stream`'s.
    comm_stream: sys::CUstream,
    modules: Mutex<HashMap<&'static str, sys::CUmodule>>,
    functions: Mutex<HashMap<&'static str, sys::CUfunction>>,
    limits: Limits,
    sync_each_launch: bool,
}

// SAFETY: CUDA driver handles (context, stream, module, function) may be used from any thread once
// the context is current on it; every method binds the context first, and the handle maps are
// behind mutexes.
unsafe impl Send for Gpu {}
// SAFETY: as above; the driver API is thread-safe.
unsafe impl Sync for Gpu {}

fn driver_error(what: &str, e: cu::DriverError) -> String {
    let name = e
        .error_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let text = e
        .error_string()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    format!("{what} failed: {name} ({text})")
}

/// cuInit, once per process; the error (no driver, no device, ...) is kept and repeated.
fn init() -> std::result::Result<(), String> {
    static INIT: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    INIT.get_or_init(|| {
        // SAFETY: `is_culib_present` only tries to dlopen the driver library by name.
        if !unsafe { sys::is_culib_present() } {
            return Err("no NVIDIA driver library (libcuda.so) was found on this machine".into());
        }
        cu::init().map_err(|e| driver_error("cuInit", e))
    })
    .clone()
}

impl Gpu {
    /// The number of GPUs, or why there are none.
    pub fn count() -> std::result::Result<usize, String> {
        init()?;
        cu::device::get_count()
            .map(|n| n as usize)
            .map_err(|e| driver_error("cuDeviceGetCount", e))
    }

    pub fn open(ordinal: usize) -> std::result::Result<(Gpu, Limits), String> {
        let count = Gpu::count()?;
        if ordinal >= count {
            return Err(format!(
                "cuda:{ordinal} was requested, but this machine has {count} CUDA GPU(s)"
            ));
        }
        let dev = cu::device::get(ordinal as i32).map_err(|e| driver_error("cuDeviceGet", e))?;
        let name = cu::device::get_name(dev).map_err(|e| driver_error("cuDeviceGetName", e))?;
        let attr = |a: sys::CUdevice_attribute| -> std::result::Result<u32, String> {
            // SAFETY: `dev` is a valid device handle from cuDeviceGet.
            unsafe { cu::device::get_attribute(dev, a) }
                .map(|v| v as u32)
                .map_err(|e| driver_error("cuDeviceGetAttribute", e))
        };
        use sys::CUdevice_attribute as A;
        let limits = Limits {
            max_threads_per_block: attr(A::CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_BLOCK)?,
            max_block: [
                attr(A::CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_X)?,
                attr(A::CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_Y)?,
                attr(A::CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_Z)?,
            ],
            max_grid: [
                attr(A::CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_X)?,
                attr(A::CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_Y)?,
                attr(A::CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_Z)?,
            ],
            max_smem_default: attr(A::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK)?,
            max_smem_optin: attr(A::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)?,
            sm_count: attr(A::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?,
            compute_capability: (
                attr(A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?,
                attr(A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?,
            ),
        };
        // SAFETY: `dev` is valid; the primary context is retained for the life of the process.
        let ctx = unsafe { cu::primary_ctx::retain(dev) }.map_err(|e| driver_error("cuDevicePrimaryCtxRetain", e))?;
        // SAFETY: `ctx` was just retained.
        unsafe { cu::ctx::set_current(ctx) }.map_err(|e| driver_error("cuCtxSetCurrent", e))?;
        let stream =
            cu::stream::create(cu::stream::StreamKind::NonBlocking).map_err(|e| driver_error("cuStreamCreate", e))?;
        let comm_stream =
            cu::stream::create(cu::stream::StreamKind::NonBlocking).map_err(|e| driver_error("cuStreamCreate", e))?;
        let gpu = Gpu {
            ordinal,
            name,
            ctx,
            stream,
            comm_stream,
            modules: Mutex::new(HashMap::new()),
            functions: Mutex::new(HashMap::new()),
            limits,
            sync_each_launch: crate::env::cuda_sync().map_err(|e| e.to_string())?,
        };
        Ok((gpu, limits))
    }

    /// The driver's name for the device.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn err(&self, what: &str, e: cu::DriverError) -> Error {
        Error::invalid("cuda", format!("cuda:{}: {}", self.ordinal, driver_error(what, e)))
    }

    /// Makes this device's context current on the calling thread (libraries such as NCCL take
    /// their device from it).
    pub(super) fn bind(&self) -> Result<()> {
        // SAFETY: `self.ctx` is a retained primary context, valid for the life of the process.
        unsafe { cu::ctx::set_current(self.ctx) }.map_err(|e| self.err("cuCtxSetCurrent", e))
    }

    /// Waits for every copy and kernel queued on the device's stream.
    pub fn synchronize(&self) -> Result<()> {
        // SAFETY: `self.stream` was created by `open` and is never destroyed.
        unsafe { cu::stream::synchronize(self.stream) }.map_err(|e| self.err("a kernel or copy on the stream", e))
    }

    /// The stream every copy and launch of this device is ordered on (for libraries such as cuBLAS
    /// that must queue their work behind kiln's).
    pub fn stream(&self) -> sys::CUstream {
        self.stream
    }

    /// A new event, for timing work on the stream with [`Gpu::record`] and [`Gpu::elapsed`].
    pub fn event(&self) -> Result<Event> {
        self.bind()?;
        cu::event::create(sys::CUevent_flags::CU_EVENT_DEFAULT)
            .map(Event)
            .map_err(|e| self.err("cuEventCreate", e))
    }

    /// Marks the point the stream has reached: the event completes when the work queued before it
    /// has run.
    pub fn record(&self, event: &Event) -> Result<()> {
        self.bind()?;
        // SAFETY: `event.0` was created by `event` and lives until `Event` is dropped; the stream is
        // valid for the life of the process.
        unsafe { cu::event::record(event.0, self.stream) }.map_err(|e| self.err("cuEventRecord", e))
    }

    /// The communication stream: work queued there (NCCL's all-reduces) runs concurrently with the
    /// compute stream's, ordered against it only by events. Memory from [`Gpu::alloc`] may be used
    /// there only after an event recorded on the compute stream after the allocation (stream-ordered
    /// allocation), and must not be freed before the compute stream has waited for the work.
    pub fn comm_stream(&self) -> sys::CUstream {
        self.comm_stream
    }

    /// A new event for ordering streams (no timing, so recording and waiting are cheaper than with
    /// [`Gpu::event`]'s).
    pub fn marker(&self) -> Result<Event> {
        self.bind()?;
        cu::event::create(sys::CUevent_flags::CU_EVENT_DISABLE_TIMING)
            .map(Event)
            .map_err(|e| self.err("cuEventCreate", e))
    }

    /// The raw stream of `lane`.
    pub fn stream_of(&self, lane: Lane) -> sys::CUstream {
        match lane {
            Lane::Compute => self.stream,
            Lane::Comm => self.comm_stream,
        }
    }

    /// Marks the point `lane` has reached.
    pub fn record_on(&self, event: &Event, lane: Lane) -> Result<()> {
        self.bind()?;
        // SAFETY: `event.0` is alive until `Event` is dropped; both streams of this device live for
        // the life of the process.
        unsafe { cu::event::record(event.0, self.stream_of(lane)) }.map_err(|e| self.err("cuEventRecord", e))
    }

    /// Makes `lane` wait, on the device and without blocking the host, until the work before
    /// `event`'s last record has run: what `lane` queues afterwards starts after it. An event never
    /// recorded is complete: the wait is then a no-op.
    pub fn wait_event(&self, lane: Lane, event: &Event) -> Result<()> {
        self.bind()?;
        // SAFETY: both handles are alive (the event until `Event` is dropped, the streams for the life
        // of the process); the driver captures the event's state at this call, so the event may be
        // re-recorded or destroyed afterwards.
        unsafe {
            cu::stream::wait_event(
                self.stream_of(lane),
                event.0,
                sys::CUevent_wait_flags::CU_EVENT_WAIT_DEFAULT,
            )
        }
        .map_err(|e| self.err("cuStreamWaitEvent", e))
    }

    /// Whether the work before `event`'s last record has all run (`cuEventQuery`); never blocks.
    /// A fault in that work is reported as an error.
    pub fn query(&self, event: &Event) -> Result<bool> {
        self.bind()?;
        // SAFETY: `event.0` is alive until `Event` is dropped.
        match unsafe { cu::event::query(event.0) } {
            Ok(()) => Ok(true),
            Err(e) if e.0 == sys::CUresult::CUDA_ERROR_NOT_READY => Ok(false),
            Err(e) => Err(self.err("cuEventQuery", e)),
        }
    }

    /// Blocks the host until the work before `event`'s last record has run.
    pub fn host_wait(&self, event: &Event) -> Result<()> {
        self.bind()?;
        // SAFETY: `event.0` is alive until `Event` is dropped.
        unsafe { cu::event::synchronize(event.0) }.map_err(|e| self.err("cuEventSynchronize", e))
    }

    /// Seconds of GPU time between two recorded events (waits for `end`).
    pub fn elapsed(&self, start: &Event, end: &Event) -> Result<f64> {
        self.bind()?;
        // SAFETY: both events were created by `event`, recorded on this stream and are alive.
        let ms = unsafe {
            cu::event::synchronize(end.0).map_err(|e| self.err("cuEventSynchronize", e))?;
            cu::event::elapsed(start.0, end.0).map_err(|e| self.err("cuEventElapsedTime", e))?
        };
        Ok(ms as f64 * 1e-3)
    }

    pub fn alloc(&self, bytes: usize) -> Result<u64> {
        self.bind()?;
        // SAFETY: the stream is valid; the memory is only used on this stream.
        unsafe { cu::malloc_async(self.stream, bytes) }.map_err(|e| self.err(&format!("allocating {bytes} bytes"), e))
    }

    /// # Safety
    /// As [`Executor::free`](super::device::Executor::free).
    pub unsafe fn free(&self, ptr: u64) -> Result<()> {
        self.bind()?;
        // SAFETY: `ptr` came from `alloc` on this stream and is freed once (the caller's contract);
        // earlier work on the stream that uses it finishes before the free takes effect.
        unsafe { cu::free_async(ptr, self.stream) }.map_err(|e| self.err("freeing", e))
    }

    /// # Safety
    /// As [`Executor::htod`](super::device::Executor::htod).
    pub unsafe fn htod(&self, dst: u64, src: &[u8]) -> Result<()> {
        if src.is_empty() {
            return Ok(());
        }
        self.bind()?;
        // SAFETY: `dst..dst + src.len()` lies in a live allocation of this device (the caller's
        // contract); waiting for the stream before returning means the
        // host slice is no longer read once this function returns.
        unsafe { cu::memcpy_htod_async(dst, src, self.stream) }.map_err(|e| self.err("copying to the device", e))?;
        self.synchronize()
    }

    /// # Safety
    /// As [`Executor::dtoh`](super::device::Executor::dtoh).
    pub unsafe fn dtoh(&self, dst: &mut [u8], src: u64) -> Result<()> {
        if dst.is_empty() {
            return Ok(());
        }
        self.bind()?;
        // SAFETY: `src..src + dst.len()` lies in a live allocation (the caller's contract); the host slice is written only
        // until the stream synchronisation below returns.
        unsafe { cu::memcpy_dtoh_async(dst, src, self.stream) }.map_err(|e| self.err("copying to the host", e))?;
        self.synchronize()
    }

    /// # Safety
    /// As [`Executor::dtod`](super::device::Executor::dtod).
    pub unsafe fn dtod(&self, dst: u64, src: u64, bytes: usize) -> Result<()> {
        if bytes == 0 {
            return Ok(());
        }
        self.bind()?;
        // SAFETY: both ranges lie in live allocations of this device, used on this stream only
        // (the caller's contract).
        unsafe { cu::memcpy_dtod_async(dst, src, bytes, self.stream) }.map_err(|e| self.err("copying on the device", e))
    }

    /// The module of `file`, loaded at first use.
    fn module(&self, file: &'static str) -> Result<sys::CUmodule> {
        let mut modules = self.modules.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(&m) = modules.get(file) {
            return Ok(m);
        }
        let kf = kernels::file(file).ok_or_else(|| Error::invalid("cuda", format!("no kernel file {file}.cu")))?;
        let (major, minor) = self.limits.compute_capability;
        let sm = major * 10 + minor;
        // A CUBIN runs on GPUs of the same major version and an equal or newer minor version.
        let cubin = kf
            .cubins
            .iter()
            .filter(|(a, _)| a / 10 == major && *a <= sm)
            .max_by_key(|(a, _)| *a)
            .map(|(_, c)| c.to_vec());
        let image: Vec<u8> = match (cubin, kf.ptx) {
            (Some(c), _) => c,
            (None, Some(ptx)) => {
                let mut p = ptx.to_vec();
                p.push(0); // cuModuleLoadData reads PTX as a C string
                p
            }
            (None, None) => compile_now(kf, sm)?,
        };
        self.bind()?;
        // SAFETY: `image` is a complete CUBIN or NUL-terminated PTX that outlives the call (the
        // driver copies what it needs).
        let m = unsafe { cu::module::load_data(image.as_ptr().cast::<c_void>()) }.map_err(|e| {
            self.err(
                &format!("loading kernels/{file}.cu (sm_{sm}; PTX from CUDA 12.9 needs a driver >= 575)"),
                e,
            )
        })?;
        modules.insert(file, m);
        Ok(m)
    }

    fn function(&self, kernel: &Kernel) -> Result<sys::CUfunction> {
        if let Some(&f) = self
            .functions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(kernel.name)
        {
            return Ok(f);
        }
        let module = self.module(kernel.file)?;
        let name = std::ffi::CString::new(kernel.name).expect("kernel names have no NUL");
        // SAFETY: `module` is loaded and never unloaded; `name` is a valid C string.
        let f = unsafe { cu::module::get_function(module, name) }.map_err(|e| {
            self.err(
                &format!("finding kernel {} in kernels/{}.cu", kernel.name, kernel.file),
                e,
            )
        })?;
        self.functions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(kernel.name, f);
        Ok(f)
    }

    pub fn launch(&self, kernel: &Kernel, cfg: &LaunchConfig, args: &mut Args) -> Result<()> {
        let f = self.function(kernel)?;
        self.bind()?;
        if cfg.dyn_smem > self.limits.max_smem_default {
            // SAFETY: `f` is a valid function of a loaded module.
            unsafe {
                cu::function::set_function_attribute(
                    f,
                    sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                    cfg.dyn_smem as i32,
                )
            }
            .map_err(|e| self.err(&format!("raising {}'s shared memory limit", kernel.name), e))?;
        }
        let mut ptrs = args.pointers();
        let g = (cfg.grid[0], cfg.grid[1], cfg.grid[2]);
        let b = (cfg.block[0], cfg.block[1], cfg.block[2]);
        // SAFETY: `f` is a valid kernel; `ptrs` holds one pointer per kernel parameter to a value of
        // that parameter's type (the launch wrappers push them in the kernel's order); the driver
        // copies the values at launch, so `args` need not outlive the call; every device pointer
        // among them is a live allocation on this stream of the size the kernel indexes.
        unsafe { cu::launch_kernel(f, g, b, cfg.dyn_smem, self.stream, &mut ptrs) }.map_err(|e| {
            Error::invalid(
                kernel.name,
                format!(
                    "launch with grid {:?}, block {:?}, {} bytes of shared memory failed: {}",
                    cfg.grid,
                    cfg.block,
                    cfg.dyn_smem,
                    driver_error("cuLaunchKernel", e)
                ),
            )
        })?;
        if self.sync_each_launch {
            self.synchronize()
                .map_err(|e| Error::invalid(kernel.name, format!("kernel failed: {e}")))?;
        }
        Ok(())
    }
}

/// A CUDA event of one GPU (for timing, [`Gpu::event`], or for ordering streams, [`Gpu::marker`]),
/// destroyed when dropped.
pub struct Event(sys::CUevent);

impl Drop for Event {
    fn drop(&mut self) {
        // SAFETY: the event was created by `Gpu::event` and is destroyed once; the driver releases it
        // after any pending record completes.
        let _ = unsafe { cu::event::destroy(self.0) };
    }
}

/// Compiles a kernel file now, for a build that had no NVRTC.
fn compile_now(kf: &kernels::KernelFile, sm: u32) -> Result<Vec<u8>> {
    static NVRTC: OnceLock<std::result::Result<nvrtc::Nvrtc, String>> = OnceLock::new();
    let nv = NVRTC
        .get_or_init(|| nvrtc::locate(Path::new(env!("CARGO_MANIFEST_DIR"))))
        .as_ref()
        .map_err(|why| {
            Error::invalid(
                "cuda",
                format!("kiln was built without NVRTC, so its kernels compile at first use, but {why}"),
            )
        })?;
    let shown = format!("kernels/{}.cu", kf.name);
    nv.compile(&shown, kf.source, kernels::headers(), sm)
        .map(|c| c.cubin)
        .map_err(|e| Error::invalid("cuda", e))
}
