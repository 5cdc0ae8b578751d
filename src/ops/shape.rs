//! Shape ops. Views (reshape of contiguous data, reshape_infer, transpose, t, permute, narrow, broadcast_to,
//! squeeze, unsqueeze) share storage; contiguous and cat copy.
//!
//! Backward: reshape, squeeze, unsqueeze, g reshaped back; transpose, permute, the inverse
//! permutation; narrow, g placed in zeros of the input's shape; broadcast_to, g summed to the
//! input's shape; cat, g narrowed into its pieces; contiguous, g.

use crate::backend::Storage;
use crate::tensor::layout::{checked_numel, resolve_dim, Dims, Layout};
use crate::{Error, Result, Tensor};
use smallvec::SmallVec;

impl Tensor {
    /// The same elements in a new shape; a view when the layout allows, else a copy.
    pub fn reshape(&self, shape: &[usize]) -> Result<Tensor> {
        let n = checked_numel("reshape", shape)?;
        if n != self.numel() {
            return Err(Error::shape(
                "reshape",
                format!(
                    "cannot reshape {:?} ({} elements) to {shape:?} ({n} elements)",
                    self.shape(),
                    self.numel(),
                ),
            ));
        }
        if shape == self.shape() {
            return Ok(self.clone());
        }
        let source = self.contiguous()?;
        let layout = source
            .layout()
            .reshape(shape)
            .expect("contiguous layouts reshape as views");
        let out = source.with_layout(layout);
        Ok(out.record("reshape", &[&source], |g, inputs, _| {
            Ok(vec![Some(g.reshape(inputs[0].shape())?)])
        }))
    }

    /// [`Tensor::reshape`] with one dimension that may be -1: its size is inferred from the others
    /// and the number of elements (PyTorch's `reshape(-1, 4)` is `reshape_infer(&[-1, 4])`). A
    /// second -1, or any other negative size, is an error. `reshape` itself takes `&[usize]`, so
    /// a shape that is known never pays for the check.
    pub fn reshape_infer(&self, shape: &[isize]) -> Result<Tensor> {
        const OP: &str = "reshape_infer";
        let bad = || Error::shape(OP, format!("cannot reshape {:?} to {shape:?}", self.shape()));
        let mut inferred = None;
        let mut known = 1usize;
        for (d, &size) in shape.iter().enumerate() {
            match size {
                -1 if inferred.is_none() => inferred = Some(d),
                -1 => return Err(Error::shape(OP, format!("{shape:?} has more than one -1"))),
                s if s < 0 => return Err(Error::shape(OP, format!("{shape:?} has the negative size {s}"))),
                s => known = known.checked_mul(s as usize).ok_or_else(bad)?,
            }
        }
        let mut resolved: Vec<usize> = shape.iter().map(|&s| s.max(0) as usize).collect();
        if let Some(d) = inferred {
            if known == 0 || !self.numel().is_multiple_of(known) {
                return Err(Error::shape(
                    OP,
                    format!(
                        "cannot infer the -1 in {shape:?} for {:?} ({} elements)",
                        self.shape(),
                        self.numel()
                    ),
                ));
            }
            resolved[d] = self.numel() / known;
        }
        self.reshape(&resolved)
    }

    /// The transpose of a matrix, or of the last two dims of a batch of matrices (PyTorch's
    /// `mT`; its `t()` takes only rank ≤ 2). Rank 0 and 1 come back unchanged, as `t()` does.
    pub fn t(&self) -> Result<Tensor> {
        if self.dims() < 2 {
            return Ok(self.clone());
        }
        self.transpose(-2, -1)
    }

    /// Swaps two dims (a view).
    pub fn transpose(&self, d0: isize, d1: isize) -> Result<Tensor> {
        let a = resolve_dim("transpose", d0, self.shape())?;
        let b = resolve_dim("transpose", d1, self.shape())?;
        let out = self.with_layout(self.layout().transpose(a, b));
        Ok(out.record("transpose", &[self], move |g, _, _| {
            Ok(vec![Some(g.transpose(a as isize, b as isize)?)])
        }))
    }

