//! CPU GEMM fast path: `C = alpha·A·B + beta·C` for f32 ([`sgemm`]) and f64 ([`dgemm`]) on
//! arbitrarily strided operands (row-major, column-major, transposed and padded views need
//! no copy). Strides are `isize` element counts, as kiln's GEMM call sites pass them; they
//! must be non-negative (0 is allowed for A and B) and are `usize` internally.
//!
//! # Blocking scheme (BLIS / Goto)
//!
//! ```text
//! for jc in 0..n step NC                 one block of B columns
//!   for pc in 0..k step KC               one block of the shared dimension
//!     pack B[pc.., jc..] (KC×NC)         into NR-column micro-panels; stays in L2
//!     for ic in 0..m step MR
//!       pack A[ic.., pc..] (MR×KC)       into one micro-panel; stays in L1
//!       for jr in 0..NC step NR
//!         micro-kernel: C[ic.., jc+jr..] (MR×NR) = alpha·Ã·B̃ + beta·C
//! ```
//!
//! Packing lays out each micro-panel in the exact order the micro-kernel reads it: for the
//! p-th step of the shared dimension, the MR values `A[i, p]` are contiguous in Ã and the NR
//! values `B[p, j]` are contiguous in B̃, zero-padded at the matrix edges. The A micro-panel
//! (MR·KC elements, 12 KiB for f32) is reused by every B micro-panel of the block, so it is
//! read from L1; the B block (KC·NC elements, 1 MiB for f32) is reused by every A
//! micro-panel, so it is read from L2, two vectors per step. After the first KC block, the
//! kernel accumulates into C (`beta = 1`). Blocks along k and n are balanced (e.g. k = 400
//! is run as 2×200, not 256 + 144) so the last block is not a sliver. Packing a row-major A
//! or a column-major B is a transpose; the SIMD paths do it in LANES×LANES register blocks
//! (AVX-512: 16×16 f32, 8×8 f64; AVX2: 8×8, 4×4), since element-by-element packing of a
//! row-major A alone cost ~12% of the run time. Packing buffers are 64-byte aligned and
//! cached per thread.
//!
//! # SIMD micro-kernels (AVX-512F, AVX2 + FMA)
//!
//! One generic micro-kernel (`simd::tile`) over a small vector interface (`simd::Vector`),
//! compiled once per instruction set:
//!
//! | kernel | tile (f32) | tile (f64) | accumulators | registers live |
//! |---|---|---|---|---|
//! | AVX-512F | 12×32 | 12×16 | 24 zmm | 27 of 32 |
//! | AVX2 + FMA | 6×16 | 6×8 | 12 ymm | 15 of 16 |
//!
//! Taking AVX-512 as the example:
//! The register tile is 12 rows × 2 zmm vectors: 24 accumulators. Each step of the shared
//! dimension loads 2 vectors of B̃, broadcasts the 12 values of Ã and issues 24 independent
//! FMAs, enough to keep both FMA ports busy through the 4-cycle FMA latency, with 14 loads
//! per 24 FMAs (within the load ports' budget) and 24 + 2 + 1 of the 32 zmm registers
//! live. B̃ is prefetched 8 steps ahead and the C tile at the start of the kernel. Vectors
//! run along the rows of C, so a row-major C tile is updated with two masked loads/stores
//! per row (masks also handle the n edge); a column-major C is handled by transposing the
//! whole problem (Cᵀ = Bᵀ·Aᵀ), any other C layout via a scalar write-back.
//! The AVX2 tile has the same shape of loop at half the width and half the rows: 12
//! independent FMAs per step (two FMA ports × 4-cycle latency needs 8) and 8 loads. The
//! kernel is chosen at run time (`is_x86_feature_detected!`): AVX-512F, else AVX2 + FMA (e.g.
//! AMD Zen 2/3, Intel before Skylake-X), else [`Portable`], the same driver with a small
//! autovectorised micro-kernel (SSE2 on a plain x86-64 build, which is what every x86 CPU
//! without AVX-512 ran before the AVX2 kernel existed).
//!
//! # Threads
//!
//! Products of at least [`PAR_FLOPS_PER_THREAD`] flops per thread run on rayon's global pool:
//! C is cut into one disjoint slab per thread (columns, or rows when that balances better)
//! and each thread runs the whole blocked algorithm on its slab with its own thread-local
//! packing buffers, so no synchronisation is needed. Smaller products stay on the calling
//! thread.

#![deny(unsafe_op_in_unsafe_fn)]

use rayon::prelude::*;
use std::cell::RefCell;
use std::marker::PhantomData;
use std::ops::{Add, Mul};

/// Minimum work (in flops, `2·m·n·k`) per thread before a product is split over threads:
/// 2²⁰ flops, ~7 µs of one core, against ~4-9 µs measured for a rayon fork-join from outside
/// the pool (10-25 µs when the pool was asleep). So 128³ or 64×64×256 use two threads, 96³
/// or 64³ (3.5 µs of work) stay on the caller.
const PAR_FLOPS_PER_THREAD: usize = 1 << 20;

/// `C = alpha·A·B + beta·C` for f32.
///
/// A is `m×k` with element `(i, p)` at `a[i*rsa + p*csa]`, B is `k×n` with `(p, j)` at
/// `b[p*rsb + j*csb]` and C is `m×n` with `(i, j)` at `c[i*rsc + j*csc]`; strides count
/// elements and must be non-negative. A and B may use zero strides (broadcast); C must not
/// map two elements to the same slot. With `beta == 0` C is only written, never read (NaN in C is overwritten); with
/// `k == 0` or `alpha == 0`, A and B are not read and C becomes `beta·C`.
///
/// # Panics
///
/// If a stride is negative, an operand does not fit in its slice or C's strides overlap.
#[allow(clippy::too_many_arguments)] // the BLAS signature
pub fn sgemm(
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: &[f32],
    rsa: isize,
    csa: isize,
    b: &[f32],
    rsb: isize,
    csb: isize,
    beta: f32,
    c: &mut [f32],
    rsc: isize,
    csc: isize,
) {
    let problem = Problem::new([m, n, k], alpha, (a, rsa, csa), (b, rsb, csb), beta, (c, rsc, csc));
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            return run::<avx512::Zmm<f32>>(problem);
        }
        if avx2_fma() {
            return run::<avx2::Ymm<f32>>(problem);
        }
    }
    run::<Portable<f32, 4, 8>>(problem);
}

/// `C = alpha·A·B + beta·C` for f64; see [`sgemm`] for the layout and special cases.
///
/// # Panics
///
/// If a stride is negative, an operand does not fit in its slice or C's strides overlap.
#[allow(clippy::too_many_arguments)] // the BLAS signature
pub fn dgemm(
    m: usize,
    n: usize,
    k: usize,
    alpha: f64,
    a: &[f64],
    rsa: isize,
    csa: isize,
    b: &[f64],
    rsb: isize,
    csb: isize,
    beta: f64,
    c: &mut [f64],
    rsc: isize,
    csc: isize,
) {
    let problem = Problem::new([m, n, k], alpha, (a, rsa, csa), (b, rsb, csb), beta, (c, rsc, csc));
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            return run::<avx512::Zmm<f64>>(problem);
        }
        if avx2_fma() {
            return run::<avx2::Ymm<f64>>(problem);
        }
    }
    run::<Portable<f64, 4, 4>>(problem);
}

/// Whether the CPU has AVX2 and FMA (the [`avx2`] kernel's instruction sets).
#[cfg(target_arch = "x86_64")]
pub(crate) fn avx2_fma() -> bool {
    std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
}

/// The element types GEMM is implemented for: f32 and f64. Every bit pattern, including
/// all zeros, is a valid value, which the packing buffers rely on.
trait Element: Copy + Send + Sync + PartialEq + Add<Output = Self> + Mul<Output = Self> {
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

/// A read-only strided matrix view: element `(i, j)` at `ptr + i*rs + j*cs`.
#[derive(Clone, Copy)]
struct MatRef<T> {
    ptr: *const T,
    rs: usize,
    cs: usize,
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
    unsafe fn at(self, i: usize, j: usize) -> Self {
        Self {
            // SAFETY: the element lies inside the operand's slice (caller's contract).
            ptr: unsafe { self.ptr.add(i * self.rs + j * self.cs) },
            ..self
        }
    }

    fn t(self) -> Self {
        Self {
            ptr: self.ptr,
            rs: self.cs,
            cs: self.rs,
        }
    }
}

/// A writable strided matrix view: element `(i, j)` at `ptr + i*rs + j*cs`.
#[derive(Clone, Copy)]
struct MatMut<T> {
    ptr: *mut T,
    rs: usize,
    cs: usize,
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
    unsafe fn at(self, i: usize, j: usize) -> Self {
        Self {
            // SAFETY: the element lies inside C's slice (caller's contract).
            ptr: unsafe { self.ptr.add(i * self.rs + j * self.cs) },
            ..self
        }
    }

