//! The element types GEMM works on, its views (strided matrices, the scaling epilogue), and one
//! product to compute, checked against its slices.

use half::{bf16, f16};
use std::mem::MaybeUninit;
use std::ops::{Add, Mul};

/// The element types GEMM works on: f32 and f64 (operands and result), and bf16 (operands of
/// [`super::bgemm`], accumulated in f32). Every bit pattern, including all zeros, is a valid
/// value, which the packing buffers rely on.
pub(super) trait Element: Copy + Send + Sync + PartialEq + Add<Output = Self> + Mul<Output = Self> {
    const ZERO: Self;
    const ONE: Self;
}

impl Element for f32 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
}

impl Element for f64 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
}

impl Element for bf16 {
    const ZERO: Self = bf16::ZERO;
    const ONE: Self = bf16::ONE;
}

/// An operand element type whose values accumulate in `T`: `T` itself, or bf16 in f32 (exact).
pub(super) trait Operand<T>: Element {
    fn widen(self) -> T;
}

impl<T: Element> Operand<T> for T {
    fn widen(self) -> T {
        self
    }
}

impl Operand<f32> for bf16 {
    fn widen(self) -> f32 {
        self.to_f32()
    }
}

/// The element types B may have on the streamed path (`streamed.rs`), widened to f32 as they are read.
pub trait Streamed: Copy + Send + Sync + 'static {
    /// Zero, to pad a partial vector.
    const ZERO: Self;
    /// How the SIMD loops widen it (a constant, so each loop is compiled for one case).
    const FORMAT: Format;
    fn to_f32(self) -> f32;
}

/// The bit layouts [`Streamed`] elements come in.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Format {
    F32,
    /// The top 16 bits of an f32.
    Bf16,
    /// IEEE half precision (a KV cache kept as llama.cpp keeps one).
    F16,
}

impl Streamed for f32 {
    const ZERO: Self = 0.0;
    const FORMAT: Format = Format::F32;
    fn to_f32(self) -> f32 {
        self
    }
}

impl Streamed for bf16 {
    const ZERO: Self = bf16::ZERO;
    const FORMAT: Format = Format::Bf16;
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
}

impl Streamed for f16 {
    const ZERO: Self = f16::ZERO;
    const FORMAT: Format = Format::F16;
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
}

/// A read-only strided matrix view: element `(i, j)` at `ptr + i*rs + j*cs`.
#[derive(Clone, Copy)]
pub(super) struct MatRef<T> {
    pub(super) ptr: *const T,
    pub(super) rs: usize,
    pub(super) cs: usize,
}

// SAFETY: a MatRef is only ever read through, and it points into a `&[T]` that outlives
// every thread the view is shared with (the scope of `run`).
unsafe impl<T: Sync> Send for MatRef<T> {}
// SAFETY: as above.
unsafe impl<T: Sync> Sync for MatRef<T> {}

impl<T> MatRef<T> {
    /// The view starting at element `(i, j)`.
    ///
    /// # Safety
    ///
    /// `(i, j)` must be an element of the matrix.
    pub(super) unsafe fn at(self, i: usize, j: usize) -> Self {
        Self {
            // SAFETY: the element lies inside the operand's slice (caller's contract).
            ptr: unsafe { self.ptr.add(i * self.rs + j * self.cs) },
            ..self
        }
    }

    pub(super) fn t(self) -> Self {
        Self {
            ptr: self.ptr,
            rs: self.cs,
            cs: self.rs,
        }
    }
}

/// A writable strided matrix view: element `(i, j)` at `ptr + i*rs + j*cs`.
#[derive(Clone, Copy)]
pub(super) struct MatMut<T> {
    pub(super) ptr: *mut T,
    pub(super) rs: usize,
    pub(super) cs: usize,
}

// SAFETY: C is checked not to overlap itself (`is_injective`), and `run` hands every thread a
// disjoint rectangle of it, so no element is accessed by two threads; the `&mut [T]` it
// points into outlives those threads.
unsafe impl<T: Send> Send for MatMut<T> {}
// SAFETY: as above.
unsafe impl<T: Send> Sync for MatMut<T> {}

