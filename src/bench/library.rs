//! The libraries kiln's matmul is compared with, loaded at run time so that kiln builds and runs
//! without them:
//! - on a GPU, cuBLAS (`cublasGemmEx` through cudarc, f32 accumulation; f32 without TF32);
//! - on the CPU, a CBLAS `sgemm`, OpenBLAS by preference: the library NumPy uses, which
//!   docs/perf.md measured as the fastest f32 GEMM on this kind of machine besides kiln's own. It is
//!   taken from `KILN_CBLAS` (a path; NumPy's wheel ships one as
//!   `numpy.libs/libscipy_openblas64_*.so`), else `libopenblas.so.0`, `libopenblas.so`,
//!   `libcblas.so.3` or `libblas.so.3`.
//!
//! A missing library is an error for that row of the report, never a panic.

use super::work::{Setup, Work};
use crate::backend::cuda::device::{CudaDevice, Executor};
use crate::backend::cuda::memory::DeviceBuffer;
use crate::backend::cuda::real::Gpu;
use crate::{DType, Device, Error, Result, Rng};
use cudarc::cublas::{result as cublas, sys as cublas_sys};
use half::bf16;
use std::ffi::c_void;
use std::sync::{Arc, OnceLock};

/// The library's `[M, K] x [K, N]` product in `dtype` at `s.dims` = [M, N, K], on `s.dev`.
pub fn gemm(s: &Setup, rng: &mut Rng, dtype: DType) -> Result<(String, Work)> {
    let (m, n, k) = (s.dims[0], s.dims[1], s.dims[2]);
    match s.dev {
        Device::Cuda(_) => cublas_gemm(s, rng, dtype, m, n, k),
        Device::Cpu if dtype == DType::F32 => cblas_sgemm(s, rng, m, n, k),
        Device::Cpu => Err(unavailable(format!("no CPU library matmul in {dtype}"))),
        Device::Emu => Err(unavailable("no library runs on Emu".into())),
    }
}

fn unavailable(msg: String) -> Error {
    Error::invalid("bench", msg)
}

fn random_f32(n: usize, rng: &mut Rng) -> Vec<f32> {
    (0..n).map(|_| rng.normal() as f32).collect()
}

// ---------------------------------------------------------------------------------------------
// cuBLAS

/// A cuBLAS handle bound to the stream of the first GPU that asked (kiln benchmarks one device per
/// process).
struct Cublas {
    handle: cublas_sys::cublasHandle_t,
    ordinal: Device,
}

// SAFETY: a cuBLAS handle may be used from any thread as long as calls on it do not overlap; the
// benchmark makes them from one thread at a time.
unsafe impl Send for Cublas {}
// SAFETY: as above.
unsafe impl Sync for Cublas {}

fn cublas_handle(dev: &CudaDevice, gpu: &Gpu) -> Result<&'static Cublas> {
    static HANDLE: OnceLock<std::result::Result<Cublas, String>> = OnceLock::new();
    let h = HANDLE
        .get_or_init(|| {
            // SAFETY: only tries to dlopen libcublas by its usual names.
            if !unsafe { cublas_sys::is_culib_present() } {
                return Err("cuBLAS (libcublas.so) was not found; add its folder to LD_LIBRARY_PATH".into());
            }
            gpu.synchronize().map_err(|e| e.to_string())?; // makes the device's context current
            let handle = cublas::create_handle().map_err(|e| format!("cublasCreate failed: {e}"))?;
            // SAFETY: `handle` was just created; the stream lives for the whole process. The driver's
            // CUstream and the runtime's cudaStream_t are the same object.
            unsafe { cublas::set_stream(handle, gpu.stream() as cublas_sys::cudaStream_t) }
                .map_err(|e| format!("cublasSetStream failed: {e}"))?;
            Ok(Cublas {
                handle,
                ordinal: dev.device(),
            })
        })
        .as_ref()
        .map_err(|e| unavailable(e.clone()))?;
    if h.ordinal != dev.device() {
        return Err(unavailable(format!(
            "cuBLAS is bound to {} in this process, not {}",
            h.ordinal,
            dev.device()
        )));
    }
    Ok(h)
}

