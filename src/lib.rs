//! kiln: a from-scratch tensor engine with autograd and a reference GPT.
//!
//! ```
//! use kiln::{Device, Tensor};
//! let dev = Device::Cpu;
//! let a = Tensor::from_vec(vec![1f32, 2., 3., 4., 5., 6.], &[2, 3], &dev)?.requires_grad();
//! let b = Tensor::from_vec(vec![0.5f32; 12], &[3, 4], &dev)?.requires_grad();
//! let y = a.matmul(&b)?.gelu()?.softmax(-1)?;
//! let loss = y.sum_all()?;
//! let grads = loss.backward()?;
//! let ga: Vec<f32> = grads.get(&a).unwrap().to_vec::<f32>()?;
//! assert_eq!(ga.len(), 6);
//! # Ok::<(), kiln::Error>(())
//! ```

#![warn(missing_docs)]

pub mod autograd;
// The backends, the benchmark harness and the command line are kiln's own plumbing, public only so
// that its tests, benches and binary reach them: hidden from the documentation and not part of the
// stable API (DESIGN.md, "Public API contract").
#[doc(hidden)]
pub mod backend;
#[cfg(feature = "bench")]
#[doc(hidden)]
pub mod bench;
// The command line's doc comments are clap's `--help` text, where `[12]` is a default, not a link.
#[cfg(feature = "cli")]
#[doc(hidden)]
#[allow(rustdoc::broken_intra_doc_links, rustdoc::private_intra_doc_links)]
pub mod cli;
pub mod data;
pub mod env;
mod error;
pub mod gguf;
pub mod model;
pub mod nn;
pub mod ops;
pub mod optim;
pub mod safetensors;
pub mod tensor;
pub mod testing;
pub mod tokenizer;
pub mod train;

/// The Rust blocks of README.md and docs/*.md, compiled and run as doc-tests (`cargo test --doc`) so
/// that the docs cannot rot. Shell and other blocks are fenced with their language (```sh, ```text);
/// a `rust,ignore` block quotes the source, and tests/docs.rs checks that it still does, and that
/// every doc is listed here.
#[cfg(doctest)]
#[allow(dead_code)]
mod doc_tests {
    #[doc = include_str!("../README.md")]
    struct Readme;
    #[doc = include_str!("../docs/adding-an-op.md")]
    struct AddingAnOp;
    #[doc = include_str!("../docs/autograd.md")]
    struct Autograd;
    #[doc = include_str!("../docs/changelog.md")]
    struct Changelog;
    #[doc = include_str!("../docs/distributed.md")]
    struct Distributed;
    #[doc = include_str!("../docs/emulator.md")]
    struct Emulator;
    #[doc = include_str!("../docs/finetuning.md")]
    struct Finetuning;
    #[doc = include_str!("../docs/gpu.md")]
    struct Gpu;
    #[doc = include_str!("../docs/kernels.md")]
    struct Kernels;
    #[doc = include_str!("../docs/layer_norm.md")]
    struct LayerNorm;
    #[doc = include_str!("../docs/llama.md")]
    struct Llama;
    #[doc = include_str!("../docs/model.md")]
    struct Model;
    #[doc = include_str!("../docs/ops.md")]
    struct Ops;
    #[doc = include_str!("../docs/perf.md")]
    struct Perf;
    #[doc = include_str!("../docs/perf-log.md")]
    struct PerfLog;
    #[doc = include_str!("../docs/reliability.md")]
    struct Reliability;
    #[doc = include_str!("../docs/tour.md")]
    struct Tour;
    #[doc = include_str!("../docs/training.md")]
    struct Training;
}

pub use autograd::{is_grad_enabled, no_grad, BackwardObserver, Gradients, NoGradGuard};
pub use error::{Error, Result};
pub use tensor::device::Device;
pub use tensor::dtype::{DType, WithDType};
pub use tensor::layout::Layout;
pub use tensor::rng::Rng;
pub use tensor::Tensor;
