//! The reference GPT (GPT-2's architecture): configuration, layers, KV cache, and weights
//! on disk (kiln checkpoints and Hugging Face folders). See docs/model.md.

mod config;
mod gpt;
pub mod io;
mod kv_cache;

pub use config::{GptConfig, PRESETS};
pub(crate) use gpt::causal_mask;
pub use gpt::{attention_reference, Block, CausalSelfAttention, Gpt, Mlp, COMPUTE_DTYPES, LN_EPS};
pub use kv_cache::{KvCache, LayerKv};
