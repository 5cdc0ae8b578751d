//! What every launch wrapper uses: a kernel's name, its launch shape, its packed arguments, and the
//! check of that shape against the device's limits.

use crate::tensor::dtype::DType;
use crate::{Error, Result};
use std::ffi::c_void;

/// What a launch may ask of a device.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_threads_per_block: u32,
    pub max_block: [u32; 3],
    pub max_grid: [u32; 3],
    /// Dynamic shared memory a kernel may use without opting in (48 KiB on every GPU).
    pub max_smem_default: u32,
    /// ... and with `CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES` raised.
    pub max_smem_optin: u32,
    pub sm_count: u32,
    pub compute_capability: (u32, u32),
}

impl Limits {
    /// What Emu reports: an H100-class GPU (sm_90, 132 SMs), so that the launch wrappers choose the
    /// same shapes on Emu as on the GPUs kiln targets.
    pub fn emulated() -> Limits {
        Limits {
            max_threads_per_block: 1024,
            max_block: [1024, 1024, 64],
            max_grid: [i32::MAX as u32, 65535, 65535],
            max_smem_default: 48 * 1024,
            max_smem_optin: 227 * 1024,
            sm_count: 132,
            compute_capability: (9, 0),
        }
    }
}

/// A kernel: its `.cu` file (the module it lives in) and its `extern "C"` name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Kernel {
    pub file: &'static str,
    pub name: &'static str,
}

/// Grid and block dimensions and dynamic shared memory bytes, as `cuLaunchKernel` takes them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LaunchConfig {
    pub grid: [u32; 3],
    pub block: [u32; 3],
    pub dyn_smem: u32,
}

/// Threads per block of the 1-D elementwise kernels.
pub const ELEMENTWISE_BLOCK: u32 = 256;

impl LaunchConfig {
    /// A 1-D launch for a grid-stride loop over `items` work items (elements, or 16-byte packs):
    /// one item per thread up to `blocks_per_sm` blocks per SM; the loop covers the rest.
    pub fn grid_stride(items: usize, limits: &Limits) -> LaunchConfig {
        let cap = (limits.sm_count as usize * 32).max(1);
        let blocks = items.div_ceil(ELEMENTWISE_BLOCK as usize).clamp(1, cap);
        LaunchConfig {
            grid: [blocks as u32, 1, 1],
            block: [ELEMENTWISE_BLOCK, 1, 1],
            dyn_smem: 0,
        }
    }

    /// The same launch with `bytes` of dynamic shared memory.
    pub fn with_dyn_smem(mut self, bytes: u32) -> LaunchConfig {
        self.dyn_smem = bytes;
        self
    }

    pub fn threads_per_block(&self) -> u64 {
        self.block.iter().map(|&b| b as u64).product()
    }

    /// Refuses a shape the device cannot run, naming the kernel and the shape.
    pub fn check(&self, kernel: &Kernel, limits: &Limits) -> Result<()> {
        let problem = if self.grid.contains(&0) || self.block.contains(&0) {
            Some("a zero grid or block dimension".to_string())
        } else if self.threads_per_block() > limits.max_threads_per_block as u64 {
            Some(format!(
                "{} threads per block, more than the device's {}",
                self.threads_per_block(),
                limits.max_threads_per_block
            ))
        } else if let Some(d) = (0..3).find(|&d| self.block[d] > limits.max_block[d]) {
            Some(format!(
                "block dimension {} is {}, more than the device's {}",
                ["x", "y", "z"][d],
                self.block[d],
                limits.max_block[d]
            ))
        } else if let Some(d) = (0..3).find(|&d| self.grid[d] > limits.max_grid[d]) {
            Some(format!(
                "grid dimension {} is {}, more than the device's {}",
                ["x", "y", "z"][d],
                self.grid[d],
                limits.max_grid[d]
            ))
        } else if self.dyn_smem > limits.max_smem_optin {
            Some(format!(
                "{} bytes of dynamic shared memory, more than the device's {}",
                self.dyn_smem, limits.max_smem_optin
            ))
        } else {
            None
        };
        match problem {
            None => Ok(()),
            Some(p) => Err(Error::invalid(
                kernel.name,
                format!(
                    "cannot launch with grid {:?}, block {:?} and {} bytes of dynamic shared memory: {p}",
                    self.grid, self.block, self.dyn_smem
                ),
            )),
        }
    }
}

/// A kernel's arguments, packed once: each value is copied into its own 8-byte-aligned slot, and
/// the launch passes one pointer per slot (`cuLaunchKernel`'s `kernelParams`, which `emu_launch`
/// mirrors). The types must match the kernel's C++ parameters exactly.
#[derive(Default)]
pub struct Args {
    slots: Vec<Vec<u64>>,
}

impl Args {
    pub fn new() -> Args {
        Args::default()
    }

    /// Appends one argument: a device pointer (`u64`), an index, a scalar or a `KernelLayout`.
    pub fn push<T: Copy + 'static>(&mut self, value: T) -> &mut Args {
        assert!(
            std::mem::align_of::<T>() <= 8,
            "kernel arguments are at most 8-byte aligned"
        );
        let words = std::mem::size_of::<T>().div_ceil(8).max(1);
        let mut slot = vec![0u64; words];
        // SAFETY: `slot` has at least size_of::<T>() bytes and u64 alignment, which is at least T's
        // (asserted above); `value` is a plain Copy value read once, byte for byte.
        unsafe {
            std::ptr::copy_nonoverlapping(
                (&value as *const T).cast::<u8>(),
                slot.as_mut_ptr().cast::<u8>(),
                std::mem::size_of::<T>(),
            );
        }
        self.slots.push(slot);
        self
    }

    /// Appends a scalar in the kernels' arithmetic type for elements of `dtype`: a `double` for
    /// f64 kernels, a `float` otherwise.
    pub fn push_acc(&mut self, dtype: DType, value: f64) -> &mut Args {
        if dtype == DType::F64 {
            self.push(value)
        } else {
            self.push(value as f32)
        }
    }

    /// One pointer per argument slot, valid while `self` is neither changed nor dropped.
    pub fn pointers(&mut self) -> Vec<*mut c_void> {
        self.slots.iter_mut().map(|s| s.as_mut_ptr().cast::<c_void>()).collect()
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }
}
