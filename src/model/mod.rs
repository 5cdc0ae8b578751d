//! The reference GPT (GPT-2's architecture) and the Llama architecture: configurations, layers,
//! KV cache, and weights on disk (kiln checkpoints, Hugging Face folders, GGUF). See
//! docs/model.md and docs/llama.md.

mod causal_lm;
mod config;
mod gpt;
pub mod io;
mod kv_cache;
mod llama;
mod llama_config;
mod llama_params;

pub use causal_lm::CausalLm;
pub use config::{GptConfig, PRESETS};
#[cfg(feature = "bench")]
pub(crate) use gpt::causal_mask;
pub use gpt::{attention_reference, Block, CausalSelfAttention, Gpt, Mlp, COMPUTE_DTYPES, LN_EPS};
pub use kv_cache::{KvCache, LayerKv};
pub use llama::{
    write_hf_json, Llama, LlamaAttention, LlamaBlock, LlamaLoad, LlamaMlp, RmsNorm, RopeLayout, ADAPTER_CONFIG,
    ADAPTER_WEIGHTS, HF_CONFIG, HF_GENERATION_CONFIG, HF_WEIGHTS,
};
pub use llama_config::LlamaConfig;
