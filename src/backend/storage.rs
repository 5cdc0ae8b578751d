//! `Storage`, the flat buffer behind every tensor: an enum over the backends' storages, and the
//! memory primitives (fill, host transfers, copies, casts). A storage knows its dtype and device
//! but not its shape: that is the layout's job, so many views can share one storage. The ops'
//! primitives over it are in dispatch.rs.

use super::cpu::{self, with_cpu_storage, CpuStorage};
use super::cuda::{self, CudaDevice, CudaStorage};
use super::op::QuantizedMatrix;
use crate::tensor::dtype::DType;
use crate::tensor::layout::Layout;
use crate::{Device, Error, Result};

/// Device memory of any backend.
#[derive(Debug)]
pub enum Storage {
    Cpu(CpuStorage),
    /// A CUDA GPU or the emulator: one variant, the executor lives inside.
    Cuda(CudaStorage),
}

impl Storage {
    pub fn dtype(&self) -> DType {
        match self {
            Storage::Cpu(s) => s.dtype(),
            Storage::Cuda(s) => s.dtype(),
        }
    }

    pub fn device(&self) -> Device {
        match self {
            Storage::Cpu(_) => Device::Cpu,
            Storage::Cuda(s) => s.device(),
        }
    }

    /// The number of elements held (which a view may use only part of).
    pub(crate) fn len(&self) -> usize {
        match self {
            Storage::Cpu(s) => s.len(),
            Storage::Cuda(s) => s.len(),
        }
    }

    /// `n` copies of `value` rounded to `dtype`.
    pub(crate) fn filled(value: f64, n: usize, dtype: DType, device: &Device) -> Result<Storage> {
        match device {
            Device::Cpu => Ok(Storage::Cpu(cpu::filled(value, n, dtype)?)),
            cuda_device => Ok(Storage::Cuda(cuda::fill::filled(
                &CudaDevice::get(cuda_device)?,
                value,
                n,
                dtype,
            )?)),
        }
    }

    /// `n` zeros of `dtype` for weights read over and over: on the CPU in huge pages where the OS
    /// has them ([`cpu::zeros_in_huge_pages`]), elsewhere as [`Storage::filled`].
    pub(crate) fn zeros_for_weights(n: usize, dtype: DType, device: &Device) -> Result<Storage> {
        match device {
            Device::Cpu => Ok(Storage::Cpu(cpu::zeros_in_huge_pages(n, dtype)?)),
            _ => Storage::filled(0.0, n, dtype, device),
        }
    }

    /// Moves host data to `device`.
    pub(crate) fn from_host(data: CpuStorage, device: &Device) -> Result<Storage> {
        match device {
            Device::Cpu => Ok(Storage::Cpu(data)),
            cuda_device => Ok(Storage::Cuda(
                with_cpu_storage!(&data, v => CudaStorage::from_host(cuda_device, v))?,
            )),
        }
    }

    /// The viewed elements, contiguous, in host memory.
    pub(crate) fn to_host(&self, layout: &Layout) -> Result<CpuStorage> {
        match self {
            Storage::Cpu(s) => cpu::contiguous(s, layout),
            Storage::Cuda(s) => Ok(match s.dtype() {
                DType::F32 => CpuStorage::F32(cuda::copy::to_host(s, layout)?),
                DType::F64 => CpuStorage::F64(cuda::copy::to_host(s, layout)?),
                DType::BF16 => CpuStorage::BF16(cuda::copy::to_host(s, layout)?),
                DType::F16 => CpuStorage::F16(cuda::copy::to_host(s, layout)?),
                DType::U32 => CpuStorage::U32(cuda::copy::to_host(s, layout)?),
            }),
        }
    }

    pub(crate) fn contiguous(&self, layout: &Layout) -> Result<Storage> {
        match self {
            Storage::Cpu(s) => Ok(Storage::Cpu(cpu::contiguous(s, layout)?)),
            Storage::Cuda(s) => Ok(Storage::Cuda(cuda::copy::contiguous(s, layout)?)),
        }
    }

    pub(crate) fn cast(&self, layout: &Layout, dtype: DType) -> Result<Storage> {
        match self {
            Storage::Cpu(s) => Ok(Storage::Cpu(cpu::cast(s, layout, dtype)?)),
            Storage::Cuda(s) => Ok(Storage::Cuda(cuda::cast::cast(s, layout, dtype)?)),
        }
    }

    /// `f` of the u32 elements that `layout` views, on the host: read in place for a contiguous
    /// view of a CPU storage (so that checking a decode step's ids allocates nothing), else
    /// through a contiguous host copy (a device's, a strided view).
    pub(crate) fn read_u32<R>(&self, layout: &Layout, f: impl FnOnce(&[u32]) -> R) -> Result<R> {
        if let (Storage::Cpu(CpuStorage::U32(v)), Some(range)) = (self, layout.contiguous_range()) {
            return Ok(f(&v[range]));
        }
        let host = cpu::pool::Scratch(self.to_host(layout)?);
        match &host.0 {
            CpuStorage::U32(v) => Ok(f(v)),
            other => Err(Error::DType {
                op: "read_u32",
                msg: format!("expected u32 elements, got {}", other.dtype()),
            }),
        }
    }

    /// Writes `src` viewed through `ls` into the elements of `self` that `ld` views.
    pub(crate) fn assign(&mut self, ld: &Layout, src: &Storage, ls: &Layout) -> Result<()> {
        match (self, src) {
            (Storage::Cpu(d), Storage::Cpu(s)) => cpu::assign(d, ld, s, ls),
            (Storage::Cuda(d), Storage::Cuda(s)) => cuda::copy::assign(d, ld, s, ls),
            (d, s) => Err(mismatch("assign", d, s)),
        }
    }
}

impl Drop for Storage {
    /// A host buffer no one uses any more (a tensor's last handle dropped, or a kernel's
    /// temporary) goes to the CPU backend's pool of recycled buffers (src/backend/cpu/pool.rs),
    /// so the next buffer of its size allocates nothing; device memory has its own pool.
    fn drop(&mut self) {
        if let Storage::Cpu(s) = self {
            cpu::pool::give(s);
        }
    }
}

impl QuantizedMatrix {
    /// The matrix on `device`: on a CUDA device or the emulator, with a copy of its stored bytes
    /// there (where `Tensor::linear_quantized` then runs its kernels, kernels/linear_quantized.cu);
    /// on the CPU, without one. The host bytes are kept and shared either way (see
    /// src/backend/op/quantized.rs).
    pub fn to_device(&self, device: &Device) -> Result<QuantizedMatrix> {
        if self.device() == *device {
            return Ok(self.clone());
        }
        match device {
            Device::Cpu => Ok(self.on_cpu()),
            cuda_device => {
                let bytes = cuda::linear_quantized::to_device(cuda_device, self)?;
                Ok(self.with_device_bytes(*cuda_device, std::sync::Arc::new(bytes)))
            }
        }
    }
}

/// The mismatch between `first` and the first of `rest` on another device.
pub(crate) fn mismatch_any(op: &'static str, first: &Storage, rest: &[&Storage]) -> Error {
    let other = rest.iter().find(|s| s.device() != first.device()).unwrap_or(&first);
    mismatch(op, first, other)
}

/// Operands of one op on different devices (the tensor layer checks first; this is the backstop).
pub(crate) fn mismatch(op: &'static str, a: &Storage, b: &Storage) -> Error {
    Error::DeviceMismatch {
        op,
        lhs: a.device(),
        rhs: b.device(),
    }
}
