//! NCCL, NVIDIA's collective communication library, for the gradients of data-parallel CUDA ranks:
//! an f32 sum all-reduce (`ncclAllReduce`) of a device buffer, queued on the device's compute stream
//! behind kiln's kernels ([`Comm::all_reduce_sum_f32`]), or on its communication stream beside them
//! ([`Comm::start_all_reduce_sum_f32`], which overlaps the backward), so the gradients never leave
//! the GPU (docs/distributed.md, "NCCL").
//!
//! NCCL is loaded at run time, like the driver and cuBLAS: kiln builds without it and a machine
//! without it is affected only when NCCL is asked for. The library is opened here with `libloading`
//! rather than through cudarc's `nccl` module, for three reasons found in cudarc 0.19.10's source:
//! its loader looks for `libnccl.so` and CUDA-versioned names (`libnccl.so.12`, ...) but never
//! `libnccl.so.2`, the only name the runtime packages install (Debian's `libnccl2`, the
//! `nvidia-nccl-cu12` wheel that PyTorch depends on); it panics when the library or a symbol is
//! missing; and its safe `Comm` wants cudarc's own context and stream objects, while kiln drives the
//! GPU through the raw driver API (real.rs). The handful of entry points kiln needs are bound here;
//! their signatures and enum values are NCCL 2.x's `nccl.h` (identical in cudarc's generated
//! bindings, `cudarc/src/nccl/sys/mod.rs`: `ncclFloat32 = 7`, `ncclSum = 0`, a 128-byte
//! `ncclUniqueId` passed by value).
//!
//! Tried in order: the file named by `KILN_NCCL` (a path), then `libnccl.so.2`, then `libnccl.so`.
//! A missing library or symbol is an error naming what was tried and what to install, never a panic.

use super::device::{CudaDevice, Executor};
use super::{CudaStorage, OnCommStream};
use crate::tensor::dtype::DType;
use crate::{Error, Result};
use std::ffi::{c_char, c_int, c_void, CStr};
use std::sync::{Arc, OnceLock};

/// The library names tried after `KILN_NCCL`, in order.
pub const LIBRARY_NAMES: [&str; 2] = ["libnccl.so.2", "libnccl.so"];

/// The environment variable that names the NCCL library file to load first.
pub const PATH_VAR: &str = "KILN_NCCL";

/// The bytes of an `ncclUniqueId`: what rank 0 makes and every rank needs to join the communicator.
pub const UNIQUE_ID_BYTES: usize = 128;

/// `ncclUniqueId`: an opaque 128-byte handle of one communicator (an address and a magic number).
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct UniqueId {
    /// The bytes as NCCL wrote them.
    pub internal: [u8; UNIQUE_ID_BYTES],
}

impl std::fmt::Debug for UniqueId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "UniqueId({:02x?}...)", &self.internal[..8])
    }
}

type NcclResult = c_int;
type RawComm = *mut c_void;
const NCCL_SUCCESS: NcclResult = 0;
/// `ncclFloat32` of `ncclDataType_t`.
const NCCL_FLOAT32: c_int = 7;
/// `ncclSum` of `ncclRedOp_t`.
const NCCL_SUM: c_int = 0;

type GetVersion = unsafe extern "C" fn(*mut c_int) -> NcclResult;
type GetUniqueId = unsafe extern "C" fn(*mut UniqueId) -> NcclResult;
type CommInitRank = unsafe extern "C" fn(*mut RawComm, c_int, UniqueId, c_int) -> NcclResult;
type CommDestroy = unsafe extern "C" fn(RawComm) -> NcclResult;
type AllReduce =
    unsafe extern "C" fn(*const c_void, *mut c_void, usize, c_int, c_int, RawComm, *mut c_void) -> NcclResult;
type GetErrorString = unsafe extern "C" fn(NcclResult) -> *const c_char;

/// The loaded library and the entry points kiln calls.
pub struct Nccl {
    get_unique_id: GetUniqueId,
    comm_init_rank: CommInitRank,
    comm_destroy: CommDestroy,
    all_reduce: AllReduce,
    get_error_string: GetErrorString,
    /// The file that was opened (the name given to the loader).
    file: String,
    /// `ncclGetVersion`'s code, e.g. 22105 for 2.21.5.
    version: i32,
    // kept open (and last): the function pointers above point into it
    _lib: libloading::Library,
}

