//! Shape, strides and offset: how a tensor's logical elements map onto its storage.
//! Views (transpose, narrow, broadcast, ...) only change the layout, never the data.

use crate::{Error, Result};
use smallvec::SmallVec;

/// Dimensions a [`Layout`] holds inline; a layout of higher rank keeps its shape and strides on
/// the heap.
const INLINE_DIMS: usize = 6;

/// A shape or strides: inline up to six dims, so that making a tensor or a view of ordinary rank
/// allocates nothing for its layout (a decode step makes thousands), heap-allocated above.
pub type Dims = SmallVec<[usize; INLINE_DIMS]>;

/// Element `[i0, i1, ...]` lives at `offset + i0*strides[0] + i1*strides[1] + ...`.
/// A stride of 0 repeats one element along a dimension (broadcasting).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    shape: Dims,
    strides: Dims,
    offset: usize,
}

/// Row-major strides of a contiguous tensor of `shape`.
pub fn contiguous_strides(shape: &[usize]) -> Vec<usize> {
    row_major(shape).into_vec()
}

/// [`contiguous_strides`], inline.
fn row_major(shape: &[usize]) -> Dims {
    let mut strides = Dims::from_elem(0, shape.len());
    let mut acc = 1;
    for (s, &d) in strides.iter_mut().zip(shape).rev() {
        *s = acc;
        acc *= d;
    }
    strides
}

/// The number of elements of a tensor of `shape` (1 for a scalar, 0 if any dim is 0).
pub fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

/// The element count of a shape given by a user, refusing a shape whose non-zero dims
/// multiply past `usize::MAX` (a wrapped count could pass every later size check).
/// Zeros are skipped, so no partial product of a shape that passes can overflow either.
pub fn checked_numel(op: &'static str, shape: &[usize]) -> Result<usize> {
    shape
        .iter()
        .filter(|&&d| d != 0)
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .map(|n| if shape.contains(&0) { 0 } else { n })
        .ok_or_else(|| {
            Error::shape(
                op,
                format!("shape {shape:?} has too many elements: the product of its dims overflows usize"),
            )
        })
}

/// Turns a possibly negative dimension into an index in `0..rank`.
pub fn resolve_dim(op: &'static str, dim: isize, shape: &[usize]) -> Result<usize> {
    let rank = shape.len() as isize;
    let d = if dim < 0 { dim + rank } else { dim };
    if d < 0 || d >= rank {
        return Err(Error::Dim {
            op,
            dim,
            rank: shape.len(),
            shape: shape.to_vec(),
        });
    }
    Ok(d as usize)
}

/// NumPy broadcasting: align trailing dims; each pair must be equal or contain a 1.
pub fn broadcast_shapes(op: &'static str, lhs: &[usize], rhs: &[usize]) -> Result<Dims> {
    let rank = lhs.len().max(rhs.len());
    let mut out = Dims::from_elem(0, rank);
    for i in 0..rank {
        let l = if i < rank - lhs.len() {
            1
        } else {
            lhs[i - (rank - lhs.len())]
        };
        let r = if i < rank - rhs.len() {
            1
        } else {
            rhs[i - (rank - rhs.len())]
        };
        out[i] = match (l, r) {
            _ if l == r => l,
            (1, _) => r,
            (_, 1) => l,
            _ => {
                let msg =
                    format!("shapes {lhs:?} and {rhs:?} cannot be broadcast: dimension {i} has sizes {l} and {r}");
                return Err(Error::shape(op, msg));
            }
        };
    }
    Ok(out)
}

impl Layout {
    /// The row-major layout of `shape`, at offset 0.
    pub fn contiguous(shape: &[usize]) -> Self {
        Layout {
            shape: Dims::from_slice(shape),
            strides: row_major(shape),
            offset: 0,
        }
    }

    /// A layout from its parts: `strides[i]` elements between neighbours along dimension i,
    /// `offset` elements from the start of the storage.
    pub fn new(shape: impl Into<Dims>, strides: impl Into<Dims>, offset: usize) -> Self {
        let (shape, strides) = (shape.into(), strides.into());
        debug_assert_eq!(shape.len(), strides.len());
        Layout { shape, strides, offset }
    }

