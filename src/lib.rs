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

pub mod autograd;
pub mod backend;
pub mod bench;
pub mod cli;
pub mod data;
pub mod env;
mod error;
pub mod model;
pub mod nn;
pub mod ops;
pub mod optim;
pub mod tensor;
pub mod tokenizer;
pub mod train;

pub use autograd::{is_grad_enabled, no_grad, Gradients, NoGradGuard};
pub use error::{Error, Result};
pub use tensor::device::Device;
pub use tensor::dtype::{DType, WithDType};
pub use tensor::layout::Layout;
pub use tensor::rng::Rng;
pub use tensor::Tensor;
