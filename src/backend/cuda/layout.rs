//! Strided views as kernel arguments: `KilnLayout` in kernels/common.cuh.

use crate::tensor::layout::Layout;
use crate::{Error, Result};

/// The most dims a view may keep after [`collapse`]; `KILN_MAX_RANK` in common.cuh.
pub const MAX_RANK: usize = 8;

/// A view in the form the kernels take: dims innermost first, size-1 dims dropped and dims that are
/// contiguous with each other merged, so most views have rank 0 or 1.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelLayout {
    shape: [u64; MAX_RANK],
    strides: [i64; MAX_RANK],
    offset: u64,
    rank: u32,
    pad: u32,
}

// The C struct is 144 bytes with 8-byte alignment; a mismatch would scramble every kernel argument.
const _: () = assert!(std::mem::size_of::<KernelLayout>() == 144 && std::mem::align_of::<KernelLayout>() == 8);

/// Drops size-1 dims and merges each dim into its outer neighbour when the pair walks memory as one
/// dim (`stride[d] == shape[d+1] * stride[d+1]`). The row-major order of elements is unchanged.
pub fn collapse(shape: &[usize], strides: &[usize]) -> (Vec<usize>, Vec<usize>) {
    let mut out_shape: Vec<usize> = Vec::new();
    let mut out_strides: Vec<usize> = Vec::new();
    for (&size, &stride) in shape.iter().zip(strides) {
        if size == 1 {
            continue;
        }
        match (out_shape.last_mut(), out_strides.last_mut()) {
            (Some(prev_size), Some(prev_stride)) if *prev_stride == size * stride => {
                *prev_size *= size;
                *prev_stride = stride;
            }
            _ => {
                out_shape.push(size);
                out_strides.push(stride);
            }
        }
    }
    (out_shape, out_strides)
}

impl KernelLayout {
    /// `n` contiguous elements from `offset`.
    pub fn contiguous(n: usize, offset: usize) -> KernelLayout {
        KernelLayout::from_parts("layout", &[n], &[1], offset).expect("rank 1")
    }

    pub fn new(op: &'static str, layout: &Layout) -> Result<KernelLayout> {
        KernelLayout::from_parts(op, layout.shape(), layout.strides(), layout.offset())
    }

    pub fn from_parts(op: &'static str, shape: &[usize], strides: &[usize], offset: usize) -> Result<KernelLayout> {
        let (shape, strides) = collapse(shape, strides);
        if shape.len() > MAX_RANK {
            return Err(Error::invalid(
                op,
                format!(
                    "a strided view with {} dims that cannot be merged (shape {shape:?}, strides {strides:?}); \
                     the CUDA kernels take at most {MAX_RANK}: make it contiguous first",
                    shape.len()
                ),
            ));
        }
        let mut l = KernelLayout {
            shape: [1; MAX_RANK],
            strides: [0; MAX_RANK],
            offset: offset as u64,
            rank: shape.len() as u32,
            pad: 0,
        };
        for (i, (&size, &stride)) in shape.iter().zip(&strides).rev().enumerate() {
            l.shape[i] = size as u64;
            l.strides[i] = stride as i64;
        }
        Ok(l)
    }

    /// Whether element i is at `offset + i`.
    pub fn is_contiguous(&self) -> bool {
        self.rank == 0 || (self.rank == 1 && self.strides[0] == 1)
    }

    pub fn offset(&self) -> usize {
        self.offset as usize
    }

    /// The stride of the innermost dim (0 for rank 0).
    pub fn inner_stride(&self) -> usize {
        if self.rank == 0 {
            0
        } else {
            self.strides[0] as usize
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collapse_merges_contiguous_dims_and_drops_ones() {
        assert_eq!(collapse(&[2, 3, 4], &[12, 4, 1]), (vec![24], vec![1]));
        assert_eq!(collapse(&[2, 1, 3], &[3, 7, 1]), (vec![6], vec![1]));
        // a transpose stays two dims
        assert_eq!(collapse(&[3, 2], &[1, 3]), (vec![3, 2], vec![1, 3]));
        // a broadcast row: stride-0 outer dim
        assert_eq!(collapse(&[4, 5], &[0, 1]), (vec![4, 5], vec![0, 1]));
        // broadcast dims merge with each other
        assert_eq!(collapse(&[4, 5, 3], &[0, 0, 1]), (vec![20, 3], vec![0, 1]));
        assert_eq!(collapse(&[], &[]), (vec![], vec![]));
    }

    #[test]
    fn kernel_layout_is_innermost_first() {
        let l = KernelLayout::from_parts("t", &[3, 2], &[1, 3], 5).unwrap();
        assert_eq!(l.rank, 2);
        assert_eq!((l.shape[0], l.strides[0]), (2, 3));
        assert_eq!((l.shape[1], l.strides[1]), (3, 1));
        assert!(!l.is_contiguous());
        assert!(KernelLayout::contiguous(10, 0).is_contiguous());
    }
}
