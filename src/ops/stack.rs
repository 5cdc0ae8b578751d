//! Joining and cutting along a dimension: stack (a new dim), chunk and split (pieces of one dim).
//! All three are compositions: stack is a `cat` of `unsqueeze`d tensors, the pieces of chunk and split
//! are `narrow` views; their backward rules are those ops'.

use crate::tensor::layout::resolve_dim;
use crate::{Error, Result, Tensor};

impl Tensor {
    /// Joins same-shaped tensors along a new dimension `dim` (0..=rank; negative counts from the
    /// end of the result, so -1 appends): n tensors of shape `[a, b]` stacked at 1 give `[a, n, b]`.
    pub fn stack(tensors: &[Tensor], dim: isize) -> Result<Tensor> {
        const OP: &str = "stack";
        let first = tensors
            .first()
            .ok_or_else(|| Error::invalid(OP, "needs at least one tensor"))?;
        if let Some(t) = tensors.iter().find(|t| t.shape() != first.shape()) {
            return Err(Error::shape(
                OP,
                format!(
                    "every tensor must have one shape, got {:?} and {:?}",
                    first.shape(),
                    t.shape()
                ),
            ));
        }
        let rank = first.dims() as isize;
        let d = if dim < 0 { dim + rank + 1 } else { dim };
        if !(0..=rank).contains(&d) {
            return Err(Error::Dim {
                op: OP,
                dim,
                rank: first.dims() + 1,
                shape: first.shape().to_vec(),
            });
        }
        let pieces = tensors.iter().map(|t| t.unsqueeze(d)).collect::<Result<Vec<_>>>()?;
        Tensor::cat(&pieces, d)
    }

    /// Cuts `dim` into `chunks` pieces of ⌈size / chunks⌉ (the last one smaller), as PyTorch's
    /// `chunk`: fewer than `chunks` pieces come back when the size does not fill them (a size of 5
    /// in 4 chunks gives 2, 2, 1). Each piece is a view.
    pub fn chunk(&self, chunks: usize, dim: isize) -> Result<Vec<Tensor>> {
        if chunks == 0 {
            return Err(Error::invalid("chunk", "needs at least one chunk, got 0"));
        }
        let d = resolve_dim("chunk", dim, self.shape())?;
        let size = self.shape()[d].div_ceil(chunks).max(1);
        self.split(size, dim)
    }

    /// Cuts `dim` into pieces of `size` elements, the last one smaller if `size` does not divide
    /// it (PyTorch's `split` with an int; an empty dim gives one empty piece). Each piece is a view.
    pub fn split(&self, size: usize, dim: isize) -> Result<Vec<Tensor>> {
        let d = resolve_dim("split", dim, self.shape())?;
        if size == 0 {
            return Err(Error::invalid(
                "split",
                format!(
                    "pieces must hold at least one element (shape {:?}, dim {dim})",
                    self.shape()
                ),
            ));
        }
        let total = self.shape()[d];
        let sizes: Vec<usize> = if total == 0 {
            vec![0]
        } else {
            (0..total).step_by(size).map(|s| size.min(total - s)).collect()
        };
        self.split_sizes(&sizes, dim)
    }

    /// Cuts `dim` into consecutive pieces of the given sizes, which must add up to its size
    /// (PyTorch's `split` with a list). Each piece is a view.
    pub fn split_sizes(&self, sizes: &[usize], dim: isize) -> Result<Vec<Tensor>> {
        let d = resolve_dim("split", dim, self.shape())?;
        let total = self.shape()[d];
        if sizes.iter().try_fold(0usize, |a, &s| a.checked_add(s)) != Some(total) {
            return Err(Error::shape(
                "split",
                format!(
                    "sizes {sizes:?} must add up to the size {total} of dimension {dim} (shape {:?})",
                    self.shape()
                ),
            ));
        }
        let mut start = 0;
        sizes
            .iter()
            .map(|&len| {
                let piece = self.narrow(d as isize, start, len);
                start += len;
                piece
            })
            .collect()
    }
}
