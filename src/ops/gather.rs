//! Picking and adding elements by a per-element index along one dim: gather and scatter_add
//! (PyTorch's `gather` and `scatter_add`).
//!
//! Both are compositions of the embedding kernels over the flattened tensor: the index tensor is
//! read on the host (one small transfer, as index_select checks its ids), checked, and turned into
//! flat row-major positions, which go back to the device as a U32 tensor; gather is then an
//! `index_select` of those positions and scatter_add an `index_add` into them (deterministic: each
//! position sums its bucket of source elements in order, no float atomics).
//!
//! Backward: gather, dx = scatter_add of g into zeros at the index (index_select's own rule);
//! scatter_add, dself = g and dsrc = gather(g, dim, index).

use crate::backend::IdBuckets;
use crate::tensor::layout::resolve_dim;
use crate::{DType, Error, Result, Tensor};

impl Tensor {
    /// `out[i][j][k] = self[i][index[i][j][k]][k]` for `dim` = 1, and likewise for any dim:
    /// `index` (U32) has the rank of `self`, each of its sizes at most `self`'s outside `dim`, and
    /// every entry below `self.shape()[dim]`; the result has `index`'s shape. Differentiable in
    /// `self`.
    pub fn gather(&self, dim: isize, index: &Tensor) -> Result<Tensor> {
        self.gather_as("gather", dim, index)
    }

    /// gather whose errors are named `op` (nll_loss is built on it).
    pub(crate) fn gather_as(&self, op: &'static str, dim: isize, index: &Tensor) -> Result<Tensor> {
        let d = resolve_dim(op, dim, self.shape())?;
        let positions = flat_positions(op, self, d, index, None)?;
        let positions = Tensor::from_vec(positions, &[index.numel()], self.device())?;
        self.flatten_all()?.index_select(0, &positions)?.reshape(index.shape())
    }

    /// `self` with every element of `src` added at the position whose coordinate along `dim` is
    /// `index`'s (`self[i][index[i][j][k]][k] += src[i][j][k]` for `dim` = 1): `index` (U32) and
    /// `src` have one shape, of `self`'s rank, at most `self`'s sizes outside `dim`; entries below
    /// `self.shape()[dim]`. Elements that land on one position add up in row-major order of `src`,
    /// so a run repeats bit for bit. Differentiable in `self` and `src`. (PyTorch also allows a
    /// `src` larger than `index`, whose extra elements it ignores; kiln asks for one shape.)
    pub fn scatter_add(&self, dim: isize, index: &Tensor, src: &Tensor) -> Result<Tensor> {
        const OP: &str = "scatter_add";
        let d = resolve_dim(OP, dim, self.shape())?;
        self.same_device(src, OP)?;
        if src.dtype() != self.dtype() {
            return Err(Error::dtype_mismatch(OP, self.dtype(), src.dtype()));
        }
        let positions = flat_positions(OP, self, d, index, Some(src))?;
        let n = self.numel();
        let src_flat = src.flatten_all()?.dense()?;
        let buckets = IdBuckets::new(&positions, n, self.device())?;
        let added = src_flat.storage().index_add(1, n, 1, &buckets)?;
        let positions = Tensor::from_vec(positions, &[src.numel()], self.device())?;
        let added = Tensor::from_parts(added, &[n]).record(OP, &[&src_flat], move |g, _, _| {
            Ok(vec![Some(g.index_select(0, &positions)?)])
        });
        self.add(&added.reshape(self.shape())?)
    }
}

/// The row-major position in `x` of every element of `index` (U32, the rank of `x`, sizes at most
/// `x`'s outside dimension `d`) with its coordinate along `d` replaced by the index value; `src`,
/// when given, must have `index`'s shape. Each failure names `op`, the shapes and the bad entry.
fn flat_positions(op: &'static str, x: &Tensor, d: usize, index: &Tensor, src: Option<&Tensor>) -> Result<Vec<u32>> {
    x.same_device(index, op)?;
    if index.dtype() != DType::U32 {
        return Err(Error::DType {
            op,
            msg: format!("the index must be u32, got {}", index.dtype()),
        });
    }
    let fits = index.dims() == x.dims()
        && index
            .shape()
            .iter()
            .zip(x.shape())
            .enumerate()
            .all(|(k, (&i, &s))| k == d || i <= s);
    if !fits {
        return Err(Error::shape(
            op,
            format!(
                "the index {:?} must have the rank of the input {:?} and no larger sizes outside dimension {d}",
                index.shape(),
                x.shape()
            ),
        ));
    }
    if let Some(src) = src {
        if src.shape() != index.shape() {
            return Err(Error::shape(
                op,
                format!(
                    "src {:?} and index {:?} must have one shape",
                    src.shape(),
                    index.shape()
                ),
            ));
        }
    }
    if u32::try_from(x.numel()).is_err() {
        return Err(Error::invalid(
            op,
            format!(
                "{} elements are more than the 2^32 - 1 positions a u32 index holds",
                x.numel()
            ),
        ));
    }
    let ids = index.to_vec::<u32>()?;
    let size = x.shape()[d];
    // x's row-major strides; `at` walks index's multi-indices in row-major order
    let mut strides = vec![1usize; x.dims()];
    for k in (0..x.dims().saturating_sub(1)).rev() {
        strides[k] = strides[k + 1] * x.shape()[k + 1];
    }
    let mut at = vec![0usize; index.dims()];
    let mut positions = Vec::with_capacity(ids.len());
    for (flat, &id) in ids.iter().enumerate() {
        if id as usize >= size {
            return Err(Error::index(
                op,
                format!(
                    "index {id} at position {:?} is out of range for dimension {d} of size {size} (input {:?})",
                    at,
                    x.shape()
                ),
            ));
        }
        let coordinate = |k: usize| if k == d { id as usize } else { at[k] };
        let position: usize = (0..at.len()).map(|k| coordinate(k) * strides[k]).sum();
        positions.push(position as u32);
        // next multi-index of `index`
        if flat + 1 < ids.len() {
            for k in (0..at.len()).rev() {
                at[k] += 1;
                if at[k] < index.shape()[k] {
                    break;
                }
                at[k] = 0;
            }
        }
    }
    Ok(positions)
}
