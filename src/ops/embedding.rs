//! Selecting by indices: index_select along a dim and embedding lookup (backward:
//! scatter-add of the gradient rows, deterministic: each row sums its bucket of ids in order).
//! The ids are checked on the host (one small read), then used from the device.
//!
//! Backward: index_select and embedding, d(table) = index_add of g's rows at their ids;
//! token_position_embedding, dwte = index_add of g and dwpe = Σ over the batch of g.

use crate::backend::IdBuckets;
use crate::tensor::layout::{resolve_dim, Dims};
use crate::{DType, Error, Result, Tensor};

impl Tensor {
    /// The entries `ids` (U32, 1-D) of dimension `dim`, in that order (ids may repeat).
    pub fn index_select(&self, dim: isize, ids: &Tensor) -> Result<Tensor> {
        self.index_select_as("index_select", dim, ids)
    }

    /// index_select whose errors and graph node are named `op` (embedding is built on it).
    fn index_select_as(&self, op: &'static str, dim: isize, ids: &Tensor) -> Result<Tensor> {
        let d = resolve_dim(op, dim, self.shape())?;
        self.same_device(ids, op)?;
        let ids_vec = checked_ids(op, ids, self.shape()[d], Tensor::records(&[self]))?;
        let outer: usize = self.shape()[..d].iter().product();
        let inner: usize = self.shape()[d + 1..].iter().product();
        let size = self.shape()[d];
        let mut shape = Dims::from(self.shape());
        shape[d] = ids.numel();
        let x = self.dense()?;
        let out = x.storage().index_select(outer, size, inner, &ids.dense()?.storage())?;
        let out = Tensor::from_parts(out, &shape);
        Ok(out.record(op, &[&x], move |g, _, _| {
            let g = g.dense()?;
            let buckets = IdBuckets::new(&ids_vec, size, g.device())?;
            let dx = g.storage().index_add(outer, size, inner, &buckets)?;
            let mut in_shape = shape.clone();
            in_shape[d] = size;
            Ok(vec![Some(Tensor::from_parts(dx, &in_shape))])
        }))
    }

    /// Embedding lookup: `self` holds token ids (U32, any shape `[...]`), `weight` is
    /// `[vocab, C]`; the result is `[..., C]`. The backward adds gradient rows into the
    /// table, deterministically.
    pub fn embedding(&self, weight: &Tensor) -> Result<Tensor> {
        if weight.dims() != 2 {
            return Err(Error::shape(
                "embedding",
                format!("the table must be [vocab, C], got {:?}", weight.shape()),
            ));
        }
        let rows = weight.index_select_as("embedding", 0, &self.flatten_all()?)?;
        let mut shape = Dims::from(self.shape());
        shape.push(weight.shape()[1]);
        rows.reshape(&shape)
    }

    /// GPT's input embedding, fused: `self` holds token ids (U32 `[B, T]`), `wte` is `[vocab, C]`
    /// and `wpe` `[positions, C]` with `T ≤ positions`. The result `[B, T, C]` is
    /// `wte[ids[b, t]] + wpe[t]` (as `self.embedding(wte)?.add(&wpe.narrow(0, 0, T)?)`), in one
    /// pass. The backward adds the gradient rows into `wte` deterministically (as embedding) and
    /// sums them over the batch into `wpe`'s first T rows.
    pub fn token_position_embedding(&self, wte: &Tensor, wpe: &Tensor) -> Result<Tensor> {
        const OP: &str = "token_position_embedding";
        let (b, t) = match self.shape() {
            &[b, t] => (b, t),
            s => return Err(Error::shape(OP, format!("ids must be [B, T], got {s:?}"))),
        };
        for (name, w) in [("wte", wte), ("wpe", wpe)] {
            self.same_device(w, OP)?;
            if w.dims() != 2 {
                return Err(Error::shape(
                    OP,
                    format!("{name} must be [rows, C], got {:?}", w.shape()),
                ));
            }
        }
        let (vocab, c, positions) = (wte.shape()[0], wte.shape()[1], wpe.shape()[0]);
        if wpe.shape()[1] != c || positions < t {
            return Err(Error::shape(
                OP,
                format!(
                    "ids {:?} and wte {:?} need a wpe of shape [>= {t}, {c}], got {:?}",
                    self.shape(),
                    wte.shape(),
                    wpe.shape()
                ),
            ));
        }
        if wte.dtype() != wpe.dtype() {
            return Err(Error::dtype_mismatch(OP, wte.dtype(), wpe.dtype()));
        }
        let ids_vec = checked_ids(OP, &self.flatten_all()?, vocab, Tensor::records(&[wte, wpe]))?;
        let (tok, pos) = (wte.dense()?, wpe.dense()?);
        let out = self
            .dense()?
            .storage()
            .token_position_embedding(&tok.storage(), &pos.storage(), t, c)?;
        let out = Tensor::from_parts(out, &[b, t, c]);
        Ok(out.record(OP, &[&tok, &pos], move |g, _, _| {
            let g = g.dense()?;
            let buckets = IdBuckets::new(&ids_vec, vocab, g.device())?;
            let dwte = Tensor::from_parts(g.storage().index_add(1, vocab, c, &buckets)?, &[vocab, c]);
            let summed = g.sum(&[0], false)?;
            let dwpe = if t == positions {
                summed
            } else {
                let rest = Tensor::zeros(&[positions - t, c], g.dtype(), g.device())?;
                Tensor::cat(&[summed, rest], 0)?
            };
            Ok(vec![Some(dwte), Some(dwpe)])
        }))
    }
}

/// Checks that every id of a 1-D U32 tensor is below `size` (reading them on the host); returns
/// them when `keep` (a backward will need them), else an empty list, so that a lookup without a
/// graph (a decode step's) allocates nothing.
fn checked_ids(op: &'static str, ids: &Tensor, size: usize, keep: bool) -> Result<Vec<u32>> {
    if ids.dtype() != DType::U32 {
        return Err(Error::DType {
            op,
            msg: format!("indices must be u32, got {}", ids.dtype()),
        });
    }
    if ids.dims() != 1 {
        return Err(Error::shape(
            op,
            format!("indices must be 1-D, got shape {:?}", ids.shape()),
        ));
    }
    // read in place on the CPU, copied from a device
    ids.storage().read_u32(ids.layout(), |v| {
        if let Some((pos, &id)) = v.iter().enumerate().find(|&(_, &id)| id as usize >= size) {
            return Err(Error::index(
                op,
                format!("index {id} at position {pos} is out of range for a dimension of size {size}"),
            ));
        }
        Ok(if keep { v.to_vec() } else { Vec::new() })
    })?
}