    fn t(self) -> Self {
        Self {
            ptr: self.ptr,
            rs: self.cs,
            cs: self.rs,
        }
    }
}

/// The scaling applied when a micro-tile is written back: `C = alpha·acc + beta·C`, where
/// `beta == 0` means C is not read.
#[derive(Clone, Copy)]
struct Epilogue<T> {
    alpha: T,
    beta: T,
}

/// A validated GEMM call: every view fits in its slice and C does not overlap itself.
#[derive(Clone, Copy)]
struct Problem<T> {
    m: usize,
    n: usize,
    k: usize,
    a: MatRef<T>,
    b: MatRef<T>,
    c: MatMut<T>,
    ep: Epilogue<T>,
}

impl<T: Element> Problem<T> {
    /// Checks the views against their slices; panics on a negative stride or any
    /// out-of-bounds element.
    fn new(
        [m, n, k]: [usize; 3],
        alpha: T,
        (a, rsa, csa): (&[T], isize, isize),
        (b, rsb, csb): (&[T], isize, isize),
        beta: T,
        (c, rsc, csc): (&mut [T], isize, isize),
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
                ptr: c.as_mut_ptr(),
                rs: rsc,
                cs: csc,
            },
            ep: Epilogue { alpha, beta },
        }
    }

    /// The same product written as `Cᵀ = Bᵀ·Aᵀ`.
    fn transposed(self) -> Self {
        Self {
            m: self.n,
            n: self.m,
            a: self.b.t(),
            b: self.a.t(),
            c: self.c.t(),
            ..self
        }
    }

    /// The sub-product computing rows `rows` of C.
    ///
    /// # Safety
    ///
    /// `rows` must be a non-empty range inside `0..m`.
    unsafe fn rows(self, rows: std::ops::Range<usize>) -> Self {
        Self {
            m: rows.len(),
            // SAFETY: row `rows.start` exists in A and C (caller's contract; k, n > 0 in `run`).
            a: unsafe { self.a.at(rows.start, 0) },
            // SAFETY: as above.
            c: unsafe { self.c.at(rows.start, 0) },
            ..self
        }
    }

    /// The sub-product computing columns `cols` of C.
    ///
    /// # Safety
    ///
    /// `cols` must be a non-empty range inside `0..n`.
    unsafe fn cols(self, cols: std::ops::Range<usize>) -> Self {
        Self {
            n: cols.len(),
            // SAFETY: column `cols.start` exists in B and C (caller's contract; k, m > 0 in `run`).
            b: unsafe { self.b.at(0, cols.start) },
            // SAFETY: as above.
            c: unsafe { self.c.at(0, cols.start) },
            ..self
        }
    }

    /// `C = beta·C`, the whole result when `k == 0` or `alpha == 0` (A and B are not read).
    fn scale_c(self) {
        for i in 0..self.m {
            for j in 0..self.n {
                // SAFETY: (i, j) is an element of C, which `new` checked fits in its slice;
                // no other reference to C is live.
                let cij = unsafe { &mut *self.c.ptr.add(i * self.c.rs + j * self.c.cs) };
                *cij = if self.ep.beta == T::ZERO {
                    T::ZERO
                } else {
                    self.ep.beta * *cij
                };
            }
        }
    }
}