/// Device buffers of random values: `sets` copies of A [M, K] and B [K, N], and C [M, N].
fn device_operands(
    dev: &Arc<CudaDevice>,
    rng: &mut Rng,
    dtype: DType,
    sets: usize,
    len: [usize; 3],
) -> Result<Vec<DeviceBuffer>> {
    let size = dtype.size_in_bytes();
    let mut bufs = Vec::with_capacity(2 * sets + 1);
    for i in 0..2 * sets + 1 {
        let n = len[if i == 2 * sets { 2 } else { i % 2 }];
        let buf = DeviceBuffer::alloc(dev, n * size)?;
        let values = random_f32(n, rng);
        match dtype {
            DType::BF16 => {
                let h: Vec<bf16> = values.iter().map(|&v| bf16::from_f32(v)).collect();
                buf.write(0, bytemuck::cast_slice(&h))?
            }
            _ => buf.write(0, bytemuck::cast_slice(&values))?,
        }
        bufs.push(buf);
    }
    Ok(bufs)
}

fn cublas_gemm(s: &Setup, rng: &mut Rng, dtype: DType, m: usize, n: usize, k: usize) -> Result<(String, Work)> {
    use cublas_sys::{cublasComputeType_t as Compute, cublasOperation_t as Op, cudaDataType as Ty};
    let dev = CudaDevice::get(&s.dev)?;
    let Executor::Real(gpu) = dev.executor() else {
        return Err(unavailable("cuBLAS needs a GPU".into()));
    };
    let ty = match dtype {
        DType::F32 => Ty::CUDA_R_32F,
        DType::BF16 => Ty::CUDA_R_16BF,
        DType::F16 => Ty::CUDA_R_16F,
        other => return Err(unavailable(format!("no cuBLAS comparison for {other}"))),
    };
    let handle = cublas_handle(&dev, gpu)?.handle;
    let dim = |v: usize| i32::try_from(v).map_err(|_| unavailable(format!("{v} is too large for cuBLAS")));
    let (mi, ni, ki) = (dim(m)?, dim(n)?, dim(k)?);
    let size = dtype.size_in_bytes() as f64;
    let in_bytes = (m * k + k * n) as f64 * size;
    let sets = s.sets(in_bytes);
    let bufs = device_operands(&dev, rng, dtype, sets, [m * k, k * n, m * n])?;
    let run = move |i: usize| -> Result<()> {
        let (a, b, c) = (&bufs[2 * (i % sets)], &bufs[2 * (i % sets) + 1], &bufs[2 * sets]);
        let (alpha, beta) = (1.0f32, 0.0f32);
        // Row-major C = A·B is column-major Cᵀ = Bᵀ·Aᵀ: B as the left operand, leading dims N, K, N.
        // SAFETY: the buffers hold K·N, M·K and M·N elements of `ty`, alive for the closure's life;
        // alpha and beta are f32 host values, as CUBLAS_COMPUTE_32F takes them; the handle's stream
        // is kiln's, so the product is ordered after the uploads and before the timing events.
        unsafe {
            cublas::gemm_ex(
                handle,
                Op::CUBLAS_OP_N,
                Op::CUBLAS_OP_N,
                ni,
                mi,
                ki,
                (&alpha as *const f32).cast::<c_void>(),
                b.ptr() as *const c_void,
                ty,
                ni,
                a.ptr() as *const c_void,
                ty,
                ki,
                (&beta as *const f32).cast::<c_void>(),
                c.ptr() as *mut c_void,
                ty,
                ni,
                Compute::CUBLAS_COMPUTE_32F,
                cublas_sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .map_err(|e| unavailable(format!("cublasGemmEx ({m}x{n}x{k}, {dtype}) failed: {e}")))
    };
    let work = Work {
        flops: 2.0 * (m * n * k) as f64,
        bytes: in_bytes + (m * n) as f64 * size,
        written: (m * n) as f64 * size,
        sets,
        run: Box::new(run),
        check: None,
    };
    Ok(("cublas".into(), work))
}

// ---------------------------------------------------------------------------------------------
// CBLAS on the CPU

const ROW_MAJOR: i32 = 101;
const NO_TRANS: i32 = 111;

type SgemmLp64 =
    unsafe extern "C" fn(i32, i32, i32, i32, i32, i32, f32, *const f32, i32, *const f32, i32, f32, *mut f32, i32);
type SgemmIlp64 =
    unsafe extern "C" fn(i32, i32, i32, i64, i64, i64, f32, *const f32, i64, *const f32, i64, f32, *mut f32, i64);

/// `cblas_sgemm` with 32-bit or (OpenBLAS's `64_` builds) 64-bit sizes.
#[derive(Clone, Copy)]
enum Sgemm {
    Lp64(SgemmLp64),
    Ilp64(SgemmIlp64),
}

struct Cblas {
    sgemm: Sgemm,
    file: String,
    _lib: libloading::Library,
}

fn cblas() -> Result<&'static Cblas> {
    static LIB: OnceLock<std::result::Result<Cblas, String>> = OnceLock::new();
    LIB.get_or_init(|| {
        let names: Vec<String> = match crate::env::path("KILN_CBLAS") {
            Some(path) => vec![path.to_string_lossy().into_owned()],
            None => ["libopenblas.so.0", "libopenblas.so", "libcblas.so.3", "libblas.so.3"]
                .map(String::from)
                .to_vec(),
        };
        for file in &names {
            // SAFETY: loading a BLAS runs its initialisers, which only set up its thread pool.
            let Ok(lib) = (unsafe { libloading::Library::new(file) }) else {
                continue;
            };
            // SAFETY: the symbols, where present, have the CBLAS signatures declared above
            // (`scipy_cblas_sgemm64_` is OpenBLAS's 64-bit-integer build with a prefix).
            let sgemm = unsafe {
                if let Ok(f) = lib.get::<SgemmLp64>(b"cblas_sgemm\0") {
                    Sgemm::Lp64(*f)
                } else if let Ok(f) = lib.get::<SgemmIlp64>(b"cblas_sgemm64_\0") {
                    Sgemm::Ilp64(*f)
                } else if let Ok(f) = lib.get::<SgemmIlp64>(b"scipy_cblas_sgemm64_\0") {
                    Sgemm::Ilp64(*f)
                } else {
                    continue;
                }
            };
            return Ok(Cblas {
                sgemm,
                file: file.clone(),
                _lib: lib,
            });
        }
        Err(format!(
            "no CBLAS library found (tried {}); set KILN_CBLAS to an OpenBLAS .so",
            names.join(", ")
        ))
    })
    .as_ref()
    .map_err(|e| unavailable(e.clone()))
}

/// The file the CBLAS was loaded from, once loaded.
pub fn cblas_file() -> Option<&'static str> {
    cblas().ok().map(|c| c.file.as_str())
}