    /// The size of each dimension.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The step, in elements, between neighbours along each dimension (0 for a broadcast one).
    pub fn strides(&self) -> &[usize] {
        &self.strides
    }

    /// The storage index of the first element.
    pub fn offset(&self) -> usize {
        self.offset
    }

    /// The number of dimensions.
    pub fn rank(&self) -> usize {
        self.shape.len()
    }

    /// The number of elements (1 for rank 0).
    pub fn numel(&self) -> usize {
        numel(&self.shape)
    }

    /// Row-major with no gaps (dims of size 1 may have any stride).
    pub fn is_contiguous(&self) -> bool {
        let mut expected = 1;
        for (&d, &s) in self.shape.iter().zip(&self.strides).rev() {
            if d != 1 && s != expected {
                return false;
            }
            expected *= d;
        }
        true
    }

    /// Whether two elements of this view may share one storage position (a broadcast's stride 0).
    /// Dims are taken from the smallest stride up; each must step past everything the smaller ones
    /// span. That is exact for the views kiln makes (permutations, narrows and broadcasts of a
    /// contiguous layout); for any other layout a `true` may be a false alarm, never a `false`.
    pub fn may_overlap(&self) -> bool {
        if self.numel() == 0 {
            return false;
        }
        let mut dims: SmallVec<[(usize, usize); INLINE_DIMS]> = self
            .strides
            .iter()
            .zip(&self.shape)
            .filter(|&(_, &d)| d > 1)
            .map(|(&s, &d)| (s, d))
            .collect();
        dims.sort_unstable();
        let mut span = 0usize; // the largest offset the smaller-stride dims reach
        for (stride, size) in dims {
            if stride <= span {
                return true;
            }
            span = span.saturating_add(stride.saturating_mul(size - 1));
        }
        false
    }

    /// The contiguous range of storage this layout covers, if it is contiguous.
    pub fn contiguous_range(&self) -> Option<std::ops::Range<usize>> {
        self.is_contiguous().then(|| self.offset..self.offset + self.numel())
    }

    /// The same elements with dimensions `d0` and `d1` swapped (a view: only the shape and
    /// strides change). Both must be below the rank.
    pub fn transpose(&self, d0: usize, d1: usize) -> Layout {
        let mut l = self.clone();
        l.shape.swap(d0, d1);
        l.strides.swap(d0, d1);
        l
    }

    /// `dims` must be a permutation of `0..rank` (checked by the caller).
    pub fn permute(&self, dims: &[usize]) -> Layout {
        Layout {
            shape: dims.iter().map(|&d| self.shape[d]).collect(),
            strides: dims.iter().map(|&d| self.strides[d]).collect(),
            offset: self.offset,
        }
    }

    /// Elements `start..start+len` of dimension `dim` (bounds checked by the caller).
    pub fn narrow(&self, dim: usize, start: usize, len: usize) -> Layout {
        let mut l = self.clone();
        if len > 0 {
            l.offset += start * self.strides[dim];
        }
        l.shape[dim] = len;
        l
    }

    /// A view with `shape`, repeating size-1 (or missing leading) dims with stride 0.
    pub fn broadcast_to(&self, op: &'static str, shape: &[usize]) -> Result<Layout> {
        if shape.len() < self.rank() {
            return Err(Error::shape(
                op,
                format!(
                    "cannot broadcast shape {:?} to the lower-rank shape {shape:?}",
                    self.shape
                ),
            ));
        }
        checked_numel(op, shape)?;
        let extra = shape.len() - self.rank();
        let mut strides = Dims::from_elem(0, shape.len());
        for (i, &target) in shape.iter().enumerate().skip(extra) {
            let (d, s) = (self.shape[i - extra], self.strides[i - extra]);
            strides[i] = if d == target {
                s
            } else if d == 1 {
                0
            } else {
                return Err(Error::shape(
                    op,
                    format!(
                        "cannot broadcast shape {:?} to {shape:?}: dimension {i} has size {d}, expected 1 or {target}",
                        self.shape
                    ),
                ));
            };
        }
        Ok(Layout {
            shape: Dims::from_slice(shape),
            strides,
            offset: self.offset,
        })
    }