/// Panics unless every element of the `rows×cols` view lies inside a slice of `len`.
fn assert_fits(name: &str, rows: usize, cols: usize, rs: usize, cs: usize, len: usize) {
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
fn is_injective(rows: usize, cols: usize, rs: usize, cs: usize) -> bool {
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

/// A micro-kernel and the block sizes the driver uses with it.
trait Kernel: Sized {
    type T: Element;
    /// Rows of the register tile (A micro-panel height).
    const MR: usize;
    /// Columns of the register tile (B micro-panel width).
    const NR: usize;
    /// Block of the shared dimension: the A micro-panel (MR·KC) should stay in L1.
    const KC: usize;
    /// Block of C's columns, a multiple of NR: the B block (KC·NC) should stay in L2.
    const NC: usize;

    /// Writes `alpha·Ã·B̃ + beta·C` to the top-left `mr×nr` corner of the MR×NR tile at `c`.
    /// `ep` comes by reference: by value, its two floats arrive in vector registers that stay
    /// live across the k loop, and the AVX2 kernel (15 of 16 ymm registers in that loop) then
    /// kept one accumulator on the stack, a store and a reload per FMA.
    ///
    /// # Safety
    ///
    /// `a` and `b` point to `kc·MR` and `kc·NR` readable elements, `mr <= MR`, `nr <= NR`,
    /// the `mr×nr` view `c` is valid for reads and writes and not accessed concurrently, and
    /// the CPU supports the kernel's target features.
    unsafe fn tile(
        kc: usize,
        a: *const Self::T,
        b: *const Self::T,
        c: MatMut<Self::T>,
        mr: usize,
        nr: usize,
        ep: &Epilogue<Self::T>,
    );

    /// Packs an A micro-panel as [`pack_a`] does, which is the default.
    ///
    /// # Safety
    ///
    /// As for [`pack_a`], and the CPU supports the kernel's target features.
    unsafe fn pack_a(mr: usize, kc: usize, a: MatRef<Self::T>, dst: &mut [Self::T]) {
        // SAFETY: forwarded contract.
        unsafe { pack_a::<Self>(mr, kc, a, dst) }
    }

    /// Packs a B block as [`pack_b`] does, which is the default.
    ///
    /// # Safety
    ///
    /// As for [`pack_b`], and the CPU supports the kernel's target features.
    unsafe fn pack_b(kc: usize, nc: usize, b: MatRef<Self::T>, dst: &mut [Self::T]) {
        // SAFETY: forwarded contract.
        unsafe { pack_b::<Self>(kc, nc, b, dst) }
    }
}

/// Runs a validated product with kernel `K`, on several threads when it is large enough.
fn run<K: Kernel>(problem: Problem<K::T>) {
    let Problem { m, n, k, ep, .. } = problem;
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 || ep.alpha == K::T::ZERO {
        return problem.scale_c();
    }
    // The kernels store vectors along C's rows: make them C's unit-stride direction.
    let problem = if problem.c.cs != 1 && problem.c.rs == 1 {
        problem.transposed()
    } else {
        problem
    };
    let (m, n) = (problem.m, problem.n);

    let flops = m.saturating_mul(n).saturating_mul(k).saturating_mul(2);
    let threads = rayon::current_num_threads().min(flops / PAR_FLOPS_PER_THREAD).max(1);
    if threads == 1 {
        // SAFETY: the problem was validated, m, n, k > 0, this thread is the only user of C,
        // and `sgemm`/`dgemm` only pick a kernel the CPU supports.
        return unsafe { gemm_serial::<K>(problem) };
    }
    // Cut C into `threads` slabs of whole tiles, along the dimension whose slowest slab costs
    // least: its tiles (MR·k multiply-add steps of NR lanes each) plus the elements it packs (A
    // once per column block of the slab, B once), a packed element counted as one step. With
    // columns, every thread packs all of A; with rows, all of B (by this count, packing is a
    // fifth of a column split's work on the GPT's 768×128×512 products, a seventh of a row
    // split's).
    let slab = |len: usize, tile: usize| round_up(len.div_ceil(threads), tile).min(len);
    let (cols, rows) = (slab(n, K::NR), slab(m, K::MR));
    let cost = |m_t: usize, n_t: usize| {
        let tiles = m_t.div_ceil(K::MR) * n_t.div_ceil(K::NR);
        tiles * K::MR * k + n_t.div_ceil(K::NC) * m_t * k + k * n_t
    };
    if cost(m, cols) <= cost(rows, n) {
        (0..n).into_par_iter().step_by(cols).for_each(|j| {
            // SAFETY: as for the serial call; each thread gets disjoint columns of C.
            unsafe { gemm_serial::<K>(problem.cols(j..n.min(j + cols))) }
        });
    } else {
        (0..m).into_par_iter().step_by(rows).for_each(|i| {
            // SAFETY: as for the serial call; each thread gets disjoint rows of C.
            unsafe { gemm_serial::<K>(problem.rows(i..m.min(i + rows))) }
        });
    }
}

/// The blocked algorithm of the module header on the calling thread.
///
/// # Safety
///
/// `problem` is validated with m, n, k > 0, no other thread accesses its part of C, and the
/// CPU supports `K`.
unsafe fn gemm_serial<K: Kernel>(problem: Problem<K::T>) {
    let Problem { m, n, k, a, b, c, ep } = problem;
    let k_blocks = Blocks::new(k, K::KC, 1);
    let n_blocks = Blocks::new(n, K::NC, K::NR);
    let b_len = k_blocks.size * n_blocks.size;
    with_pack_buffer(b_len + K::MR * k_blocks.size, |buf: &mut [K::T]| {
        let (b_pack, a_pack) = buf.split_at_mut(b_len);
        for (jc, nc) in n_blocks {
            for (pc, kc) in k_blocks {
                let beta = if pc == 0 { ep.beta } else { K::T::ONE };
                // SAFETY: (pc, jc) is an element of B, the block is kc×nc and the CPU supports K.
                unsafe { K::pack_b(kc, nc, b.at(pc, jc), b_pack) };
                for ic in (0..m).step_by(K::MR) {
                    let mr = K::MR.min(m - ic);
                    // SAFETY: (ic, pc) is an element of A, the block is mr×kc and the CPU supports K.
                    unsafe { K::pack_a(mr, kc, a.at(ic, pc), a_pack) };
                    for (jr, b_panel) in (0..nc).step_by(K::NR).zip(b_pack.chunks_exact(kc * K::NR)) {
                        // SAFETY: the panels hold kc·MR and kc·NR elements, the tile at
                        // (ic, jc + jr) of C is inside the problem's part of C (caller's
                        // contract) and the CPU supports K (caller's contract).
                        unsafe {
                            K::tile(
                                kc,
                                a_pack.as_ptr(),
                                b_panel.as_ptr(),
                                c.at(ic, jc + jr),
                                mr,
                                K::NR.min(nc - jr),
                                &Epilogue { beta, ..ep },
                            )
                        };
                    }
                }
            }
        }
    });
}

/// `0..len` cut into `ceil(len / max)` nearly equal blocks whose size is a multiple of
/// `align` (the last block may be shorter); yields `(start, size)`.
#[derive(Clone, Copy)]
struct Blocks {
    len: usize,
    size: usize,
    start: usize,
}

impl Blocks {
    /// `max` must be a multiple of `align`; `len` must be positive.
    fn new(len: usize, max: usize, align: usize) -> Self {
        let size = round_up(len.div_ceil(len.div_ceil(max)), align);
        Self { len, size, start: 0 }
    }
}

impl Iterator for Blocks {
    type Item = (usize, usize);

    fn next(&mut self) -> Option<(usize, usize)> {
        let start = self.start;
        (start < self.len).then(|| {
            self.start += self.size;
            (start, self.size.min(self.len - start))
        })
    }
}

fn round_up(x: usize, multiple: usize) -> usize {
    x.div_ceil(multiple) * multiple
}

/// Packs the `mr×kc` block `a` into one A micro-panel: `dst[p·MR + i] = a[i, p]`, rows
/// `mr..MR` zero.
///
/// # Safety
///
/// `a` is a readable `mr×kc` view with `mr <= MR`; `dst` holds at least `kc·MR` elements.
unsafe fn pack_a<K: Kernel>(mr: usize, kc: usize, a: MatRef<K::T>, dst: &mut [K::T]) {
    let dst = &mut dst[..kc * K::MR];
    if a.cs == 1 {
        // Row-major A: read each row contiguously, scatter it into the panel.
        for i in 0..K::MR {
            if i < mr {
                // SAFETY: row i of the view holds kc contiguous elements (cs == 1).
                let row = unsafe { std::slice::from_raw_parts(a.ptr.add(i * a.rs), kc) };
                for (d, &x) in dst[i..].iter_mut().step_by(K::MR).zip(row) {
                    *d = x;
                }
            } else {
                dst[i..].iter_mut().step_by(K::MR).for_each(|d| *d = K::T::ZERO);
            }
        }
    } else if a.rs == 1 && mr == K::MR {
        // Column-major A (a transposed operand: dW = dYᵀ·X in a Linear's backward): each
        // step's MR values are contiguous, one fixed-length copy.
        for (p, col) in dst.chunks_exact_mut(K::MR).enumerate() {
            // SAFETY: column p of the view holds mr = MR contiguous elements (rs == 1).
            col.copy_from_slice(unsafe { std::slice::from_raw_parts(a.ptr.add(p * a.cs), K::MR) });
        }
    } else {
        for (p, col) in dst.chunks_exact_mut(K::MR).enumerate() {
            for (i, d) in col.iter_mut().enumerate() {
                *d = if i < mr {
                    // SAFETY: (i, p) is an element of the view for i < mr.
                    unsafe { *a.at(i, p).ptr }
                } else {
                    K::T::ZERO
                };
            }
        }
    }
}

/// Packs the `kc×nc` block `b` into NR-column micro-panels of kc rows each:
/// `dst[(jp·kc + p)·NR + j] = b[p, jp·NR + j]`, columns past `nc` zero.
///
/// # Safety
///
/// `b` is a readable `kc×nc` view; `dst` holds at least `kc·round_up(nc, NR)` elements.
unsafe fn pack_b<K: Kernel>(kc: usize, nc: usize, b: MatRef<K::T>, dst: &mut [K::T]) {
    for (j0, panel) in (0..nc).step_by(K::NR).zip(dst.chunks_exact_mut(kc * K::NR)) {
        let nr = K::NR.min(nc - j0);
        for (p, row) in panel.chunks_exact_mut(K::NR).enumerate() {
            let (data, pad) = row.split_at_mut(nr);
            // SAFETY: (p, j0) is an element of the view and so are the nr - 1 that follow.
            let src = unsafe { b.at(p, j0) };
            if src.cs == 1 {
                // SAFETY: the nr elements of row p from column j0 are contiguous (cs == 1).
                data.copy_from_slice(unsafe { std::slice::from_raw_parts(src.ptr, nr) });
            } else {
                for (j, d) in data.iter_mut().enumerate() {
                    // SAFETY: (0, j) of `src` is element (p, j0 + j) of the view, j < nr.
                    *d = unsafe { *src.at(0, j).ptr };
                }
            }
            pad.fill(K::T::ZERO);
        }
    }
}

/// A 64-byte aligned chunk of packing buffer.
#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct CacheLine([u8; 64]);

/// Runs `f` on a 64-byte aligned scratch slice of `len` elements. The slice is cached per
/// thread (and grown on demand) so repeated calls neither allocate nor fault in pages.
fn with_pack_buffer<T: Element, R>(len: usize, f: impl FnOnce(&mut [T]) -> R) -> R {
    thread_local! {
        static BUFFER: RefCell<Vec<CacheLine>> = const { RefCell::new(Vec::new()) };
    }
    let lines = (len * size_of::<T>()).div_ceil(size_of::<CacheLine>());
    BUFFER.with_borrow_mut(|buffer| {
        if buffer.len() < lines {
            *buffer = vec![CacheLine([0; 64]); lines];
        }
        // SAFETY: the buffer holds `lines` initialised, 64-byte aligned lines, at least
        // `len·size_of::<T>()` bytes; T is f32 or f64 (align <= 64), valid for any bits.
        f(unsafe { std::slice::from_raw_parts_mut(buffer.as_mut_ptr().cast::<T>(), len) })
    })
}

/// The portable micro-kernel: an `MR×NR` accumulator array the compiler vectorises with
/// whatever SIMD the target has (4×8 f32 / 4×4 f64 fit SSE2's and NEON's registers).
struct Portable<T, const MR: usize, const NR: usize>(PhantomData<T>);

impl<T: Element, const MR: usize, const NR: usize> Kernel for Portable<T, MR, NR> {
    type T = T;
    const MR: usize = MR;
    const NR: usize = NR;
    const KC: usize = 256;
    const NC: usize = 512;

    unsafe fn tile(kc: usize, a: *const T, b: *const T, c: MatMut<T>, mr: usize, nr: usize, ep: &Epilogue<T>) {
        // SAFETY: the packed panels hold kc·MR and kc·NR elements (caller's contract).
        let (a, b) = unsafe {
            (
                std::slice::from_raw_parts(a, kc * MR),
                std::slice::from_raw_parts(b, kc * NR),
            )
        };
        let mut acc = [[T::ZERO; NR]; MR];
        for (a_p, b_p) in a.chunks_exact(MR).zip(b.chunks_exact(NR)) {
            for (acc_i, &a_ip) in acc.iter_mut().zip(a_p) {
                for (acc_ij, &b_pj) in acc_i.iter_mut().zip(b_p) {
                    *acc_ij = *acc_ij + a_ip * b_pj;
                }
            }
        }
        for (i, acc_i) in acc.iter().enumerate().take(mr) {
            for (j, &acc_ij) in acc_i.iter().enumerate().take(nr) {
                // SAFETY: (i, j) is inside the mr×nr tile of C (caller's contract).
                let cij = unsafe { &mut *c.at(i, j).ptr };
                *cij = if ep.beta == T::ZERO {
                    ep.alpha * acc_ij
                } else {
                    ep.alpha * acc_ij + ep.beta * *cij
                };
            }
        }
    }
}

/// The x86-64 micro-kernel and packing transposes, written once over a [`simd::Vector`] (the
/// handful of vector operations they need) and compiled for each instruction set by thin
/// `#[target_feature]` wrappers in [`avx512`] and [`avx2`]: the generic bodies are
/// `#[inline(always)]`, so each wrapper gets its own copy built with its ISA's registers.
#[cfg(target_arch = "x86_64")]
mod simd {
    use super::{Element, Epilogue, Kernel, MatMut, MatRef};
    use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};

    /// Steps of the shared dimension between prefetching a row of B̃ and reading it.
    const PREFETCH_STEPS: usize = 8;

    /// One instruction set's vectors of one element type, and the block sizes the driver uses
    /// with them.
    ///
    /// # Safety
    ///
    /// Every method requires the instruction set's target features; pointer arguments must be
    /// valid for `LANES` elements, or for the first `lanes` elements for the masked ones.
    pub(super) trait Vector {
        type E: Element;
        type V: Copy;
        const LANES: usize;
        /// See [`Kernel::KC`].
        const KC: usize;
        /// See [`Kernel::NC`].
        const NC: usize;
        unsafe fn zero() -> Self::V;
        unsafe fn splat(x: Self::E) -> Self::V;
        unsafe fn load(p: *const Self::E) -> Self::V;
        /// `a·b + c`, fused.
        unsafe fn fmadd(a: Self::V, b: Self::V, c: Self::V) -> Self::V;
        unsafe fn vmul(a: Self::V, b: Self::V) -> Self::V;
        /// Loads the first `lanes` (1..=LANES) elements, zeroing the rest; touches no others.
        unsafe fn load_first(p: *const Self::E, lanes: usize) -> Self::V;
        /// Stores the first `lanes` (1..=LANES) lanes; touches no other elements.
        unsafe fn store_first(p: *mut Self::E, v: Self::V, lanes: usize);
        /// Stores all lanes.
        unsafe fn store(p: *mut Self::E, v: Self::V);
        /// Transposes one block: `dst[q·dst_stride + r] = src[r·src_stride + q]` for
        /// `q < LANES` and `r < rows`, and zero for `r` in `rows..width`; `rows <= width <=
        /// LANES`. Source rows hold LANES elements, destination rows `width`.
        unsafe fn transpose_block(
            src: *const Self::E,
            src_stride: usize,
            rows: usize,
            dst: *mut Self::E,
            dst_stride: usize,
            width: usize,
        );
    }

    /// [`Kernel::pack_a`] for a kernel on `V`: a row-major A panel is a transpose, done in
    /// LANES×LANES register blocks.
    ///
    /// # Safety
    ///
    /// As for [`super::pack_a`], and the CPU supports `V`'s instruction set.
    #[inline(always)]
    pub(super) unsafe fn pack_a<K: Kernel, V: Vector<E = K::T>>(
        mr: usize,
        kc: usize,
        a: MatRef<K::T>,
        dst: &mut [K::T],
    ) {
        let dst = &mut dst[..kc * K::MR];
        if a.cs == 1 {
            // SAFETY: rows 0..mr of `a` hold kc contiguous elements (cs == 1), dst holds kc
            // rows of MR, and the caller checked the instruction set.
            unsafe { transpose_rows::<V>(a.ptr, a.rs, mr, kc, dst.as_mut_ptr(), K::MR) }
        } else {
            // SAFETY: forwarded contract.
            unsafe { super::pack_a::<K>(mr, kc, a, dst) }
        }
    }

    /// [`Kernel::pack_b`] for a kernel on `V`: a column-major B panel is a transpose, done in
    /// LANES×LANES register blocks.
    ///
    /// # Safety
    ///
    /// As for [`super::pack_b`], and the CPU supports `V`'s instruction set.
    #[inline(always)]
    pub(super) unsafe fn pack_b<K: Kernel, V: Vector<E = K::T>>(
        kc: usize,
        nc: usize,
        b: MatRef<K::T>,
        dst: &mut [K::T],
    ) {
        if b.rs != 1 || b.cs == 1 {
            // SAFETY: forwarded contract.
            return unsafe { super::pack_b::<K>(kc, nc, b, dst) };
        }
        for (j0, panel) in (0..nc).step_by(K::NR).zip(dst.chunks_exact_mut(kc * K::NR)) {
            let nr = K::NR.min(nc - j0);
            // SAFETY: columns j0..j0 + nr hold kc contiguous elements (rs == 1), the panel
            // holds kc rows of NR, and the caller checked the instruction set.
            unsafe {
                let src = b.at(0, j0).ptr;
                transpose_rows::<V>(src, b.cs, nr, kc, panel.as_mut_ptr(), K::NR);
            }
        }
    }

    /// Writes the transpose of `rows` rows of `len` contiguous elements, starting
    /// `src_stride` apart at `src`, to the contiguous `len×width` matrix at `dst` (`width >=
    /// rows`): `dst[p·width + r] = src[r·src_stride + p]`, and zero for `r` in `rows..width`.
    /// Works in LANES×LANES blocks; the last `len % LANES` rows of `dst` go one by one.
    ///
    /// # Safety
    ///
    /// The CPU supports `V`'s instruction set; the source rows are readable and `dst` is
    /// writable for `len·width` elements.
    #[inline(always)]
    unsafe fn transpose_rows<V: Vector>(
        src: *const V::E,
        src_stride: usize,
        rows: usize,
        len: usize,
        dst: *mut V::E,
        width: usize,
    ) {
        let full_len = len - len % V::LANES;
        for r0 in (0..width).step_by(V::LANES) {
            let block_rows = rows.saturating_sub(r0).min(V::LANES);
            let block_width = (width - r0).min(V::LANES);
            for p in (0..full_len).step_by(V::LANES) {
                // SAFETY: source rows r0..r0 + block_rows exist and hold elements p..p + LANES
                // (nothing is read when block_rows is 0), destination rows p..p + LANES hold
                // columns r0..r0 + block_width.
                unsafe {
                    V::transpose_block(
                        src.wrapping_add(r0 * src_stride + p),
                        src_stride,
                        block_rows,
                        dst.add(p * width + r0),
                        width,
                        block_width,
                    );
                }
            }
        }
        for p in full_len..len {
            for r in 0..width {
                // SAFETY: as above, element by element.
                unsafe {
                    *dst.add(p * width + r) = if r < rows {
                        *src.add(r * src_stride + p)
                    } else {
                        <V::E as Element>::ZERO
                    };
                }
            }
        }
    }

    /// The micro-kernel (contract of [`Kernel::tile`], with `MR` rows and NR = 2·LANES): MR
    /// rows × 2 vectors of accumulators. Each step of the shared dimension loads 2 vectors of
    /// B̃, broadcasts the MR values of Ã and issues 2·MR independent FMAs.
    ///
    /// # Safety
    ///
    /// As for [`Kernel::tile`], and the CPU supports `V`'s instruction set.
    #[inline(always)]
    pub(super) unsafe fn tile<V: Vector, const MR: usize>(
        kc: usize,
        a: *const V::E,
        b: *const V::E,
        c: MatMut<V::E>,
        mr: usize,
        nr: usize,
        ep: &Epilogue<V::E>,
    ) {
        // SAFETY: the instruction set is supported (caller's contract); step p reads
        // Ã[p·MR..][..MR] and B̃[p·2·LANES..][..2·LANES], inside the kc·MR and kc·NR elements of
        // the panels. Prefetches never fault, and their addresses are computed with wrapping
        // arithmetic.
        let acc = unsafe {
            // Start fetching the C tile (two lines per row) so it is in L1 for the update.
            if c.cs == 1 {
                for i in 0..mr {
                    let row = c.ptr.wrapping_add(i * c.rs);
                    _mm_prefetch::<_MM_HINT_T0>(row.cast());
                    _mm_prefetch::<_MM_HINT_T0>(row.wrapping_add(nr - 1).cast());
                }
            }
            let mut acc = [[V::zero(); 2]; MR];
            for p in 0..kc {
                let a_p = a.add(p * MR);
                let b_p = b.add(p * 2 * V::LANES);
                // B̃ streams from L2; Ã (reused by every tile of the block) stays in L1.
                let ahead = b_p.wrapping_add(PREFETCH_STEPS * 2 * V::LANES);
                _mm_prefetch::<_MM_HINT_T0>(ahead.cast());
                if 2 * V::LANES * size_of::<V::E>() > 64 {
                    // a step of B̃ spans two cache lines (AVX-512); AVX2's fills one
                    _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(V::LANES).cast());
                }
                let (b0, b1) = (V::load(b_p), V::load(b_p.add(V::LANES)));
                for (i, acc_i) in acc.iter_mut().enumerate() {
                    let a_pi = V::splat(*a_p.add(i));
                    acc_i[0] = V::fmadd(a_pi, b0, acc_i[0]);
                    acc_i[1] = V::fmadd(a_pi, b1, acc_i[1]);
                }
            }
            acc
        };

        if c.cs == 1 {
            // SAFETY: the instruction set is supported; row i < mr of the tile holds nr
            // contiguous elements (cs == 1) and the masks touch only the first nr of them.
            unsafe {
                let alpha = V::splat(ep.alpha);
                let beta = V::splat(ep.beta);
                // Valid lanes of each of the two vectors of a row (nr <= 2·LANES).
                let lanes = [nr.min(V::LANES), nr.saturating_sub(V::LANES)];
                for (i, acc_i) in acc.iter().enumerate() {
                    if i == mr {
                        break;
                    }
                    for (v, (&acc_iv, &lanes)) in acc_i.iter().zip(&lanes).enumerate() {
                        if lanes == 0 {
                            break;
                        }
                        let dst = c.ptr.add(i * c.rs + v * V::LANES);
                        let mut out = V::vmul(alpha, acc_iv);
                        // Whole vectors go unmasked: AVX2's masked loads and stores are slow
                        // on some CPUs (a masked store takes ~10 cycles on AMD Zen 2/3).
                        let full = lanes == V::LANES;
                        if ep.beta != <V::E as Element>::ZERO {
                            let old = if full { V::load(dst) } else { V::load_first(dst, lanes) };
                            out = V::fmadd(beta, old, out);
                        }
                        if full {
                            V::store(dst, out);
                        } else {
                            V::store_first(dst, out, lanes);
                        }
                    }
                }
            }
        } else {
            // Any other layout: spill the tile and write it back element by element.
            let mut spill = [[<V::E as Element>::ZERO; 32]; MR];
            for (acc_i, spill_i) in acc.iter().zip(&mut spill) {
                // SAFETY: the instruction set is supported; a spill row holds 32 >= 2·LANES
                // elements.
                unsafe {
                    V::store(spill_i.as_mut_ptr(), acc_i[0]);
                    V::store(spill_i.as_mut_ptr().add(V::LANES), acc_i[1]);
                }
            }
            for (i, spill_i) in spill.iter().enumerate().take(mr) {
                for (j, &acc_ij) in spill_i.iter().enumerate().take(nr) {
                    // SAFETY: (i, j) is inside the mr×nr tile of C (caller's contract).
                    let cij = unsafe { &mut *c.at(i, j).ptr };
                    *cij = if ep.beta == <V::E as Element>::ZERO {
                        ep.alpha * acc_ij
                    } else {
                        ep.alpha * acc_ij + ep.beta * *cij
                    };
                }
            }
        }
    }
}

