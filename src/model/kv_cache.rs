//! [`KvCache`]: the keys and values of the positions already processed, per layer, so that
//! generating one more token costs one position's work instead of the whole context's.

use super::config::GptConfig;
use crate::{DType, Error, Result, Tensor};

/// One layer's cached keys and values: buffers (..., nh, capacity, hs) (GPT-2's (1, B, nh, ·, hs),
/// a Llama's (B, nkv, ·, hs)) of which the first `len` positions are filled. A step writes its new
/// positions in place, and attention reads the filled prefix as a view (no copy of the context per token); a full buffer is replaced by one
/// of twice the capacity. Clones share the buffers until one of them writes: a write into a
/// shared buffer copies it first, so clones never see each other's positions.
#[derive(Clone, Debug, Default)]
pub struct LayerKv {
    k: Option<Tensor>,
    v: Option<Tensor>,
    len: usize,
}

/// The positions whose logits a run of the model computes: all of them (training, scoring) or the
/// last one only (generation, which samples from the last position: a 128-token prompt then
/// spends 1/128 of the LM head's work, about a fifth of a small model's prefill).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LogitsAt {
    /// Logits (B, T, vocab).
    AllPositions,
    /// Logits (B, vocab) of position T - 1.
    LastPosition,
}

/// Positions a layer's first buffer holds (grown by doubling from there).
const MIN_CAPACITY: usize = 64;

impl LayerKv {
    /// Cached positions in this layer.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is cached in this layer.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Positions the buffers hold before they must grow.
    fn capacity(&self) -> usize {
        self.k.as_ref().map_or(0, |k| k.shape()[time_dim(k)])
    }

    /// Appends the new keys and values (..., nh, T, hs) along time (the second-to-last dim) and
    /// returns all of them, (..., nh, len, hs) views of the buffers. Written in place: not recorded
    /// by autograd (the cache serves inference).
    pub(crate) fn append(&mut self, k: Tensor, v: Tensor) -> Result<(Tensor, Tensor)> {
        if k.dims() < 3 {
            return Err(Error::shape(
                "kv cache",
                format!("keys must be (..., nh, T, hs), got {:?}", k.shape()),
            ));
        }
        if let Some(held) = self.k.as_ref().filter(|_| self.len > 0) {
            if held.dtype() != k.dtype() {
                return Err(Error::DType {
                    op: "kv cache",
                    msg: format!(
                        "the cache holds {} keys and values, these are {} (the model's kv dtype changed: clear the cache)",
                        held.dtype(),
                        k.dtype()
                    ),
                });
            }
        }
        let d = time_dim(&k);
        let t = k.shape()[d];
        let need = self.len + t;
        let shared = [&self.k, &self.v].into_iter().flatten().any(Tensor::storage_is_shared);
        if need > self.capacity() || shared {
            let capacity = match need > self.capacity() {
                true => need.max(2 * self.capacity()).max(MIN_CAPACITY),
                false => self.capacity(),
            };
            self.k = Some(self.grown(self.k.as_ref(), &k, capacity)?);
            self.v = Some(self.grown(self.v.as_ref(), &v, capacity)?);
        }
        let (kb, vb) = (self.k.as_ref().expect("grown"), self.v.as_ref().expect("grown"));
        // the new positions written through a narrowed layout of each buffer (no view tensor)
        kb.assign_region(&kb.layout().narrow(d, self.len, t), &k)?;
        vb.assign_region(&vb.layout().narrow(d, self.len, t), &v)?;
        self.len = need;
        Ok((kb.narrow(d as isize, 0, need)?, vb.narrow(d as isize, 0, need)?))
    }

    /// A buffer shaped as `new` (..., nh, ·, hs) with `capacity` positions, holding the first
    /// `len` positions of `old`.
    fn grown(&self, old: Option<&Tensor>, new: &Tensor, capacity: usize) -> Result<Tensor> {
        let d = time_dim(new);
        let mut shape = new.shape().to_vec();
        shape[d] = capacity;
        let buffer = Tensor::zeros(&shape, new.dtype(), new.device())?;
        if let Some(old) = old.filter(|_| self.len > 0) {
            buffer
                .narrow(d as isize, 0, self.len)?
                .assign(&old.narrow(d as isize, 0, self.len)?)?;
        }
        Ok(buffer)
    }
}

