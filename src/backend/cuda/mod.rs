//! The CUDA backend: one implementation of every storage primitive over two executors, the real GPU
//! (`Device::Cuda(n)`, through cudarc) and the emulator (`Device::Emu`, kernels/emu/ on the CPU).
//! Both run the same kernels (`kernels/*.cu`) with the same launch shapes, chosen by one launch
//! wrapper per kernel family, named like its `.cu` file: fill, copy, cast, unary, binary,
//! where_cond, reduce, softmax, matmul, layer_norm, cross_entropy, embedding, adamw, attention,
//! rms_norm, rope, swiglu, linear_quantized, sample.
//!
//! - [`device`]: opening devices, the executor enum;
//! - [`memory`]: device buffers; [`launch`]: launch shapes, packed arguments, device limits;
//! - [`rows`]: the launch shape of the row-wise kernels;
//! - [`layer_norm_naive`]: the naive LayerNorm of docs/layer_norm.md, a stepping stone no op uses;
//! - [`real`] and [`emu`]: the two executors; [`kernels`]: what build.rs embedded;
//! - [`nvrtc`]: finding and running NVRTC (shared with build.rs);
//! - [`nccl`]: NCCL loaded at run time, the all-reduce of data-parallel CUDA ranks.
//!
//! Every storage primitive has a kernel: nothing falls back to the CPU silently.

pub mod adamw;
pub mod attention;
pub mod binary;
pub mod cast;
pub mod copy;
pub mod cross_entropy;
pub mod device;
pub mod embedding;
pub mod emu;
pub mod fill;
pub mod kernels;
pub mod launch;
pub mod layer_norm;
pub mod layer_norm_naive;
pub mod layout;
pub mod linear_quantized;
pub mod matmul;
pub mod memory;
pub mod nccl;
pub mod nvrtc;
pub mod real;
pub mod reduce;
pub mod rms_norm;
pub mod rope;
pub mod rows;
pub mod sample;
pub mod softmax;
pub mod swiglu;
pub mod unary;
pub mod where_cond;

use crate::tensor::dtype::{DType, WithDType};
use crate::{Device, Error, Result};
pub use device::{gpu_count, CudaDevice};
use launch::Kernel;
use memory::DeviceBuffer;
use std::sync::Arc;

/// A flat buffer of `len` elements of `dtype` on a CUDA device or the emulator.
pub struct CudaStorage {
    buf: DeviceBuffer,
    dtype: DType,
    len: usize,
}

impl std::fmt::Debug for CudaStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CudaStorage({} x {} on {})", self.len, self.dtype, self.device())
    }
}

impl CudaStorage {
    /// `len` uninitialised elements (poisoned on Emu, so an unwritten output shows up as NaN).
    pub(crate) fn alloc(dev: &Arc<CudaDevice>, dtype: DType, len: usize) -> Result<CudaStorage> {
        let bytes = len
            .checked_mul(dtype.size_in_bytes())
            .ok_or_else(|| Error::out_of_memory("alloc", len, dtype.size_in_bytes(), dev.device()))?;
        Ok(CudaStorage {
            buf: DeviceBuffer::alloc(dev, bytes)?,
            dtype,
            len,
        })
    }

    pub fn device(&self) -> Device {
        self.buf.device().device()
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub(crate) fn cuda_device(&self) -> &Arc<CudaDevice> {
        self.buf.device()
    }

    /// The device address of element 0.
    pub(crate) fn ptr(&self) -> u64 {
        self.buf.ptr()
    }

    /// Copies host data to `device`.
    pub(crate) fn from_host<T: WithDType>(device: &Device, data: &[T]) -> Result<CudaStorage> {
        let dev = CudaDevice::get(device)?;
        let out = CudaStorage::alloc(&dev, T::DTYPE, data.len())?;
        out.buf.write(0, bytemuck::cast_slice(data))?;
        Ok(out)
    }

    /// `n` elements from element `offset` on, in host memory; `T` is this storage's element type.
    pub(crate) fn read_host<T: WithDType>(&self, offset: usize, n: usize) -> Result<Vec<T>> {
        debug_assert_eq!(T::DTYPE, self.dtype);
        let mut v = vec![T::default(); n];
        if n > 0 {
            self.buf
                .read(offset * std::mem::size_of::<T>(), bytemuck::cast_slice_mut(&mut v))?;
        }
        Ok(v)
    }
}

/// Operands of one op must share one device.
pub(crate) fn same_device(op: &'static str, a: &CudaStorage, b: &CudaStorage) -> Result<()> {
    if a.device() != b.device() {
        return Err(Error::DeviceMismatch {
            op,
            lhs: a.device(),
            rhs: b.device(),
        });
    }
    Ok(())
}

/// The kernel `name` of `kernels/<file>.cu`, as build.rs found it there.
pub(crate) fn kernel(file: &'static str, name: &str) -> Result<Kernel> {
    let kf = kernels::file(file).ok_or_else(|| Error::invalid("cuda", format!("no kernel file kernels/{file}.cu")))?;
    kf.kernels
        .iter()
        .find(|&&k| k == name)
        .map(|&name| Kernel { file, name })
        .ok_or_else(|| Error::invalid("cuda", format!("kernels/{file}.cu has no kernel {name}")))
}

/// The kernels' arithmetic type for elements of `dtype` (`KilnFloat<T>::Acc`): f64 for f64, else f32.
pub(crate) fn acc_dtype(dtype: DType) -> DType {
    if dtype == DType::F64 {
        DType::F64
    } else {
        DType::F32
    }
}

/// The kernel-name suffix of a float storage (f32, f64, bf16, f16); U32 is refused for `op`.
pub(crate) fn float_suffix(op: &'static str, s: &CudaStorage) -> Result<&'static str> {
    match s.dtype() {
        DType::U32 => Err(Error::not_float(op, DType::U32)),
        d => Ok(d.as_str()),
    }
}

/// The name suffix of kernels that only move bits: b16, b32 or b64.
pub(crate) fn bits_suffix(dtype: DType) -> &'static str {
    match dtype.size_in_bytes() {
        2 => "b16",
        4 => "b32",
        _ => "b64",
    }
}
