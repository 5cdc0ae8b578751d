//! Backends behind one small interface, bottom to top:
//!
//! - [`op`]: the op vocabulary both backends and `ops/` speak (UnaryOp, ReduceOp, Epilogue, ...);
//! - [`cpu`] and [`cuda`]: the two backends, each importing only the vocabulary (never the other);
//! - `storage.rs`: [`Storage`], the enum over the backends' storages, and its memory primitives;
//! - `dispatch.rs`: the ops' primitives on `Storage`, each forwarding to the backend holding the data.
//!
//! Nothing here imports `ops/`, `Tensor` or autograd: those sit above.

pub mod cpu;
pub mod cuda;
mod dispatch;
pub mod op;
mod storage;

pub use cpu::CpuStorage;
pub(crate) use dispatch::{adamw_step, grad_sq_sum};
pub use dispatch::{IdBuckets, RowStats};
pub use op::{
    gelu_derivative, AdamWHyper, AdamWParam, AttentionDims, BinaryOp, Epilogue, ReduceOp, RopeLayout, RopeSpec,
    SampleParams, SampleScratch, UnaryOp,
};
pub use storage::Storage;