/// Declares a kernel on the [`simd::Vector`]s `$vector<E>` with `$mr` rows: its [`Kernel`] impl
/// and the three wrappers that compile the generic bodies with `$feature` enabled.
#[cfg(target_arch = "x86_64")]
macro_rules! simd_kernel {
    ($vector:ident, $mr:expr, $feature:literal) => {
        /// Rows of the register tile; each step broadcasts one Ã value per row.
        const MR: usize = $mr;

        impl<E: Element> Kernel for $vector<E>
        where
            $vector<E>: Vector<E = E>,
        {
            type T = E;
            const MR: usize = MR;
            const NR: usize = 2 * <Self as Vector>::LANES;
            const KC: usize = <Self as Vector>::KC;
            const NC: usize = <Self as Vector>::NC;

            unsafe fn tile(kc: usize, a: *const E, b: *const E, c: MatMut<E>, mr: usize, nr: usize, ep: &Epilogue<E>) {
                // SAFETY: forwarded contract, which includes the target features.
                unsafe { tile::<E>(kc, a, b, c, mr, nr, ep) }
            }

            unsafe fn pack_a(mr: usize, kc: usize, a: MatRef<E>, dst: &mut [E]) {
                // SAFETY: forwarded contract, which includes the target features.
                unsafe { pack_a::<E>(mr, kc, a, dst) }
            }

            unsafe fn pack_b(kc: usize, nc: usize, b: MatRef<E>, dst: &mut [E]) {
                // SAFETY: forwarded contract, which includes the target features.
                unsafe { pack_b::<E>(kc, nc, b, dst) }
            }
        }

        #[target_feature(enable = $feature)]
        unsafe fn tile<E: Element>(
            kc: usize,
            a: *const E,
            b: *const E,
            c: MatMut<E>,
            mr: usize,
            nr: usize,
            ep: &Epilogue<E>,
        ) where
            $vector<E>: Vector<E = E>,
        {
            // SAFETY: forwarded contract; the features are enabled here.
            unsafe { simd::tile::<$vector<E>, MR>(kc, a, b, c, mr, nr, ep) }
        }

        #[target_feature(enable = $feature)]
        unsafe fn pack_a<E: Element>(mr: usize, kc: usize, a: MatRef<E>, dst: &mut [E])
        where
            $vector<E>: Vector<E = E>,
        {
            // SAFETY: forwarded contract; the features are enabled here.
            unsafe { simd::pack_a::<$vector<E>, $vector<E>>(mr, kc, a, dst) }
        }

        #[target_feature(enable = $feature)]
        unsafe fn pack_b<E: Element>(kc: usize, nc: usize, b: MatRef<E>, dst: &mut [E])
        where
            $vector<E>: Vector<E = E>,
        {
            // SAFETY: forwarded contract; the features are enabled here.
            unsafe { simd::pack_b::<$vector<E>, $vector<E>>(kc, nc, b, dst) }
        }
    };
}