/// The names [`load`] tries, in order: `KILN_NCCL`'s value when `var` finds one, then
/// [`LIBRARY_NAMES`]. `var` is an environment lookup (`std::env::var(..).ok()`).
pub fn candidates(var: impl Fn(&str) -> Option<String>) -> Vec<String> {
    var(PATH_VAR)
        .filter(|p| !p.trim().is_empty())
        .into_iter()
        .chain(LIBRARY_NAMES.iter().map(|n| n.to_string()))
        .collect()
}

/// What to do when no candidate loads: the end of every loading error.
const INSTALL_HINT: &str = "install NCCL (Debian/Ubuntu: `apt-get install libnccl2`; or `pip install \
     nvidia-nccl-cu12` and add its `site-packages/nvidia/nccl/lib` folder to LD_LIBRARY_PATH), or set \
     KILN_NCCL to the path of libnccl.so.2; without NCCL, CUDA ranks train with --collective mpi";

/// Opens the first of `names` that loads and binds NCCL's entry points; the error names every
/// candidate with its loader error, and what to install.
pub fn load_from(names: &[String]) -> Result<Nccl> {
    let mut tried = Vec::with_capacity(names.len());
    for name in names {
        // SAFETY: opening a shared library runs its initialisers; NCCL's only set up its own state.
        match unsafe { libloading::Library::new(name) } {
            Ok(lib) => return bind(lib, name),
            // libloading's own message is "dlopen failed"; the loader's reason is its source
            Err(e) => tried.push(match std::error::Error::source(&e) {
                Some(why) => format!("{name} ({why})"),
                None => format!("{name} ({e})"),
            }),
        }
    }
    Err(unavailable(format!(
        "the NCCL library could not be loaded: tried {}; {INSTALL_HINT}",
        tried.join(", ")
    )))
}

/// NCCL, loaded once per process from [`candidates`] of the environment; the error of the first
/// attempt is kept and repeated.
pub fn load() -> Result<&'static Nccl> {
    static NCCL: OnceLock<std::result::Result<Nccl, String>> = OnceLock::new();
    NCCL.get_or_init(|| load_from(&candidates(|v| std::env::var(v).ok())).map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|msg| unavailable(msg.trim_start_matches("nccl: ").to_string()))
}

fn unavailable(msg: String) -> Error {
    Error::Invalid { op: "nccl", msg }
}

fn bind(lib: libloading::Library, file: &str) -> Result<Nccl> {
    fn sym<T: Copy>(lib: &libloading::Library, file: &str, name: &str) -> Result<T> {
        // SAFETY: `T` is the C signature of `name` in NCCL 2.x's nccl.h (see the type aliases).
        unsafe { lib.get::<T>(name.as_bytes()) }.map(|s| *s).map_err(|e| {
            unavailable(format!(
                "{file} was loaded but has no {name} ({e}): not an NCCL 2 library? {INSTALL_HINT}"
            ))
        })
    }
    let get_version: GetVersion = sym(&lib, file, "ncclGetVersion")?;
    let mut version = 0;
    // SAFETY: ncclGetVersion writes one int.
    let rc = unsafe { get_version(&mut version) };
    if rc != NCCL_SUCCESS {
        return Err(unavailable(format!("{file}: ncclGetVersion failed with code {rc}")));
    }
    Ok(Nccl {
        get_unique_id: sym(&lib, file, "ncclGetUniqueId")?,
        comm_init_rank: sym(&lib, file, "ncclCommInitRank")?,
        comm_destroy: sym(&lib, file, "ncclCommDestroy")?,
        all_reduce: sym(&lib, file, "ncclAllReduce")?,
        get_error_string: sym(&lib, file, "ncclGetErrorString")?,
        file: file.to_string(),
        version,
        _lib: lib,
    })
}