fn cblas_sgemm(s: &Setup, rng: &mut Rng, m: usize, n: usize, k: usize) -> Result<(String, Work)> {
    let lib = cblas()?;
    let in_bytes = ((m * k + k * n) * 4) as f64;
    let sets = s.sets(in_bytes);
    let ab: Vec<(Vec<f32>, Vec<f32>)> = (0..sets)
        .map(|_| (random_f32(m * k, rng), random_f32(k * n, rng)))
        .collect();
    let mut c = vec![0f32; m * n];
    let sgemm = lib.sgemm;
    let too_big = || unavailable(format!("{m}x{n}x{k} is too large for a 32-bit CBLAS"));
    let (mi, ni, ki) = (
        i32::try_from(m).map_err(|_| too_big())?,
        i32::try_from(n).map_err(|_| too_big())?,
        i32::try_from(k).map_err(|_| too_big())?,
    );
    let run = move |i: usize| -> Result<()> {
        let (a, b) = &ab[i % sets];
        // SAFETY: row-major A [M, K], B [K, N], C [M, N] with leading dims K, N, N: the slices hold
        // exactly that many elements.
        unsafe {
            match sgemm {
                Sgemm::Lp64(f) => f(
                    ROW_MAJOR,
                    NO_TRANS,
                    NO_TRANS,
                    mi,
                    ni,
                    ki,
                    1.0,
                    a.as_ptr(),
                    ki,
                    b.as_ptr(),
                    ni,
                    0.0,
                    c.as_mut_ptr(),
                    ni,
                ),
                Sgemm::Ilp64(f) => f(
                    ROW_MAJOR,
                    NO_TRANS,
                    NO_TRANS,
                    mi as i64,
                    ni as i64,
                    ki as i64,
                    1.0,
                    a.as_ptr(),
                    ki as i64,
                    b.as_ptr(),
                    ni as i64,
                    0.0,
                    c.as_mut_ptr(),
                    ni as i64,
                ),
            }
        }
        Ok(())
    };
    let work = Work {
        flops: 2.0 * (m * n * k) as f64,
        bytes: in_bytes + (m * n * 4) as f64,
        written: (m * n * 4) as f64,
        sets,
        run: Box::new(run),
        check: None,
    };
    Ok(("cblas".into(), work))
}