impl<T> MatMut<T> {
    /// The view starting at element `(i, j)`.
    ///
    /// # Safety
    ///
    /// `(i, j)` must be an element of the matrix.
    pub(super) unsafe fn at(self, i: usize, j: usize) -> Self {
        Self {
            // SAFETY: the element lies inside C's slice (caller's contract).
            ptr: unsafe { self.ptr.add(i * self.rs + j * self.cs) },
            ..self
        }
    }

    pub(super) fn t(self) -> Self {
        Self {
            ptr: self.ptr,
            rs: self.cs,
            cs: self.rs,
        }
    }
}

/// The scaling applied when a micro-tile is written back: `C = alpha·acc + beta·C`, where
/// `beta == 0` means C is not read (it may be uninitialised).
#[derive(Clone, Copy)]
pub(super) struct Epilogue<T> {
    pub(super) alpha: T,
    pub(super) beta: T,
}

impl<T: Element> Epilogue<T> {
    /// Writes `alpha·acc + beta·C` to the element of C at `cij`, reading it only when beta is
    /// not 0.
    ///
    /// # Safety
    ///
    /// `cij` is valid for writes, and for reads of an initialised value when beta is not 0; no
    /// other thread accesses it.
    #[inline(always)]
    pub(super) unsafe fn store(&self, cij: *mut T, acc: T) {
        // SAFETY: caller's contract.
        unsafe {
            cij.write(if self.beta == T::ZERO {
                self.alpha * acc
            } else {
                self.alpha * acc + self.beta * cij.read()
            })
        }
    }
}

/// `c` viewed as possibly uninitialised elements, the form [`Problem`] checks C in.
///
/// # Safety
///
/// Only initialised values are written through the result (so `c` stays initialised).
pub(super) unsafe fn as_uninit<T>(c: &mut [T]) -> &mut [MaybeUninit<T>] {
    // SAFETY: `MaybeUninit<T>` has `T`'s layout; the caller writes only initialised values.
    unsafe { &mut *(c as *mut [T] as *mut [MaybeUninit<T>]) }
}

/// A validated GEMM call: every view fits in its slice and C does not overlap itself. A and B
/// hold `I` (the result's type `T`, or bf16 for an f32 result).
#[derive(Clone, Copy)]
pub(super) struct Problem<T, I = T> {
    pub(super) m: usize,
    pub(super) n: usize,
    pub(super) k: usize,
    pub(super) a: MatRef<I>,
    pub(super) b: MatRef<I>,
    pub(super) c: MatMut<T>,
    pub(super) ep: Epilogue<T>,
}

impl<T: Element, I> Problem<T, I> {
    /// Checks the views against their slices; panics on a negative stride or any
    /// out-of-bounds element.
    pub(super) fn new(
        mnk: [usize; 3],
        alpha: T,
        a: (&[I], isize, isize),
        b: (&[I], isize, isize),
        beta: T,
        (c, rsc, csc): (&mut [T], isize, isize),
    ) -> Self {
        // SAFETY: `c` is initialised, so it may be read whatever beta is, and the GEMM writes
        // only initialised values through the `MaybeUninit` view, so `c` stays initialised.
        unsafe { Self::with_output(mnk, alpha, a, b, beta, (as_uninit(c), rsc, csc)) }
    }

    /// As [`Self::new`] with beta 0, into a C that may be uninitialised: every element of its
    /// `m×n` view is written (`C = alpha·A·B`), none read.
    pub(super) fn new_into(
        mnk: [usize; 3],
        alpha: T,
        a: (&[I], isize, isize),
        b: (&[I], isize, isize),
        c: (&mut [MaybeUninit<T>], isize, isize),
    ) -> Self {
        // SAFETY: beta is 0, so C is never read.
        unsafe { Self::with_output(mnk, alpha, a, b, T::ZERO, c) }
    }