/// "2.21.5" from `ncclGetVersion`'s code (major·10000 + minor·100 + patch since 2.9; major·1000 +
/// minor·100 + patch before).
pub fn version_string(code: i32) -> String {
    if code >= 10000 {
        format!("{}.{}.{}", code / 10000, code / 100 % 100, code % 100)
    } else {
        format!("{}.{}.{}", code / 1000, code / 100 % 10, code % 100)
    }
}

impl Nccl {
    /// The library file that was loaded.
    pub fn file(&self) -> &str {
        &self.file
    }

    /// The library's version, e.g. "2.21.5".
    pub fn version(&self) -> String {
        version_string(self.version)
    }

    fn check(&self, what: &str, rc: NcclResult) -> Result<()> {
        if rc == NCCL_SUCCESS {
            return Ok(());
        }
        // SAFETY: ncclGetErrorString returns a static C string for any code.
        let text = unsafe {
            let p = (self.get_error_string)(rc);
            if p.is_null() {
                String::new()
            } else {
                CStr::from_ptr(p).to_string_lossy().into_owned()
            }
        };
        Err(unavailable(format!(
            "{what} failed: {text} (code {rc}; NCCL_DEBUG=WARN prints NCCL's own account)"
        )))
    }

    /// A fresh unique id (`ncclGetUniqueId`), made by one rank and given to every rank.
    pub fn unique_id(&self) -> Result<UniqueId> {
        let mut id = UniqueId {
            internal: [0; UNIQUE_ID_BYTES],
        };
        // SAFETY: writes the 128 bytes of `id`.
        let rc = unsafe { (self.get_unique_id)(&mut id) };
        self.check("ncclGetUniqueId", rc)?;
        Ok(id)
    }
}

/// One rank's NCCL communicator on its GPU (`ncclCommInitRank`), destroyed when dropped.
pub struct Comm {
    raw: RawComm,
    nccl: &'static Nccl,
    device: Arc<CudaDevice>,
    rank: usize,
    world: usize,
}

// SAFETY: an NCCL communicator may be used from any thread as long as calls on it do not overlap;
// kiln's training loop makes them from one thread (a `Comm` is not `Sync`).
unsafe impl Send for Comm {}

impl std::fmt::Debug for Comm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Comm(rank {} of {} on {}, NCCL {})",
            self.rank,
            self.world,
            self.device.device(),
            self.nccl.version()
        )
    }
}

impl Comm {
    /// Joins the communicator of `id` as `rank` of `world` on `device` (a GPU): every rank of the
    /// communicator must call it (it returns once all have). Emu is refused: NCCL needs GPUs.
    pub fn init_rank(
        nccl: &'static Nccl,
        device: &Arc<CudaDevice>,
        id: &UniqueId,
        rank: usize,
        world: usize,
    ) -> Result<Comm> {
        let Executor::Real(gpu) = device.executor() else {
            return Err(unavailable(format!(
                "NCCL runs on CUDA GPUs, not on {} (Emu ranks reduce through MPI: --collective mpi)",
                device.device()
            )));
        };
        if rank >= world {
            return Err(unavailable(format!("rank {rank} of {world} ranks does not exist")));
        }
        let n = |v: usize| c_int::try_from(v).map_err(|_| unavailable(format!("{v} ranks are more than NCCL counts")));
        let (nranks, r) = (n(world)?, n(rank)?);
        // NCCL takes the device from the calling thread's current context
        gpu.bind()?;
        let mut raw: RawComm = std::ptr::null_mut();
        // SAFETY: `raw` receives the communicator; `id` is passed by value as nccl.h declares.
        let rc = unsafe { (nccl.comm_init_rank)(&mut raw, nranks, *id, r) };
        nccl.check(
            &format!("ncclCommInitRank (rank {rank} of {world} on {})", device.device()),
            rc,
        )?;
        Ok(Comm {
            raw,
            nccl,
            device: device.clone(),
            rank,
            world,
        })
    }

    /// This communicator's rank.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// The number of ranks of this communicator.
    pub fn world(&self) -> usize {
        self.world
    }

    /// The device of this rank.
    pub fn device(&self) -> &Arc<CudaDevice> {
        &self.device
    }