/// AVX-512F: a 12 × (2·LANES) tile, 12×32 for f32 and 12×16 for f64 (24 of the 32 zmm
/// registers accumulate).
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::simd::{self, Vector};
    use super::{Element, Epilogue, Kernel, MatMut, MatRef};
    use std::arch::x86_64::*;
    use std::marker::PhantomData;

    /// The zmm vectors of `E`.
    pub(super) struct Zmm<E>(PhantomData<E>);

    simd_kernel!(Zmm, 12, "avx512f");

    impl Vector for Zmm<f32> {
        type E = f32;
        type V = __m512;
        const LANES: usize = 16;
        /// Ã micro-panel 12·256·4 B = 12 KiB of the 48 KiB L1.
        const KC: usize = 256;
        /// B̃ block 256·1024·4 B = 1 MiB of the 2 MiB L2; a wide block means A is re-packed
        /// less often (once per block).
        const NC: usize = 1024;

        #[inline]
        #[target_feature(enable = "avx512f")]
        unsafe fn zero() -> __m512 {
            _mm512_setzero_ps()
        }

        #[inline]
        #[target_feature(enable = "avx512f")]
        unsafe fn splat(x: f32) -> __m512 {
            _mm512_set1_ps(x)
        }

        #[inline]
        #[target_feature(enable = "avx512f")]
        unsafe fn load(p: *const f32) -> __m512 {
            // SAFETY: p is valid for 16 reads (trait contract).
            unsafe { _mm512_loadu_ps(p) }
        }

        #[inline]
        #[target_feature(enable = "avx512f")]
        unsafe fn fmadd(a: __m512, b: __m512, c: __m512) -> __m512 {
            _mm512_fmadd_ps(a, b, c)
        }

        #[inline]
        #[target_feature(enable = "avx512f")]
        unsafe fn vmul(a: __m512, b: __m512) -> __m512 {
            _mm512_mul_ps(a, b)
        }

        #[inline]
        #[target_feature(enable = "avx512f")]
        unsafe fn load_first(p: *const f32, lanes: usize) -> __m512 {
            // SAFETY: the masked-off lanes are not accessed; the others are valid.
            unsafe { _mm512_maskz_loadu_ps(first_lanes(lanes), p) }
        }

        #[inline]
        #[target_feature(enable = "avx512f")]
        unsafe fn store_first(p: *mut f32, v: __m512, lanes: usize) {
            // SAFETY: the masked-off lanes are not accessed; the others are valid.
            unsafe { _mm512_mask_storeu_ps(p, first_lanes(lanes), v) }
        }

        #[inline]
        #[target_feature(enable = "avx512f")]
        unsafe fn store(p: *mut f32, v: __m512) {
            // SAFETY: p is valid for 16 writes (trait contract).
            unsafe { _mm512_storeu_ps(p, v) }
        }

        /// Four rounds of 16 shuffles.
        #[inline]
        #[target_feature(enable = "avx512f")]
        unsafe fn transpose_block(
            src: *const f32,
            src_stride: usize,
            rows: usize,
            dst: *mut f32,
            dst_stride: usize,
            width: usize,
        ) {
            let mut r = [_mm512_setzero_ps(); 16];
            for (i, row) in r.iter_mut().enumerate().take(rows) {
                // SAFETY: source row i < rows holds 16 elements (trait contract).
                *row = unsafe { _mm512_loadu_ps(src.add(i * src_stride)) };
            }
            // t[2g + h] holds columns 4L + 2h and 4L + 2h + 1 of rows 2g, 2g + 1 in 128-bit
            // lane L.
            let mut t = r;
            for g in 0..8 {
                t[2 * g] = _mm512_unpacklo_ps(r[2 * g], r[2 * g + 1]);
                t[2 * g + 1] = _mm512_unpackhi_ps(r[2 * g], r[2 * g + 1]);
            }
            // u[4g + c] holds column 4L + c of rows 4g..4g + 4 in lane L.
            let mut u = t;
            for g in 0..4 {
                let [t0, t1, t2, t3] = [t[4 * g], t[4 * g + 1], t[4 * g + 2], t[4 * g + 3]];
                u[4 * g] = _mm512_shuffle_ps::<0x44>(t0, t2);
                u[4 * g + 1] = _mm512_shuffle_ps::<0xEE>(t0, t2);
                u[4 * g + 2] = _mm512_shuffle_ps::<0x44>(t1, t3);
                u[4 * g + 3] = _mm512_shuffle_ps::<0xEE>(t1, t3);
            }
            // Column 4L + c is lane L of u[c], u[4 + c], u[8 + c], u[12 + c]: transpose
            // that 4×4 grid of lanes.
            let mask = first_lanes(width);
            for c in 0..4 {
                let even_lo = _mm512_shuffle_f32x4::<0x88>(u[c], u[4 + c]);
                let odd_lo = _mm512_shuffle_f32x4::<0xDD>(u[c], u[4 + c]);
                let even_hi = _mm512_shuffle_f32x4::<0x88>(u[8 + c], u[12 + c]);
                let odd_hi = _mm512_shuffle_f32x4::<0xDD>(u[8 + c], u[12 + c]);
                let columns = [
                    _mm512_shuffle_f32x4::<0x88>(even_lo, even_hi),
                    _mm512_shuffle_f32x4::<0x88>(odd_lo, odd_hi),
                    _mm512_shuffle_f32x4::<0xDD>(even_lo, even_hi),
                    _mm512_shuffle_f32x4::<0xDD>(odd_lo, odd_hi),
                ];
                for (lane, column) in columns.into_iter().enumerate() {
                    let q = 4 * lane + c;
                    // SAFETY: destination row q < 16 holds `width` elements.
                    unsafe { _mm512_mask_storeu_ps(dst.add(q * dst_stride), mask, column) };
                }
            }
        }
    }

    impl Vector for Zmm<f64> {
        type E = f64;
        type V = __m512d;
        const LANES: usize = 8;
        /// Ã micro-panel 12·256·8 B = 24 KiB of the 48 KiB L1.
        const KC: usize = 256;
        /// B̃ block 256·512·8 B = 1 MiB of the 2 MiB L2.
        const NC: usize = 512;

        #[inline]
        #[target_feature(enable = "avx512f")]
        unsafe fn zero() -> __m512d {
            _mm512_setzero_pd()
        }

        #[inline]
        #[target_feature(enable = "avx512f")]
        unsafe fn splat(x: f64) -> __m512d {
            _mm512_set1_pd(x)
        }

        #[inline]
        #[target_feature(enable = "avx512f")]
        unsafe fn load(p: *const f64) -> __m512d {
            // SAFETY: p is valid for 8 reads (trait contract).
            unsafe { _mm512_loadu_pd(p) }
        }

        #[inline]
        #[target_feature(enable = "avx512f")]
        unsafe fn fmadd(a: __m512d, b: __m512d, c: __m512d) -> __m512d {
            _mm512_fmadd_pd(a, b, c)
        }

        #[inline]
        #[target_feature(enable = "avx512f")]
        unsafe fn vmul(a: __m512d, b: __m512d) -> __m512d {
            _mm512_mul_pd(a, b)
        }

        #[inline]
        #[target_feature(enable = "avx512f")]
        unsafe fn load_first(p: *const f64, lanes: usize) -> __m512d {
            // SAFETY: the masked-off lanes are not accessed; the others are valid.
            unsafe { _mm512_maskz_loadu_pd(first_lanes(lanes) as __mmask8, p) }
        }

        #[inline]
        #[target_feature(enable = "avx512f")]
        unsafe fn store_first(p: *mut f64, v: __m512d, lanes: usize) {
            // SAFETY: the masked-off lanes are not accessed; the others are valid.
            unsafe { _mm512_mask_storeu_pd(p, first_lanes(lanes) as __mmask8, v) }
        }

        #[inline]
        #[target_feature(enable = "avx512f")]
        unsafe fn store(p: *mut f64, v: __m512d) {
            // SAFETY: p is valid for 8 writes (trait contract).
            unsafe { _mm512_storeu_pd(p, v) }
        }

        /// Three rounds of 8 shuffles.
        #[inline]
        #[target_feature(enable = "avx512f")]
        unsafe fn transpose_block(
            src: *const f64,
            src_stride: usize,
            rows: usize,
            dst: *mut f64,
            dst_stride: usize,
            width: usize,
        ) {
            let mut r = [_mm512_setzero_pd(); 8];
            for (i, row) in r.iter_mut().enumerate().take(rows) {
                // SAFETY: source row i < rows holds 8 elements (trait contract).
                *row = unsafe { _mm512_loadu_pd(src.add(i * src_stride)) };
            }
            // t[2g + c] holds column 2L + c of rows 2g, 2g + 1 in 128-bit lane L.
            let mut t = r;
            for g in 0..4 {
                t[2 * g] = _mm512_unpacklo_pd(r[2 * g], r[2 * g + 1]);
                t[2 * g + 1] = _mm512_unpackhi_pd(r[2 * g], r[2 * g + 1]);
            }
            // Column 2L + c is lane L of t[c], t[2 + c], t[4 + c], t[6 + c]: transpose that
            // 4×4 grid of lanes.
            let mask = first_lanes(width) as __mmask8;
            for c in 0..2 {
                let even_lo = _mm512_shuffle_f64x2::<0x88>(t[c], t[2 + c]);
                let odd_lo = _mm512_shuffle_f64x2::<0xDD>(t[c], t[2 + c]);
                let even_hi = _mm512_shuffle_f64x2::<0x88>(t[4 + c], t[6 + c]);
                let odd_hi = _mm512_shuffle_f64x2::<0xDD>(t[4 + c], t[6 + c]);
                let columns = [
                    _mm512_shuffle_f64x2::<0x88>(even_lo, even_hi),
                    _mm512_shuffle_f64x2::<0x88>(odd_lo, odd_hi),
                    _mm512_shuffle_f64x2::<0xDD>(even_lo, even_hi),
                    _mm512_shuffle_f64x2::<0xDD>(odd_lo, odd_hi),
                ];
                for (lane, column) in columns.into_iter().enumerate() {
                    let q = 2 * lane + c;
                    // SAFETY: destination row q < 8 holds `width` elements.
                    unsafe { _mm512_mask_storeu_pd(dst.add(q * dst_stride), mask, column) };
                }
            }
        }
    }

    /// A mask selecting the first `lanes` (0..=16) lanes.
    fn first_lanes(lanes: usize) -> __mmask16 {
        ((1u32 << lanes) - 1) as __mmask16
    }
}