    /// The checks of [`Self::new`], on a C whose elements may be uninitialised.
    ///
    /// # Safety
    ///
    /// When `beta` is not zero, every element of C's `m×n` view is initialised (it is read).
    unsafe fn with_output(
        [m, n, k]: [usize; 3],
        alpha: T,
        (a, rsa, csa): (&[I], isize, isize),
        (b, rsb, csb): (&[I], isize, isize),
        beta: T,
        (c, rsc, csc): (&mut [MaybeUninit<T>], isize, isize),
    ) -> Self {
        let [rsa, csa, rsb, csb, rsc, csc] = [rsa, csa, rsb, csb, rsc, csc]
            .map(|stride| usize::try_from(stride).unwrap_or_else(|_| panic!("gemm: negative stride {stride}")));
        assert_fits("A", m, k, rsa, csa, a.len());
        assert_fits("B", k, n, rsb, csb, b.len());
        assert_fits("C", m, n, rsc, csc, c.len());
        assert!(
            is_injective(m, n, rsc, csc),
            "gemm: C ({m}×{n}, strides {rsc}, {csc}) maps two elements to the same slot"
        );
        Self {
            m,
            n,
            k,
            a: MatRef {
                ptr: a.as_ptr(),
                rs: rsa,
                cs: csa,
            },
            b: MatRef {
                ptr: b.as_ptr(),
                rs: rsb,
                cs: csb,
            },
            c: MatMut {
                ptr: c.as_mut_ptr().cast(),
                rs: rsc,
                cs: csc,
            },
            ep: Epilogue { alpha, beta },
        }
    }

    /// The same product written as `Cᵀ = Bᵀ·Aᵀ`.
    pub(super) fn transposed(self) -> Self {
        Self {
            m: self.n,
            n: self.m,
            a: self.b.t(),
            b: self.a.t(),
            c: self.c.t(),
            ..self
        }
    }

    /// The sub-product computing columns `cols` of C.
    ///
    /// # Safety
    ///
    /// `cols` must be a non-empty range inside `0..n`.
    pub(super) unsafe fn cols(self, cols: std::ops::Range<usize>) -> Self {
        Self {
            n: cols.len(),
            // SAFETY: column `cols.start` exists in B and C (caller's contract; k, m > 0 in `run`).
            b: unsafe { self.b.at(0, cols.start) },
            // SAFETY: as above.
            c: unsafe { self.c.at(0, cols.start) },
            ..self
        }
    }

    /// The sub-product over steps `ks` of the shared dimension (A's columns, B's rows), into
    /// the same C.
    ///
    /// # Safety
    ///
    /// `ks` must be a non-empty range inside `0..k`.
    pub(super) unsafe fn ks(self, ks: std::ops::Range<usize>) -> Self {
        Self {
            k: ks.len(),
            // SAFETY: step `ks.start` exists in A and B (caller's contract; m, n > 0 in `run`).
            a: unsafe { self.a.at(0, ks.start) },
            // SAFETY: as above.
            b: unsafe { self.b.at(ks.start, 0) },
            ..self
        }
    }

    /// `C = beta·C`, the whole result when `k == 0` or `alpha == 0` (A and B are not read).
    pub(super) fn scale_c(self) {
        for i in 0..self.m {
            for j in 0..self.n {
                // SAFETY: (i, j) is an element of C, which `new` checked fits in its slice; no
                // other reference to C is live; C is read only when beta is not 0, and then it
                // is initialised (`with_output`'s contract).
                unsafe {
                    let cij = self.c.ptr.add(i * self.c.rs + j * self.c.cs);
                    cij.write(if self.ep.beta == T::ZERO {
                        T::ZERO
                    } else {
                        self.ep.beta * cij.read()
                    });
                }
            }
        }
    }
}

/// Panics unless every element of the `rows×cols` view lies inside a slice of `len`.
pub(super) fn assert_fits(name: &str, rows: usize, cols: usize, rs: usize, cs: usize, len: usize) {
    if rows == 0 || cols == 0 {
        return;
    }
    let last = (rows - 1)
        .checked_mul(rs)
        .zip((cols - 1).checked_mul(cs))
        .and_then(|(r, c)| r.checked_add(c));
    assert!(
        last.is_some_and(|last| last < len),
        "gemm: {name} ({rows}×{cols}, strides {rs}, {cs}) does not fit in a slice of {len}"
    );
}

/// Whether distinct elements of a `rows×cols` view with these strides occupy distinct slots
/// (sufficient condition: the larger stride steps over the whole extent of the smaller).
pub(super) fn is_injective(rows: usize, cols: usize, rs: usize, cs: usize) -> bool {
    match (rows, cols) {
        (0, _) | (_, 0) | (1, 1) => true,
        (_, 1) => rs > 0,
        (1, _) => cs > 0,
        _ => {
            let ((small_len, small), big) = if rs <= cs { ((rows, rs), cs) } else { ((cols, cs), rs) };
            small > 0 && (small_len - 1).checked_mul(small).is_some_and(|span| big > span)
        }
    }
}