    /// Reorders dims: result dim i is input dim `dims[i]` (a view).
    pub fn permute(&self, dims: &[usize]) -> Result<Tensor> {
        let mut seen: SmallVec<[bool; 8]> = SmallVec::from_elem(false, self.dims());
        if dims.len() != self.dims()
            || dims
                .iter()
                .any(|&d| d >= self.dims() || std::mem::replace(&mut seen[d], true))
        {
            return Err(Error::shape(
                "permute",
                format!(
                    "{dims:?} is not a permutation of the {} dims of shape {:?}",
                    self.dims(),
                    self.shape()
                ),
            ));
        }
        let out = self.with_layout(self.layout().permute(dims));
        let mut inverse = Dims::from_elem(0, dims.len());
        for (i, &d) in dims.iter().enumerate() {
            inverse[d] = i;
        }
        Ok(out.record("permute", &[self], move |g, _, _| Ok(vec![Some(g.permute(&inverse)?)])))
    }

    /// Elements `start..start + len` along `dim` (a view).
    pub fn narrow(&self, dim: isize, start: usize, len: usize) -> Result<Tensor> {
        let d = resolve_dim("narrow", dim, self.shape())?;
        let size = self.shape()[d];
        if start.checked_add(len).is_none_or(|end| end > size) {
            return Err(Error::index(
                "narrow",
                format!(
                    "range {start}..{} is out of bounds for dimension {dim} of size {size} (shape {:?})",
                    start.saturating_add(len),
                    self.shape()
                ),
            ));
        }
        let out = self.with_layout(self.layout().narrow(d, start, len));
        Ok(out.record("narrow", &[self], move |g, inputs, _| {
            // the gradient is g placed at start..start+len, zeros elsewhere
            let shape = inputs[0].shape();
            let mut pieces = Vec::new();
            let mut before = shape.to_vec();
            before[d] = start;
            let mut after = shape.to_vec();
            after[d] = size - start - len;
            pieces.push(Tensor::zeros(&before, g.dtype(), g.device())?);
            pieces.push(g.clone());
            pieces.push(Tensor::zeros(&after, g.dtype(), g.device())?);
            Ok(vec![Some(Tensor::cat(&pieces, d as isize)?)])
        }))
    }

    /// A view repeating size-1 (and missing leading) dims to `shape` (NumPy rules).
    pub fn broadcast_to(&self, shape: &[usize]) -> Result<Tensor> {
        if shape == self.shape() {
            return Ok(self.clone());
        }
        let out = self.with_layout(self.layout().broadcast_to("broadcast_to", shape)?);
        Ok(out.record("broadcast_to", &[self], |g, inputs, _| {
            Ok(vec![Some(g.sum_to_shape(inputs[0].shape())?)])
        }))
    }

    /// Removes dimension `dim`, which must have size 1.
    pub fn squeeze(&self, dim: isize) -> Result<Tensor> {
        let d = resolve_dim("squeeze", dim, self.shape())?;
        if self.shape()[d] != 1 {
            return Err(Error::shape(
                "squeeze",
                format!(
                    "dimension {dim} of shape {:?} has size {}, not 1",
                    self.shape(),
                    self.shape()[d]
                ),
            ));
        }
        let (mut shape, mut strides) = (Dims::from(self.shape()), Dims::from(self.layout().strides()));
        shape.remove(d);
        strides.remove(d);
        self.size_one_view("squeeze", shape, strides)
    }

    /// Inserts a size-1 dimension at `dim` (0..=rank; negative counts from the end, -1 appends).
    pub fn unsqueeze(&self, dim: isize) -> Result<Tensor> {
        let rank = self.dims() as isize;
        let d = if dim < 0 { dim + rank + 1 } else { dim };
        if !(0..=rank).contains(&d) {
            return Err(Error::Dim {
                op: "unsqueeze",
                dim,
                rank: self.dims(),
                shape: self.shape().to_vec(),
            });
        }
        let (mut shape, mut strides) = (Dims::from(self.shape()), Dims::from(self.layout().strides()));
        shape.insert(d as usize, 1);
        strides.insert(d as usize, 0); // any stride serves a dimension of size 1
        self.size_one_view("unsqueeze", shape, strides)
    }

    /// `self` viewed with a dimension of size 1 removed or inserted (`shape`, `strides`): the
    /// same elements at the same offsets, so never a copy, whatever the strides (a view of a
    /// KV-cache buffer stays a view).
    fn size_one_view(&self, op: &'static str, shape: Dims, strides: Dims) -> Result<Tensor> {
        let out = self.with_layout(Layout::new(shape, strides, self.layout().offset()));
        Ok(out.record(op, &[self], |g, inputs, _| {
            Ok(vec![Some(g.reshape(inputs[0].shape())?)])
        }))
    }