    /// Waits for the work queued on this rank's GPU stream, the all-reduces included.
    pub fn synchronize(&self) -> Result<()> {
        match self.device.executor() {
            Executor::Real(gpu) => gpu.synchronize(),
            Executor::Emu(_) => Ok(()),
        }
    }

    /// The NCCL library this communicator runs on.
    pub fn library(&self) -> &'static Nccl {
        self.nccl
    }

    /// The elementwise sum over the ranks of elements `offset..offset + len` of `src` (f32, on this
    /// communicator's GPU), in a new buffer of `len` elements on the same GPU. The all-reduce is
    /// queued on the device's stream after the work that wrote `src` and before the work queued
    /// after it; nothing is copied to the host.
    pub fn all_reduce_sum_f32(&self, src: &CudaStorage, offset: usize, len: usize) -> Result<CudaStorage> {
        self.check_source(src, offset, len)?;
        let out = CudaStorage::alloc(&self.device, DType::F32, len)?;
        if len == 0 {
            return Ok(out);
        }
        let Executor::Real(gpu) = self.device.executor() else {
            return Err(unavailable("an NCCL communicator on Emu".into())); // init_rank refuses Emu
        };
        gpu.bind()?;
        let send = src.ptr() + (offset * 4) as u64;
        // SAFETY: `send..send + 4·len` lies in `src` (checked above) and `out` holds `len` f32, both
        // live allocations of this communicator's device, used on its stream: NCCL reads and writes
        // them in stream order, before any later free (stream-ordered) or copy on that stream.
        let rc = unsafe {
            (self.nccl.all_reduce)(
                send as *const c_void,
                out.ptr() as *mut c_void,
                len,
                NCCL_FLOAT32,
                NCCL_SUM,
                self.raw,
                gpu.stream() as *mut c_void,
            )
        };
        self.nccl.check(
            &format!("ncclAllReduce of {len} f32 (rank {} of {})", self.rank, self.world),
            rc,
        )?;
        Ok(out)
    }

    /// [`Comm::all_reduce_sum_f32`] without waiting: elements `offset..offset + len` of `src` are
    /// copied (on the compute stream, behind the work that wrote them) into a buffer that the
    /// returned handle owns, and summed there in place by `ncclAllReduce` on the device's
    /// communication stream, concurrently with the kernels queued afterwards on the compute
    /// stream. [`OnCommStream::test`] asks whether the sum is done; [`OnCommStream::wait`] gives
    /// the buffer back with the sum, ordered before the compute stream's later work (no host
    /// synchronisation). The copy is what makes the handle safe whatever the caller does with
    /// `src` (its free is queued on the compute stream, which does not wait for NCCL); it costs
    /// one device-to-device copy of the bucket, small beside the all-reduce itself.
    pub fn start_all_reduce_sum_f32(&self, src: &CudaStorage, offset: usize, len: usize) -> Result<OnCommStream> {
        self.check_source(src, offset, len)?;
        let buf = CudaStorage::alloc(&self.device, DType::F32, len)?;
        buf.buf.copy_from(0, &src.buf, offset * 4, len * 4)?;
        if len == 0 {
            return OnCommStream::start(buf, |_, _| Ok(()));
        }
        let Executor::Real(gpu) = self.device.executor() else {
            return Err(unavailable("an NCCL communicator on Emu".into())); // init_rank refuses Emu
        };
        OnCommStream::start(buf, |buf, stream| {
            let stream = stream.ok_or_else(|| unavailable("a GPU without a communication stream".into()))?;
            gpu.bind()?;
            let ptr = buf.ptr();
            // SAFETY: `buf` holds `len` f32 of this communicator's device; NCCL sums in place (send
            // and receive buffers may be the same) on `stream`, the device's communication stream,
            // which OnCommStream::start made wait for the copy above, and the handle keeps `buf`
            // alive and unfreed until the compute stream has waited for this work.
            let rc = unsafe {
                (self.nccl.all_reduce)(
                    ptr as *const c_void,
                    ptr as *mut c_void,
                    len,
                    NCCL_FLOAT32,
                    NCCL_SUM,
                    self.raw,
                    stream as *mut c_void,
                )
            };
            self.nccl.check(
                &format!(
                    "ncclAllReduce of {len} f32 on the communication stream (rank {} of {})",
                    self.rank, self.world
                ),
                rc,
            )
        })
    }

    /// Checks that `src` is an f32 buffer of this communicator's device holding
    /// `offset..offset + len`.
    fn check_source(&self, src: &CudaStorage, offset: usize, len: usize) -> Result<()> {
        if src.dtype() != DType::F32 {
            return Err(Error::DType {
                op: "nccl all-reduce",
                msg: format!("sums f32 buffers, not {}", src.dtype()),
            });
        }
        if !Arc::ptr_eq(src.cuda_device(), &self.device) {
            return Err(Error::DeviceMismatch {
                op: "nccl all-reduce",
                lhs: self.device.device(),
                rhs: src.device(),
            });
        }
        if offset.checked_add(len).is_none_or(|end| end > src.len()) {
            return Err(Error::index(
                "nccl all-reduce",
                format!("elements {offset}..{offset}+{len} of a buffer of {}", src.len()),
            ));
        }
        Ok(())
    }
}