/// AVX2 + FMA: a 6 × (2·LANES) tile, 6×16 for f32 and 6×8 for f64 (12 of the 16 ymm registers
/// accumulate, two hold B̃ and one the broadcast Ã value).
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::simd::{self, Vector};
    use super::{Element, Epilogue, Kernel, MatMut, MatRef};
    use std::arch::x86_64::*;
    use std::marker::PhantomData;

    /// The ymm vectors of `E`.
    pub(super) struct Ymm<E>(PhantomData<E>);

    simd_kernel!(Ymm, 6, "avx2,fma");

    impl Vector for Ymm<f32> {
        type E = f32;
        type V = __m256;
        const LANES: usize = 8;
        /// Ã micro-panel 6·256·4 B = 6 KiB of a 32 KiB L1.
        const KC: usize = 256;
        /// B̃ block 256·384·4 B = 384 KiB, inside the 512 KiB L2 of the smallest such cores.
        const NC: usize = 384;

        #[inline]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn zero() -> __m256 {
            _mm256_setzero_ps()
        }

        #[inline]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn splat(x: f32) -> __m256 {
            _mm256_set1_ps(x)
        }

        #[inline]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn load(p: *const f32) -> __m256 {
            // SAFETY: p is valid for 8 reads (trait contract).
            unsafe { _mm256_loadu_ps(p) }
        }

        #[inline]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn fmadd(a: __m256, b: __m256, c: __m256) -> __m256 {
            _mm256_fmadd_ps(a, b, c)
        }

        #[inline]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn vmul(a: __m256, b: __m256) -> __m256 {
            _mm256_mul_ps(a, b)
        }

        #[inline]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn load_first(p: *const f32, lanes: usize) -> __m256 {
            // SAFETY: masked-off lanes are not accessed (and cannot fault); the others are valid.
            unsafe { _mm256_maskload_ps(p, first_lanes32(lanes)) }
        }

        #[inline]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn store_first(p: *mut f32, v: __m256, lanes: usize) {
            // SAFETY: masked-off lanes are not accessed (and cannot fault); the others are valid.
            unsafe { _mm256_maskstore_ps(p, first_lanes32(lanes), v) }
        }

        #[inline]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn store(p: *mut f32, v: __m256) {
            // SAFETY: p is valid for 8 writes (trait contract).
            unsafe { _mm256_storeu_ps(p, v) }
        }

        /// Three rounds of 8 shuffles.
        #[inline]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn transpose_block(
            src: *const f32,
            src_stride: usize,
            rows: usize,
            dst: *mut f32,
            dst_stride: usize,
            width: usize,
        ) {
            let mut r = [_mm256_setzero_ps(); 8];
            for (i, row) in r.iter_mut().enumerate().take(rows) {
                // SAFETY: source row i < rows holds 8 elements (trait contract).
                *row = unsafe { _mm256_loadu_ps(src.add(i * src_stride)) };
            }
            // t[2g] holds columns 4L, 4L + 1 and t[2g + 1] columns 4L + 2, 4L + 3 of rows 2g,
            // 2g + 1, interleaved, in 128-bit lane L.
            let mut t = r;
            for g in 0..4 {
                t[2 * g] = _mm256_unpacklo_ps(r[2 * g], r[2 * g + 1]);
                t[2 * g + 1] = _mm256_unpackhi_ps(r[2 * g], r[2 * g + 1]);
            }
            // u[4h + c] holds column 4L + c of rows 4h..4h + 4 in lane L.
            let mut u = t;
            for h in 0..2 {
                let [t0, t1, t2, t3] = [t[4 * h], t[4 * h + 1], t[4 * h + 2], t[4 * h + 3]];
                u[4 * h] = _mm256_shuffle_ps::<0x44>(t0, t2);
                u[4 * h + 1] = _mm256_shuffle_ps::<0xEE>(t0, t2);
                u[4 * h + 2] = _mm256_shuffle_ps::<0x44>(t1, t3);
                u[4 * h + 3] = _mm256_shuffle_ps::<0xEE>(t1, t3);
            }
            // Column c is lane 0 of u[c] and u[4 + c], column 4 + c their lane 1.
            let columns: [__m256; 8] = std::array::from_fn(|q| {
                let (c, half) = (q % 4, q / 4);
                if half == 0 {
                    _mm256_permute2f128_ps::<0x20>(u[c], u[4 + c])
                } else {
                    _mm256_permute2f128_ps::<0x31>(u[c], u[4 + c])
                }
            });
            // SAFETY: destination rows q < 8 hold `width` elements, contiguous when width < 8.
            unsafe { store_rows::<Self>(&columns, dst, dst_stride, width) }
        }
    }

    impl Vector for Ymm<f64> {
        type E = f64;
        type V = __m256d;
        const LANES: usize = 4;
        /// Ã micro-panel 6·256·8 B = 12 KiB of a 32 KiB L1.
        const KC: usize = 256;
        /// B̃ block 256·192·8 B = 384 KiB, inside a 512 KiB L2.
        const NC: usize = 192;

        #[inline]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn zero() -> __m256d {
            _mm256_setzero_pd()
        }

        #[inline]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn splat(x: f64) -> __m256d {
            _mm256_set1_pd(x)
        }

        #[inline]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn load(p: *const f64) -> __m256d {
            // SAFETY: p is valid for 4 reads (trait contract).
            unsafe { _mm256_loadu_pd(p) }
        }

        #[inline]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn fmadd(a: __m256d, b: __m256d, c: __m256d) -> __m256d {
            _mm256_fmadd_pd(a, b, c)
        }

        #[inline]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn vmul(a: __m256d, b: __m256d) -> __m256d {
            _mm256_mul_pd(a, b)
        }

        #[inline]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn load_first(p: *const f64, lanes: usize) -> __m256d {
            // SAFETY: masked-off lanes are not accessed (and cannot fault); the others are valid.
            unsafe { _mm256_maskload_pd(p, first_lanes64(lanes)) }
        }

        #[inline]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn store_first(p: *mut f64, v: __m256d, lanes: usize) {
            // SAFETY: masked-off lanes are not accessed (and cannot fault); the others are valid.
            unsafe { _mm256_maskstore_pd(p, first_lanes64(lanes), v) }
        }

        #[inline]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn store(p: *mut f64, v: __m256d) {
            // SAFETY: p is valid for 4 writes (trait contract).
            unsafe { _mm256_storeu_pd(p, v) }
        }

        /// Two rounds of 4 shuffles.
        #[inline]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn transpose_block(
            src: *const f64,
            src_stride: usize,
            rows: usize,
            dst: *mut f64,
            dst_stride: usize,
            width: usize,
        ) {
            let mut r = [_mm256_setzero_pd(); 4];
            for (i, row) in r.iter_mut().enumerate().take(rows) {
                // SAFETY: source row i < rows holds 4 elements (trait contract).
                *row = unsafe { _mm256_loadu_pd(src.add(i * src_stride)) };
            }
            // t[2g + c] holds column 2L + c of rows 2g, 2g + 1 in 128-bit lane L.
            let t = [
                _mm256_unpacklo_pd(r[0], r[1]),
                _mm256_unpackhi_pd(r[0], r[1]),
                _mm256_unpacklo_pd(r[2], r[3]),
                _mm256_unpackhi_pd(r[2], r[3]),
            ];
            // Column c is lane 0 of t[c] and t[2 + c], column 2 + c their lane 1.
            let columns: [__m256d; 4] = std::array::from_fn(|q| {
                let (c, half) = (q % 2, q / 2);
                if half == 0 {
                    _mm256_permute2f128_pd::<0x20>(t[c], t[2 + c])
                } else {
                    _mm256_permute2f128_pd::<0x31>(t[c], t[2 + c])
                }
            });
            // SAFETY: destination rows q < 4 hold `width` elements, contiguous when width < 4.
            unsafe { store_rows::<Self>(&columns, dst, dst_stride, width) }
        }
    }

    /// Stores the first `width` lanes of each of the LANES vectors `rows` as row q of the
    /// matrix at `dst` (rows `dst_stride` apart), as [`Vector::transpose_block`] needs. Narrow
    /// rows that are contiguous (`dst_stride == width`: a whole A panel row of the 6-row tile)
    /// are stored whole, in order, the extra lanes landing on the next row just before that
    /// row's own store overwrites them; only the last row, or rows with gaps between them, are
    /// masked. A masked store costs ~10 cycles on AMD Zen 2/3, a plain one 1.
    ///
    /// # Safety
    ///
    /// AVX2; `rows` holds LANES vectors and rows `0..LANES` at `dst` hold `width` writable
    /// elements.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn store_rows<V: Vector>(rows: &[V::V], dst: *mut V::E, dst_stride: usize, width: usize) {
        let contiguous = dst_stride == width;
        for (q, &row) in rows.iter().enumerate() {
            let at = dst.wrapping_add(q * dst_stride);
            // SAFETY: row q holds `width` elements; a whole store past them (width < LANES,
            // contiguous rows, q not the last) lands inside row q + 1, which is written next.
            unsafe {
                if width == V::LANES || (contiguous && q + 1 < V::LANES) {
                    V::store(at, row)
                } else {
                    V::store_first(at, row, width)
                }
            }
        }
    }

    /// A mask selecting the first `lanes` (0..=8) 32-bit lanes.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn first_lanes32(lanes: usize) -> __m256i {
        _mm256_cmpgt_epi32(
            _mm256_set1_epi32(lanes as i32),
            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
        )
    }

    /// A mask selecting the first `lanes` (0..=4) 64-bit lanes.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn first_lanes64(lanes: usize) -> __m256i {
        _mm256_cmpgt_epi64(_mm256_set1_epi64x(lanes as i64), _mm256_setr_epi64x(0, 1, 2, 3))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The signature of `sgemm`/`dgemm`.
    type Gemm<T> = fn(usize, usize, usize, T, &[T], isize, isize, &[T], isize, isize, T, &mut [T], isize, isize);

    /// GEMM forced onto kernel `K` (which the CPU must support), as `sgemm`/`dgemm` call it.
    #[allow(clippy::too_many_arguments)]
    fn gemm_on<K: Kernel>(
        m: usize,
        n: usize,
        k: usize,
        alpha: K::T,
        a: &[K::T],
        rsa: isize,
        csa: isize,
        b: &[K::T],
        rsb: isize,
        csb: isize,
        beta: K::T,
        c: &mut [K::T],
        rsc: isize,
        csc: isize,
    ) {
        let a = (a, rsa, csa);
        let (b, c) = ((b, rsb, csb), (c, rsc, csc));
        run::<K>(Problem::new([m, n, k], alpha, a, b, beta, c));
    }

    /// Each kernel of the build that this CPU can run, with its name, for the `T` GEMM: the
    /// SIMD ones are tested whichever `sgemm` dispatches to, so every kernel a CPU supports is
    /// checked there (and an AVX-512 CPU also checks the AVX2 kernel).
    fn kernels<T: TestFloat>() -> Vec<(&'static str, Gemm<T>)> {
        let mut out: Vec<(&'static str, Gemm<T>)> = vec![("portable", T::PORTABLE)];
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                out.push(("avx512", T::AVX512));
            }
            if avx2_fma() {
                out.push(("avx2", T::AVX2));
            }
        }
        out
    }

    trait TestFloat: Element + std::fmt::Debug {
        const EPSILON: f64;
        const PORTABLE: Gemm<Self>;
        #[cfg(target_arch = "x86_64")]
        const AVX512: Gemm<Self>;
        #[cfg(target_arch = "x86_64")]
        const AVX2: Gemm<Self>;
        fn from_f64(x: f64) -> Self;
        fn to_f64(self) -> f64;
    }

    impl TestFloat for f32 {
        const EPSILON: f64 = f32::EPSILON as f64;
        const PORTABLE: Gemm<f32> = gemm_on::<Portable<f32, 4, 8>>;
        #[cfg(target_arch = "x86_64")]
        const AVX512: Gemm<f32> = gemm_on::<avx512::Zmm<f32>>;
        #[cfg(target_arch = "x86_64")]
        const AVX2: Gemm<f32> = gemm_on::<avx2::Ymm<f32>>;
        fn from_f64(x: f64) -> Self {
            x as f32
        }
        fn to_f64(self) -> f64 {
            self.into()
        }
    }

    impl TestFloat for f64 {
        const EPSILON: f64 = f64::EPSILON;
        const PORTABLE: Gemm<f64> = gemm_on::<Portable<f64, 4, 4>>;
        #[cfg(target_arch = "x86_64")]
        const AVX512: Gemm<f64> = gemm_on::<avx512::Zmm<f64>>;
        #[cfg(target_arch = "x86_64")]
        const AVX2: Gemm<f64> = gemm_on::<avx2::Ymm<f64>>;
        fn from_f64(x: f64) -> Self {
            x
        }
        fn to_f64(self) -> f64 {
            self
        }
    }

    /// How an operand is laid out in its slice.
    #[derive(Clone, Copy, Debug)]
    enum Layout {
        RowMajor,
        /// Column-major, i.e. the transpose of a row-major matrix.
        ColMajor,
        /// Row-major with 3 unused slots after each row.
        PaddedRows,
        /// Column-major with 5 unused slots after each column.
        PaddedCols,
        /// Every other slot of a row-major matrix with one spare slot per row.
        Strided,
        /// One row repeated (row stride 0); only for the inputs.
        BroadcastRows,
    }

    impl Layout {
        /// `(rs, cs, slice length)` of a `rows×cols` matrix; the slice is exactly as long as
        /// the last element needs.
        fn strides(self, rows: usize, cols: usize) -> (usize, usize, usize) {
            let (rs, cs) = match self {
                Layout::RowMajor => (cols, 1),
                Layout::ColMajor => (1, rows),
                Layout::PaddedRows => (cols + 3, 1),
                Layout::PaddedCols => (1, rows + 5),
                Layout::Strided => (2 * cols + 1, 2),
                Layout::BroadcastRows => (0, 1),
            };
            let len = if rows == 0 || cols == 0 {
                0
            } else {
                (rows - 1) * rs + (cols - 1) * cs + 1
            };
            (rs, cs, len)
        }
    }

    #[derive(Clone, Debug)]
    struct Case {
        m: usize,
        n: usize,
        k: usize,
        layouts: [Layout; 3],
        alpha: f64,
        beta: f64,
        seed: u64,
    }

    /// Uniform values in [-1, 1) from a xorshift generator.
    fn random_values(seed: u64, len: usize) -> Vec<f64> {
        let mut state = seed | 1;
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 11) as f64 / (1u64 << 52) as f64 - 1.0
            })
            .collect()
    }

    /// Slots of C's slice that are not elements of the view must come back untouched.
    const UNTOUCHED: f64 = 12345.0;

    /// Runs `gemm` on `case` and compares every element of C with an f64 triple loop:
    /// `|got - ref| <= atol + rtol·mag` with `rtol = (k + 2)·ε`, the classic bound for a
    /// length-k dot product, `mag = |alpha|·Σ_p |a_ip·b_pj| + |beta·c_ij|` and `atol = ε`.
    /// With `beta == 0`, C starts as NaN, which must be overwritten.
    fn check<T: TestFloat>(case: &Case, gemm: Gemm<T>) -> Result<(), TestCaseError> {
        let Case {
            m, n, k, alpha, beta, ..
        } = *case;
        let [la, lb, lc] = case.layouts;
        let (rsa, csa, len_a) = la.strides(m, k);
        let (rsb, csb, len_b) = lb.strides(k, n);
        let (rsc, csc, len_c) = lc.strides(m, n);
        let a: Vec<T> = random_values(case.seed, len_a).into_iter().map(T::from_f64).collect();
        let b: Vec<T> = random_values(!case.seed, len_b).into_iter().map(T::from_f64).collect();
        let c_values = random_values(case.seed.rotate_left(32), m * n);
        let mut c = vec![T::from_f64(UNTOUCHED); len_c];
        for i in 0..m {
            for j in 0..n {
                let init = if beta == 0.0 { f64::NAN } else { c_values[i * n + j] };
                c[i * rsc + j * csc] = T::from_f64(init);
            }
        }
        let c0 = c.clone();
        let (alpha_t, beta_t) = (T::from_f64(alpha), T::from_f64(beta));
        let s = |stride: usize| stride as isize;
        let (a_s, b_s, c_s) = ((s(rsa), s(csa)), (s(rsb), s(csb)), (s(rsc), s(csc)));
        gemm(
            m, n, k, alpha_t, &a, a_s.0, a_s.1, &b, b_s.0, b_s.1, beta_t, &mut c, c_s.0, c_s.1,
        );

        let mut in_view = vec![false; len_c];
        for i in 0..m {
            for j in 0..n {
                let (mut dot, mut mag) = (0.0, 0.0);
                for p in 0..k {
                    let prod = a[i * rsa + p * csa].to_f64() * b[p * rsb + j * csb].to_f64();
                    dot += prod;
                    mag += prod.abs();
                }
                let old = c0[i * rsc + j * csc].to_f64();
                let (scaled_old, old_mag) = if beta == 0.0 {
                    (0.0, 0.0)
                } else {
                    (beta * old, (beta * old).abs())
                };
                let expected = alpha * dot + scaled_old;
                let got = c[i * rsc + j * csc].to_f64();
                let tol = T::EPSILON + (k as f64 + 2.0) * T::EPSILON * (alpha.abs() * mag + old_mag);
                prop_assert!(
                    (got - expected).abs() <= tol,
                    "C[{i},{j}] = {got}, expected {expected} (tolerance {tol})"
                );
                in_view[i * rsc + j * csc] = true;
            }
        }
        for (slot, (&x, _)) in c.iter().zip(&in_view).enumerate().filter(|(_, (_, &v))| !v) {
            prop_assert_eq!(x.to_f64(), UNTOUCHED, "slot {} outside C was written", slot);
        }
        Ok(())
    }

    /// Dimensions: 0, 1, everything up to 70 (primes, non-multiples of MR = 4, 12 and
    /// NR = 4, 8, 16, 32) and sizes that cross KC (256) into several blocks.
    fn dim() -> impl Strategy<Value = usize> {
        prop_oneof![
            4 => 0..=70usize,
            1 => prop::sample::select(vec![97, 129, 257, 300, 385, 401]),
        ]
    }

    fn input_layout() -> impl Strategy<Value = Layout> {
        prop::sample::select(vec![
            Layout::RowMajor,
            Layout::ColMajor,
            Layout::PaddedRows,
            Layout::PaddedCols,
            Layout::Strided,
            Layout::BroadcastRows,
        ])
    }

    fn output_layout() -> impl Strategy<Value = Layout> {
        prop::sample::select(vec![
            Layout::RowMajor,
            Layout::ColMajor,
            Layout::PaddedRows,
            Layout::PaddedCols,
            Layout::Strided,
        ])
    }

    fn case() -> impl Strategy<Value = Case> {
        (
            (dim(), dim(), dim()),
            (input_layout(), input_layout(), output_layout()),
            prop::sample::select(vec![1.0, -1.5, 0.5, 0.0]),
            prop::sample::select(vec![0.0, 1.0, -0.75, 2.0]),
            any::<u64>(),
        )
            .prop_map(|((m, n, k), (la, lb, lc), alpha, beta, seed)| Case {
                m,
                n,
                k,
                layouts: [la, lb, lc],
                alpha,
                beta,
                seed,
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(96))]

        #[test]
        fn sgemm_matches_reference(case in case()) {
            check::<f32>(&case, sgemm)?;
        }

        #[test]
        fn dgemm_matches_reference(case in case()) {
            check::<f64>(&case, dgemm)?;
        }

        #[test]
        fn every_kernel_sgemm_matches_reference(case in case()) {
            for (name, gemm) in kernels::<f32>() {
                check::<f32>(&case, gemm).map_err(|e| TestCaseError::fail(format!("{name}: {e}")))?;
            }
        }

        #[test]
        fn every_kernel_dgemm_matches_reference(case in case()) {
            for (name, gemm) in kernels::<f64>() {
                check::<f64>(&case, gemm).map_err(|e| TestCaseError::fail(format!("{name}: {e}")))?;
            }
        }
    }

    fn fixed(m: usize, n: usize, k: usize, layouts: [Layout; 3], beta: f64) -> Case {
        Case {
            m,
            n,
            k,
            layouts,
            alpha: 0.5,
            beta,
            seed: (m * 1_000_003 + n * 1009 + k) as u64,
        }
    }

    /// Several KC and NC blocks, several threads, partial tiles on every edge.
    #[test]
    fn large_products_match_reference() {
        use Layout::*;
        for layouts in [
            [RowMajor; 3],
            [ColMajor, RowMajor, ColMajor],
            [RowMajor, ColMajor, PaddedRows],
        ] {
            for beta in [0.0, 1.0] {
                let case = fixed(131, 1601, 797, layouts, beta);
                for (name, gemm) in kernels::<f32>() {
                    check::<f32>(&case, gemm).unwrap_or_else(|e| panic!("{name}: {e}"));
                }
                for (name, gemm) in kernels::<f64>() {
                    check::<f64>(&case, gemm).unwrap_or_else(|e| panic!("{name}: {e}"));
                }
            }
        }
    }

    /// Shapes split over threads by rows, by columns, and too small to split.
    #[test]
    fn tall_and_wide_products_match_reference() {
        let layouts = [Layout::RowMajor; 3];
        for (m, n, k) in [
            (2000, 7, 150),
            (7, 2000, 150),
            (64, 64, 256),
            (64, 64, 64),
            (1, 777, 300),
        ] {
            for (name, gemm) in kernels::<f32>() {
                check::<f32>(&fixed(m, n, k, layouts, 1.0), gemm).unwrap_or_else(|e| panic!("{name}: {e}"));
            }
            for (name, gemm) in kernels::<f64>() {
                check::<f64>(&fixed(m, n, k, layouts, 0.0), gemm).unwrap_or_else(|e| panic!("{name}: {e}"));
            }
        }
    }

    #[test]
    fn k_zero_scales_c_by_beta() {
        let mut c = [f32::NAN; 6];
        sgemm(2, 3, 0, 1.0, &[], 0, 1, &[], 3, 1, 0.0, &mut c, 3, 1);
        assert_eq!(c, [0.0; 6]);
        let mut c = [1.0, 2.0, 3.0, 4.0];
        dgemm(2, 2, 0, 1.0, &[], 0, 1, &[], 2, 1, 2.0, &mut c, 2, 1);
        assert_eq!(c, [2.0, 4.0, 6.0, 8.0]);
    }

    #[test]
    fn empty_outputs_are_no_ops() {
        let mut c: [f32; 0] = [];
        sgemm(0, 5, 7, 1.0, &[], 7, 1, &[1.0; 35], 5, 1, 0.0, &mut c, 5, 1);
        sgemm(5, 0, 7, 1.0, &[1.0; 35], 7, 1, &[], 0, 1, 0.0, &mut c, 0, 1);
        sgemm(0, 0, 0, 1.0, &[], 0, 1, &[], 0, 1, 0.0, &mut c, 0, 1);
    }

    #[test]
    fn alpha_zero_does_not_read_a_or_b() {
        let a = [f32::NAN; 4];
        let mut c = [1.0f32, 2.0, 3.0, 4.0];
        sgemm(2, 2, 2, 0.0, &a, 2, 1, &a, 2, 1, 0.5, &mut c, 2, 1);
        assert_eq!(c, [0.5, 1.0, 1.5, 2.0]);
    }

    #[test]
    #[should_panic(expected = "does not fit")]
    fn rejects_a_too_short() {
        let mut c = [0.0f32; 4];
        sgemm(2, 2, 2, 1.0, &[1.0; 3], 2, 1, &[1.0; 4], 2, 1, 0.0, &mut c, 2, 1);
    }

    #[test]
    #[should_panic(expected = "negative stride")]
    fn rejects_negative_strides() {
        let mut c = [0.0f32; 4];
        sgemm(2, 2, 2, 1.0, &[1.0; 4], 2, -1, &[1.0; 4], 2, 1, 0.0, &mut c, 2, 1);
    }

    #[test]
    #[should_panic(expected = "same slot")]
    fn rejects_overlapping_c() {
        let mut c = [0.0f32; 2];
        sgemm(2, 2, 1, 1.0, &[1.0; 2], 1, 1, &[1.0; 2], 2, 1, 0.0, &mut c, 0, 1);
    }

    #[test]
    fn injectivity() {
        assert!(is_injective(3, 4, 4, 1));
        assert!(is_injective(3, 4, 1, 3));
        assert!(is_injective(3, 4, 9, 2));
        assert!(is_injective(1, 4, 0, 1));
        assert!(is_injective(4, 1, 1, 0));
        assert!(!is_injective(3, 4, 3, 1));
        assert!(!is_injective(2, 2, 0, 1));
        assert!(!is_injective(2, 1, 0, 5));
        assert!(is_injective(5, 0, 0, 0));
    }
}
