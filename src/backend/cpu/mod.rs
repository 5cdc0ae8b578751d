//! The CPU backend. Functions here take storage plus layout and return fresh contiguous
//! storage; they know nothing of autograd. Large contiguous work is split over threads with
//! rayon; BF16/F16 are computed in f32. `reference` holds the naive f64 versions the fast
//! paths are tested against.

pub mod adamw;
pub mod alloc;
mod allocator;
#[cfg(target_arch = "x86_64")]
mod amx;
pub mod attention;
mod awake;
pub mod binary;
mod cast;
mod copy;
pub mod cross_entropy;
pub mod dequantize;
pub mod embedding;
mod fill;
mod float;
pub mod gemm;
pub mod layer_norm;
pub mod linear_quantized;
mod map;
pub mod matmul;
pub(crate) mod pool;
pub mod reduce;
pub mod reference;
pub mod rms_norm;
pub mod rope;
pub mod sample;
pub mod softmax;
mod storage;
pub mod swiglu;
pub mod unary;
pub(crate) mod vectorise;
pub mod where_cond;

pub use crate::backend::op::exp;
pub use allocator::retain_freed_memory;
pub(crate) use awake::keep_workers_awake;
pub use cast::cast;
pub use copy::{assign, contiguous};
pub use fill::{filled, zeros_in_huge_pages};
pub use float::CpuFloat;
pub(crate) use float::{acc, dispatch_float, map_float_storage, typed};
pub use map::{gather, map, zip_map};
pub(crate) use storage::with_cpu_storage;
pub use storage::CpuStorage;
pub(crate) use vectorise::{inlined, lane_fold, lane_fold_of, lane_sum, vectorised};

/// Below this many elements, threads cost more than they save.
pub(crate) const PARALLEL_MIN: usize = 1 << 15;