impl Drop for Comm {
    fn drop(&mut self) {
        // SAFETY: `raw` came from ncclCommInitRank and is destroyed once; ncclCommDestroy waits for
        // the communicator's queued operations. An error here has no one to report to.
        let _ = unsafe { (self.nccl.comm_destroy)(self.raw) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_put_kiln_nccl_first_then_the_runtime_and_development_names() {
        assert_eq!(candidates(|_| None), vec!["libnccl.so.2", "libnccl.so"]);
        let with = candidates(|v| (v == PATH_VAR).then(|| "/opt/nccl/lib/libnccl.so.2".to_string()));
        assert_eq!(with, vec!["/opt/nccl/lib/libnccl.so.2", "libnccl.so.2", "libnccl.so"]);
        assert_eq!(
            candidates(|_| Some("  ".into())).len(),
            2,
            "an empty KILN_NCCL is ignored"
        );
    }

    #[test]
    fn a_missing_library_is_an_error_naming_nccl_every_name_tried_and_what_to_install() {
        let names = vec![
            "/nonexistent/libnccl.so.2".to_string(),
            "libnccl-kiln-test-absent.so".to_string(),
        ];
        let err = load_from(&names).err().expect("no such library loads").to_string();
        for part in [
            "nccl:",
            "NCCL library could not be loaded",
            "/nonexistent/libnccl.so.2",
            "libnccl-kiln-test-absent.so",
            "apt-get install libnccl2",
            "nvidia-nccl-cu12",
            "KILN_NCCL",
            "--collective mpi",
        ] {
            assert!(err.contains(part), "{part:?} missing from: {err}");
        }
    }

    #[test]
    fn a_library_without_nccls_symbols_is_refused_with_an_error() {
        // libc loads everywhere and has no ncclGetVersion
        let err = load_from(&["libc.so.6".to_string()])
            .err()
            .expect("libc is not NCCL")
            .to_string();
        assert!(err.contains("libc.so.6 was loaded but has no ncclGetVersion"), "{err}");
    }

    #[test]
    fn load_without_nccl_on_the_machine_is_an_error_not_a_panic() {
        match load() {
            Ok(n) => eprintln!(
                "NCCL {} is installed here ({}): nothing to check",
                n.version(),
                n.file()
            ),
            Err(e) => {
                let msg = e.to_string();
                assert!(msg.starts_with("nccl: the NCCL library could not be loaded"), "{msg}");
                assert!(msg.contains("libnccl.so.2") && msg.contains("libnccl.so ("), "{msg}");
                // the kept error is repeated, not retried into a different one
                assert_eq!(load().err().unwrap().to_string(), msg);
            }
        }
    }

    #[test]
    fn versions_read_as_nccl_prints_them() {
        assert_eq!(version_string(22105), "2.21.5");
        assert_eq!(version_string(22703), "2.27.3");
        assert_eq!(version_string(2804), "2.8.4");
    }

    #[test]
    fn a_unique_id_is_128_bytes_as_nccl_h_declares() {
        assert_eq!(std::mem::size_of::<UniqueId>(), 128);
        assert_eq!(std::mem::align_of::<UniqueId>(), 1);
    }
}
