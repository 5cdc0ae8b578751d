//! Device memory: a buffer owned by one device, freed when dropped.

use super::device::CudaDevice;
use crate::{Error, Result};
use std::sync::Arc;

/// `bytes` of memory on a CUDA device (or the emulator). The address is a `CUdeviceptr` on a GPU
/// and a host address on Emu; either way kernels receive it as a `u64`.
pub struct DeviceBuffer {
    ptr: u64,
    bytes: usize,
    device: Arc<CudaDevice>,
}

impl DeviceBuffer {
    /// A fresh, uninitialised buffer (poisoned with 0xFF bytes on Emu). Zero bytes allocate nothing.
    pub fn alloc(device: &Arc<CudaDevice>, bytes: usize) -> Result<DeviceBuffer> {
        let ptr = if bytes == 0 { 0 } else { device.executor().alloc(bytes)? };
        Ok(DeviceBuffer {
            ptr,
            bytes,
            device: device.clone(),
        })
    }

    /// The device address of byte 0.
    pub fn ptr(&self) -> u64 {
        self.ptr
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn device(&self) -> &Arc<CudaDevice> {
        &self.device
    }

    /// Checks that `offset..offset + len` lies in this buffer; `what` names the copy.
    fn check_range(&self, what: &'static str, offset: usize, len: usize) -> Result<()> {
        if offset.checked_add(len).is_none_or(|end| end > self.bytes) {
            return Err(Error::index(
                what,
                format!(
                    "bytes {offset}..{offset}+{len} are outside a {}-byte device buffer",
                    self.bytes
                ),
            ));
        }
        Ok(())
    }

    /// Copies `src` into this buffer from byte `offset` on.
    pub fn write(&self, offset: usize, src: &[u8]) -> Result<()> {
        self.check_range("copy to the device", offset, src.len())?;
        if src.is_empty() {
            return Ok(());
        }
        // SAFETY: the range was just checked to lie in this buffer, which is live while `self` is;
        // kernels touch it only inside launches, which return before the next host call.
        unsafe { self.device.executor().htod(self.ptr + offset as u64, src) }
    }

    /// Copies `dst.len()` bytes of this buffer, from byte `offset` on, into `dst`.
    pub fn read(&self, offset: usize, dst: &mut [u8]) -> Result<()> {
        self.check_range("copy to the host", offset, dst.len())?;
        if dst.is_empty() {
            return Ok(());
        }
        // SAFETY: as in `write`.
        unsafe { self.device.executor().dtoh(dst, self.ptr + offset as u64) }
    }

    /// Copies `bytes` bytes of `src` from byte `src_offset` into this buffer at byte `offset`.
    pub fn copy_from(&self, offset: usize, src: &DeviceBuffer, src_offset: usize, bytes: usize) -> Result<()> {
        self.check_range("copy on the device", offset, bytes)?;
        src.check_range("copy on the device", src_offset, bytes)?;
        if !Arc::ptr_eq(&self.device, &src.device) {
            return Err(Error::DeviceMismatch {
                op: "copy on the device",
                lhs: self.device.device(),
                rhs: src.device.device(),
            });
        }
        if bytes == 0 {
            return Ok(());
        }
        // SAFETY: as in `write`, for both buffers, which live on one device.
        unsafe {
            self.device
                .executor()
                .dtod(self.ptr + offset as u64, src.ptr + src_offset as u64, bytes)
        }
    }
}

impl Drop for DeviceBuffer {
    fn drop(&mut self) {
        if self.bytes > 0 {
            // SAFETY: the buffer came from `alloc` and is freed once, here, by its only owner; a
            // launch that used it returned before this (launches are synchronous on Emu, and on a
            // GPU the stream-ordered free waits for earlier work).
            let freed = unsafe { self.device.executor().free(self.ptr) };
            debug_assert!(freed.is_ok(), "freeing a device buffer: {freed:?}");
        }
    }
}

impl std::fmt::Debug for DeviceBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DeviceBuffer({} bytes on {})", self.bytes, self.device.device())
    }
}