    /// A new shape for the same elements without copying, when the strides allow it
    /// (always for contiguous layouts). `None` means the data must be copied first.
    pub fn reshape(&self, shape: &[usize]) -> Option<Layout> {
        self.is_contiguous().then(|| Layout {
            shape: Dims::from_slice(shape),
            strides: row_major(shape),
            offset: self.offset,
        })
    }

    /// Splits a reduction over `dims`: the kept dims (with this layout's offset) and the reduced
    /// dims (offset 0, to be added to each kept element's offset).
    pub fn split_reduced(&self, dims: &[usize]) -> (Layout, Layout) {
        let (mut outer, mut inner) = (
            Layout::new(Dims::new(), Dims::new(), self.offset),
            Layout::new(Dims::new(), Dims::new(), 0),
        );
        for (d, (&size, &stride)) in self.shape.iter().zip(&self.strides).enumerate() {
            let part = if dims.contains(&d) { &mut inner } else { &mut outer };
            part.shape.push(size);
            part.strides.push(stride);
        }
        (outer, inner)
    }

    /// Storage offsets of all elements in row-major logical order.
    pub fn offsets(&self) -> StridedOffsets<'_> {
        StridedOffsets {
            layout: self,
            index: Dims::from_elem(0, self.rank()),
            next: self.offset,
            remaining: self.numel(),
        }
    }
}

/// Iterator over storage offsets of a layout, an odometer over the logical index (held inline
/// up to six dims: starting one allocates nothing).
pub struct StridedOffsets<'a> {
    layout: &'a Layout,
    index: Dims,
    next: usize,
    remaining: usize,
}

impl Iterator for StridedOffsets<'_> {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        if self.remaining == 0 {
            return None;
        }
        self.remaining -= 1;
        let current = self.next;
        for d in (0..self.index.len()).rev() {
            self.index[d] += 1;
            self.next += self.layout.strides[d];
            if self.index[d] < self.layout.shape[d] {
                break;
            }
            self.next -= self.index[d] * self.layout.strides[d];
            self.index[d] = 0;
        }
        Some(current)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.remaining, Some(self.remaining))
    }
}

impl ExactSizeIterator for StridedOffsets<'_> {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_of_a_transposed_view() {
        let l = Layout::contiguous(&[2, 3]).transpose(0, 1);
        assert_eq!(l.offsets().collect::<Vec<_>>(), vec![0, 3, 1, 4, 2, 5]);
        assert!(!l.is_contiguous());
    }

    #[test]
    fn broadcast_repeats_with_zero_stride() {
        let l = Layout::contiguous(&[3, 1]).broadcast_to("t", &[2, 3, 4]).unwrap();
        assert_eq!(l.strides(), &[0, 1, 0]);
        assert_eq!(l.offsets().take(5).collect::<Vec<_>>(), vec![0, 0, 0, 0, 1]);
    }

    #[test]
    fn overlap_is_found_in_broadcasts_only() {
        let c = Layout::contiguous(&[2, 3, 4]);
        assert!(!c.may_overlap());
        assert!(!c.permute(&[2, 0, 1]).may_overlap());
        assert!(!c.narrow(2, 1, 2).transpose(0, 2).may_overlap());
        assert!(!Layout::contiguous(&[3, 1])
            .broadcast_to("t", &[3, 1])
            .unwrap()
            .may_overlap());
        assert!(Layout::contiguous(&[3, 1])
            .broadcast_to("t", &[3, 5])
            .unwrap()
            .may_overlap());
        assert!(Layout::contiguous(&[4])
            .broadcast_to("t", &[2, 4])
            .unwrap()
            .may_overlap());
        assert!(Layout::new(vec![3, 3], vec![1, 1], 0).may_overlap()); // a sliding window
        assert!(!Layout::new(vec![0, 3], vec![0, 0], 0).may_overlap()); // empty
    }

    #[test]
    fn broadcast_shapes_follows_numpy() {
        assert_eq!(
            broadcast_shapes("t", &[5, 1, 3], &[4, 1]).unwrap().as_slice(),
            [5, 4, 3]
        );
        assert!(broadcast_shapes("t", &[2, 3], &[4, 3]).is_err());
        assert_eq!(broadcast_shapes("t", &[], &[2]).unwrap().as_slice(), [2]);
    }
}
