//! [`KvCache`]: the keys and values of the positions already processed, per layer, so that
//! generating one more token costs one position's work instead of the whole context's.

use super::config::GptConfig;
use crate::{DType, Error, Result, Tensor};

/// One layer's cached keys and values, each (1, B, nh, Tc, hs).
#[derive(Clone, Debug, Default)]
pub struct LayerKv {
    k: Option<Tensor>,
    v: Option<Tensor>,
}

impl LayerKv {
    /// Cached positions in this layer.
    pub fn len(&self) -> usize {
        self.k.as_ref().map_or(0, |k| k.shape()[3])
    }

    /// Whether nothing is cached in this layer.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Keeps the first `len` (at least one, at most all) cached positions.
    fn truncate(&mut self, len: usize) -> Result<()> {
        for t in [&mut self.k, &mut self.v].into_iter().flatten() {
            *t = t.narrow(3, 0, len)?.contiguous()?;
        }
        Ok(())
    }

    /// Appends the new keys and values (1, B, nh, T, hs) along time and returns all of them.
    pub(crate) fn append(&mut self, k: Tensor, v: Tensor) -> Result<(Tensor, Tensor)> {
        let join = |old: &Option<Tensor>, new: Tensor| match old {
            Some(old) => Tensor::cat(&[old.clone(), new], 3),
            None => new.contiguous(),
        };
        let (k, v) = (join(&self.k, k)?, join(&self.v, v)?);
        self.k = Some(k.clone());
        self.v = Some(v.clone());
        Ok((k, v))
    }
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
        for l in &mut self.layers {
            l.truncate(len)?;
        }
        self.len = len;
        Ok(())
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
