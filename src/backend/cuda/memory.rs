//! Device memory: a buffer owned by one device, freed when dropped.

use super::device::CudaDevice;
use crate::Result;
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
}

impl Drop for DeviceBuffer {
    fn drop(&mut self) {
        if self.bytes > 0 {
            self.device.executor().free(self.ptr);
        }
    }
}

impl std::fmt::Debug for DeviceBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DeviceBuffer({} bytes on {})", self.bytes, self.device.device())
    }
}
