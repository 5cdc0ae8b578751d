//! [`CausalLm`]: what generation needs of a model (GPT and Llama alike), so that one sampling
//! loop (`crate::train::sample`) serves both.

use super::gpt::Gpt;
use super::kv_cache::KvCache;
use super::llama::Llama;
use crate::{Device, Result, Tensor};

/// A decoder-only language model that continues a token sequence with a KV cache.
pub trait CausalLm: Sized {
    /// Token ids are `0..vocab_size()`.
    fn vocab_size(&self) -> usize;
    /// The most positions the model sees at once (GPT's `block_size`, Llama's
    /// `max_position_embeddings`).
    fn context_len(&self) -> usize;
    /// The device the weights live on (and inputs must be on).
    fn device(&self) -> &Device;
    /// The model with its weights cast to its compute dtype once, for inference (bf16: one cast
    /// instead of one per forward).
    fn for_inference(&self) -> Result<Self>;
    /// An empty cache for [`CausalLm::forward_cached`].
    fn new_cache(&self) -> KvCache;
    /// ids u32 (B, t) after the cached positions -> logits f32 (B, t, vocab); appends to `cache`.
    fn forward_cached(&self, ids: &Tensor, cache: &mut KvCache) -> Result<Tensor>;
    /// As [`CausalLm::forward_cached`], only the last position's logits: f32 (B, vocab).
    fn forward_cached_last(&self, ids: &Tensor, cache: &mut KvCache) -> Result<Tensor>;
}

impl CausalLm for Gpt {
    fn vocab_size(&self) -> usize {
        self.config().vocab_size
    }
    fn context_len(&self) -> usize {
        self.config().block_size
    }
    fn device(&self) -> &Device {
        Gpt::device(self)
    }
    fn for_inference(&self) -> Result<Gpt> {
        self.to_dtype(self.dtype())
    }
    fn new_cache(&self) -> KvCache {
        KvCache::new(self.config())
    }
    fn forward_cached(&self, ids: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        Gpt::forward_cached(self, ids, cache)
    }
    fn forward_cached_last(&self, ids: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        Gpt::forward_cached_last(self, ids, cache)
    }
}

impl CausalLm for Llama {
    fn vocab_size(&self) -> usize {
        self.config().vocab_size
    }
    fn context_len(&self) -> usize {
        self.config().max_position_embeddings
    }
    fn device(&self) -> &Device {
        Llama::device(self)
    }
    fn for_inference(&self) -> Result<Llama> {
        self.to_dtype(self.dtype())
    }
    fn new_cache(&self) -> KvCache {
        Llama::new_cache(self)
    }
    fn forward_cached(&self, ids: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        Llama::forward_cached(self, ids, cache)
    }
    fn forward_cached_last(&self, ids: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        Llama::forward_cached_last(self, ids, cache)
    }
}