/// The time dim of keys or values (..., nh, T, hs): the second to last.
fn time_dim(k: &Tensor) -> usize {
    k.dims() - 2
}

/// The attention keys and values of every layer for the positions seen so far.
#[derive(Clone, Debug)]
pub struct KvCache {
    layers: Vec<LayerKv>,
    len: usize,
    batch: Option<usize>,
}

impl KvCache {
    /// An empty cache for a GPT of shape `cfg`.
    pub fn new(cfg: &GptConfig) -> KvCache {
        KvCache::with_layers(cfg.n_layer)
    }

    /// An empty cache for a model of `n_layer` attention layers.
    pub fn with_layers(n_layer: usize) -> KvCache {
        KvCache {
            layers: vec![LayerKv::default(); n_layer],
            len: 0,
            batch: None,
        }
    }

    /// The number of positions cached.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes the cache's buffers hold, every layer's keys and values at their capacity (which
    /// grows by doubling, so up to twice what the cached positions need).
    pub fn bytes(&self) -> usize {
        let bytes = |t: &Option<Tensor>| t.as_ref().map_or(0, |t| t.numel() * t.dtype().size_in_bytes());
        self.layers.iter().map(|l| bytes(&l.k) + bytes(&l.v)).sum()
    }

    /// Forgets every position (to start a new sequence or re-crop a long context).
    pub fn clear(&mut self) {
        self.layers.iter_mut().for_each(|l| *l = LayerKv::default());
        self.len = 0;
        self.batch = None;
    }

    /// Forgets every position from `len` on, keeping the first `len` (a prefix shared with the
    /// next sequence, whose keys and values need not be computed again). `len` past the cached
    /// positions is an error.
    pub fn truncate(&mut self, len: usize) -> Result<()> {
        if len > self.len {
            return Err(Error::invalid(
                "kv cache truncate",
                format!("cannot keep {len} positions of a cache holding {}", self.len),
            ));
        }
        if len == 0 {
            self.clear();
            return Ok(());
        }
        self.rewind(len);
        Ok(())
    }

    /// Sets every layer back to its first `len` positions (at most those it holds): the positions
    /// after stay in the buffers, to be overwritten.
    fn rewind(&mut self, len: usize) {
        for l in &mut self.layers {
            l.len = l.len.min(len);
        }
        self.len = len;
    }

    /// Runs `step`, which appends to this cache; if it fails, the cache is as it was before (its
    /// lengths and batch size restored: nothing before them was overwritten).
    pub(crate) fn transaction<T>(&mut self, step: impl FnOnce(&mut KvCache) -> Result<T>) -> Result<T> {
        let (len, batch) = (self.len, self.batch);
        let result = step(self);
        if result.is_err() {
            self.rewind(len);
            self.batch = batch;
        }
        result
    }

    pub(crate) fn layer(&mut self, i: usize) -> &mut LayerKv {
        &mut self.layers[i]
    }

    pub(crate) fn advance(&mut self, t: usize) {
        self.len += t;
    }

    /// Checks that this cache fits a model of `n_layer` layers and the batch of `ids` (B, t).
    pub(crate) fn check(&mut self, n_layer: usize, ids: &Tensor) -> Result<()> {
        if self.layers.len() != n_layer {
            return Err(Error::invalid(
                "forward_cached",
                format!(
                    "the cache was made for {} layers, the model has {}",
                    self.layers.len(),
                    n_layer
                ),
            ));
        }
        if ids.dtype() == DType::U32 && ids.dims() == 2 {
            let b = ids.shape()[0];
            match self.batch {
                Some(cached) if cached != b => {
                    return Err(Error::shape(
                        "forward_cached",
                        format!("the cache holds a batch of {cached} sequences, the ids have {b}"),
                    ))
                }
                _ => self.batch = Some(b),
            }
        }
        Ok(())
    }
}