    /// Merges all dims into one.
    pub fn flatten_all(&self) -> Result<Tensor> {
        self.reshape(&[self.numel()])
    }

    /// A row-major copy if the layout is not already contiguous.
    pub fn contiguous(&self) -> Result<Tensor> {
        if self.is_contiguous() {
            return Ok(self.clone());
        }
        let out = Tensor::from_parts(self.storage().contiguous(self.layout())?, self.shape());
        Ok(out.record("contiguous", &[self], |g, _, _| Ok(vec![Some(g.clone())])))
    }

    /// A contiguous tensor that is the whole of its storage from offset 0: what the fused
    /// kernels (softmax, layer_norm, cross_entropy, index_select), which read entire storages,
    /// need. A contiguous view into a larger storage (a narrow, a row of a cache) is copied.
    pub(crate) fn dense(&self) -> Result<Tensor> {
        if self.is_contiguous() && self.layout().offset() == 0 && self.storage().len() == self.numel() {
            return Ok(self.clone());
        }
        self.copy()
    }

    /// Copies of `tensors` (one dtype, one device) laid end to end in one new buffer, each
    /// returned as a view of its part with its shape: for weights that are read over and over,
    /// which on the CPU then lie in huge pages ([`Storage::zeros_for_weights`]). Not recorded by
    /// autograd (the views are new leaves).
    pub(crate) fn packed(tensors: &[&Tensor]) -> Result<Vec<Tensor>> {
        let Some(first) = tensors.first() else {
            return Ok(Vec::new());
        };
        let mut total = 0usize;
        for t in tensors {
            first.same_device(t, "pack")?;
            if t.dtype() != first.dtype() {
                return Err(Error::dtype_mismatch("pack", first.dtype(), t.dtype()));
            }
            total = total
                .checked_add(t.numel())
                .ok_or_else(|| Error::shape("pack", "the sizes add up past usize::MAX".to_string()))?;
        }
        let buffer = Tensor::from_parts(
            Storage::zeros_for_weights(total, first.dtype(), first.device())?,
            &[total],
        );
        let mut start = 0;
        tensors
            .iter()
            .map(|t| {
                let n = t.numel();
                buffer.assign_region(&buffer.layout().narrow(0, start, n), &t.flatten_all()?.detach())?;
                let view = buffer.narrow(0, start, n)?.reshape(t.shape());
                start += n;
                view
            })
            .collect()
    }

    /// Joins tensors along `dim`; all other dims must agree.
    pub fn cat(tensors: &[Tensor], dim: isize) -> Result<Tensor> {
        let first = tensors
            .first()
            .ok_or_else(|| Error::invalid("cat", "needs at least one tensor"))?;
        let d = resolve_dim("cat", dim, first.shape())?;
        let mut shape = first.shape().to_vec();
        shape[d] = 0;
        for t in tensors {
            first.same_device(t, "cat")?;
            if t.dtype() != first.dtype() {
                return Err(Error::dtype_mismatch("cat", first.dtype(), t.dtype()));
            }
            let compatible = t.dims() == first.dims()
                && t.shape()
                    .iter()
                    .zip(first.shape())
                    .enumerate()
                    .all(|(i, (a, b))| i == d || a == b);
            if !compatible {
                return Err(Error::shape(
                    "cat",
                    format!(
                        "shapes {:?} and {:?} differ outside dimension {dim}",
                        first.shape(),
                        t.shape()
                    ),
                ));
            }
            shape[d] = shape[d].checked_add(t.shape()[d]).ok_or_else(|| {
                Error::shape("cat", format!("the sizes along dimension {dim} add up past usize::MAX"))
            })?;
        }
        let mut out = Tensor::zeros(&shape, first.dtype(), first.device())?;
        {
            let mut start = 0;
            for t in tensors {
                let len = t.shape()[d];
                out.assign_region(&out.layout().narrow(d, start, len), t)?;
                start += len;
            }
        }
        let sizes: Vec<usize> = tensors.iter().map(|t| t.shape()[d]).collect();
        let inputs: Vec<&Tensor> = tensors.iter().collect();
        out = out.record("cat", &inputs, move |g, _, _| {
            let mut start = 0;
            sizes
                .iter()
                .map(|&len| {
                    let piece = g.narrow(d as isize, start, len);
                    start += len;
                    piece.map(Some)
                })
                .collect()
        });
        Ok(out)
    }
}
