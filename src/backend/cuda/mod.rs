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
//! - [`nccl`]: NCCL loaded at run time, the all-reduce of data-parallel CUDA ranks;
//!   [`OnCommStream`]: a buffer lent to work on the communication stream (its non-blocking form).
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
use cudarc::driver::sys;
pub use device::{gpu_count, CudaDevice};
use device::{Lane, Marker};
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

/// A buffer lent to work queued on its device's communication stream ([`Lane::Comm`]: NCCL's
/// all-reduce, nccl.rs), which runs beside the kernels queued on the compute stream afterwards.
///
/// [`OnCommStream::start`] marks the compute stream's point (so the work starts after whatever
/// wrote the buffer), makes the communication stream wait for it, queues the work there and marks
/// its end, without blocking the host. [`OnCommStream::test`] asks whether the work has run;
/// [`OnCommStream::wait`] makes the compute stream wait for it (on the device: the host goes on)
/// and gives the buffer back, so that the kernels queued afterwards read the result. Dropped
/// unwaited, it makes the compute stream wait all the same before the buffer is freed (frees are
/// queued on the compute stream), else blocks the host until the work is done, else leaks the
/// buffer: the buffer never returns to the allocator while the communication stream may use it.
/// On Emu every step runs when it is called: `work` gets no stream and does its work at once.
pub struct OnCommStream {
    /// None once given back by `wait`.
    buf: Option<CudaStorage>,
    done: Marker,
}

impl std::fmt::Debug for OnCommStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "OnCommStream({:?}, {:?})", self.buf, self.done)
    }
}

impl OnCommStream {
    /// Queues `work` on `buf` on its device's communication stream, after the work queued on the
    /// compute stream so far. `work` receives the buffer and the communication stream (None on
    /// Emu, where it must do its work before returning), and must only queue work on that stream.
    pub fn start(
        buf: CudaStorage,
        work: impl FnOnce(&CudaStorage, Option<sys::CUstream>) -> Result<()>,
    ) -> Result<OnCommStream> {
        let dev = buf.cuda_device().clone();
        let written = dev.mark(Lane::Compute)?;
        dev.wait_for(Lane::Comm, &written)?;
        let queued = work(&buf, dev.stream(Lane::Comm));
        match dev.mark(Lane::Comm) {
            // on an error, dropping the handle still orders the free after whatever was queued
            Ok(done) => {
                let lent = OnCommStream { buf: Some(buf), done };
                queued.map(|()| lent)
            }
            Err(e) => {
                // the end of the work cannot be marked: the buffer is never freed
                std::mem::forget(buf);
                Err(e)
            }
        }
    }

    /// Whether the work has run (never blocks); an error if it faulted.
    pub fn test(&self) -> Result<bool> {
        match &self.buf {
            Some(buf) => buf.cuda_device().reached(&self.done),
            None => Ok(true),
        }
    }

    /// The buffer, for the work queued on the compute stream from now on, which runs after the
    /// communication stream's work (the compute stream waits for it on the device).
    pub fn wait(mut self) -> Result<CudaStorage> {
        let buf = self.buf.take().expect("an OnCommStream holds its buffer until waited");
        match buf.cuda_device().wait_for(Lane::Compute, &self.done) {
            Ok(()) => Ok(buf),
            Err(e) => {
                self.buf = Some(buf); // Drop makes sure it outlives the work
                Err(e)
            }
        }
    }
}

impl Drop for OnCommStream {
    fn drop(&mut self) {
        let Some(buf) = self.buf.take() else { return };
        let dev = buf.cuda_device().clone();
        // the free is queued on the compute stream: behind the work once that stream waits for it
        if dev.wait_for(Lane::Compute, &self.done).is_ok() || dev.host_wait(&self.done).is_ok() {
            drop(buf);
        } else {
            // the device failed: better a leak than a buffer reused while NCCL may still write it
            std::mem::forget(buf);
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Emu runs every step at once: the work has run when `start` returns, `wait` gives the
    /// buffer back with what the work wrote, and an unwaited handle frees its buffer when dropped.
    #[test]
    fn a_buffer_lent_to_the_communication_stream_comes_back_or_is_freed_on_emu() {
        let dev = CudaDevice::get(&Device::Emu).unwrap();
        assert!(dev.stream(Lane::Comm).is_none());
        let buf = CudaStorage::from_host(&Device::Emu, &[1f32, 2., 3.]).unwrap();
        let lent = OnCommStream::start(buf, |b, stream| {
            assert!(stream.is_none(), "Emu has no streams");
            b.buf.write(4, bytemuck::cast_slice(&[20f32, 30.]))
        })
        .unwrap();
        assert!(lent.test().unwrap());
        let back = lent.wait().unwrap();
        assert_eq!(back.read_host::<f32>(0, 3).unwrap(), vec![1., 20., 30.]);
        // dropped unwaited: the buffer is freed (Emu refuses a double or a wild free)
        let other = CudaStorage::from_host(&Device::Emu, &[5f32; 1000]).unwrap();
        drop(OnCommStream::start(other, |_, _| Ok(())).unwrap());
        // a failing work is an error, and its buffer is freed all the same
        let third = CudaStorage::from_host(&Device::Emu, &[0f32]).unwrap();
        let err = OnCommStream::start(third, |_, _| Err(Error::invalid("test", "refused"))).unwrap_err();
        assert!(err.to_string().contains("refused"), "{err}");
        // markers of Emu are reached when made
        let m = dev.mark(Lane::Compute).unwrap();
        assert!(dev.reached(&m).unwrap());
        dev.wait_for(Lane::Comm, &m).unwrap();
        dev.host_wait(&m).unwrap();
    }

    /// On a GPU (skipped without one): a copy queued on the communication stream after a buffer
    /// written on the compute stream reads the written values, and the compute stream's next read
    /// sees the copy's result, without any host synchronisation in between.
    #[test]
    fn work_on_the_communication_stream_is_ordered_after_and_before_the_compute_stream_on_a_gpu() {
        if gpu_count() == 0 {
            eprintln!("no GPU: skipped");
            return;
        }
        let device = Device::Cuda(0);
        let n = 1 << 20;
        let values: Vec<f32> = (0..n).map(|i| (i % 1000) as f32).collect();
        let src = CudaStorage::from_host(&device, &values).unwrap();
        let dst = CudaStorage::alloc(src.cuda_device(), DType::F32, n).unwrap();
        let lent = OnCommStream::start(dst, |b, stream| {
            let stream = stream.expect("a GPU has a communication stream");
            // SAFETY: both buffers hold n f32 of this device and outlive the copy: `src` lives to
            // the end of the test, `b` until the compute stream has waited for the copy.
            unsafe { cudarc::driver::result::memcpy_dtod_async(b.ptr(), src.ptr(), n * 4, stream) }
                .map_err(|e| Error::invalid("test", format!("{e:?}")))
        })
        .unwrap();
        let _ = lent.test().unwrap();
        let back = lent.wait().unwrap();
        assert_eq!(back.read_host::<f32>(0, n).unwrap(), values);
        let again = CudaStorage::alloc(src.cuda_device(), DType::F32, n).unwrap();
        drop(OnCommStream::start(again, |_, _| Ok(())).unwrap());
    }
}
