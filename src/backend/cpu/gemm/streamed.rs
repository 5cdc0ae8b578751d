//! Products with a few rows of A, `C = alpha·A·B + beta·C` with `m <= STREAM_MAX_M`: B is
//! streamed from memory once, in place and in its own dtype (f32 or bf16), instead of being
//! packed. This is the matrix × vector of decoding, where one token's activations `x` (1×k)
//! meet a weight that is read once per token: a Linear's `y = x·Wᵀ`, `W` `[n, k]` row-major.
//!
//! At m = 1 a product does 2 flops per element of B, so it runs at the speed memory delivers B
//! (about 15 GB/s per core here, against a core's 100+ GFLOP/s), and the blocked GEMM's copy
//! of every B block into its packing buffer (written, then read again) costs more than the
//! product: it took two thirds of a decode step before this path existed. Bytes per call:
//! `k·n·size_of::<W>()` for B, `4·m·(k + n)` for A and C; flops `2·m·k·n`.
//!
//! Two loops, by B's layout:
//! - **dot** (`rsb == 1`: column j of B is contiguous, as for `Wᵀ`): [`COLS`] columns at a
//!   time, each row of A against each column, `M·COLS` vector accumulators (16 at most), reduced
//!   across lanes at the end. The `M` rows of A stay in L1; the columns are independent
//!   streams the hardware prefetcher follows.
//! - **axpy** (`csb == 1`: B row-major): for a block of [`AXPY_VECS`] vectors of columns of C
//!   kept in registers, `c[i, j..] += a[i, p] · b[p, j..]` over p, vectorised along j.
//!
//! bf16 elements are widened in registers (a bf16 is the top half of an f32: zero-extend to 32
//! bits, shift left 16), so the weight is read at 2 bytes per element and never copied. With a
//! bf16 A as well and a CPU with AVX-512 BF16, [`bgemm_streamed_into`] runs the dot loop on
//! `vdpbf16ps` instead: 32 bf16 of A times 32 of B per instruction, pairs of exact products added
//! to 16 f32 lanes, A read as bf16. The columns of C are cut into up to four tasks per thread, one
//! per [`BYTES_PER_TASK`] of B, so that a thread whose reads run slower hands its last runs to
//! another instead of keeping it waiting at the region's end; every element of C is computed by
//! one thread in a fixed order, so the result does not depend on the thread count. Several
//! products that share A (a layer's q, k and v projections) run in one parallel region
//! ([`sgemm_streamed_many_into`], [`bgemm_streamed_many_into`]): their columns taken end to end
//! and cut the same way, each product's result the same as alone.

use super::matrix::{as_uninit, assert_fits, is_injective, Epilogue, MatMut, MatRef, Streamed};
#[cfg(target_arch = "x86_64")]
use super::pack::prefetch_to_l2;
#[cfg(target_arch = "x86_64")]
use super::simd::Widen;
use rayon::prelude::*;
use smallvec::SmallVec;
use std::mem::MaybeUninit;

/// Rows of A up to which a product streams B (see the module header): with m rows each element
/// of B is used m times, and from about 4 rows on, the blocked GEMM's packing pays for itself.
pub const STREAM_MAX_M: usize = 4;

/// Columns of B the dot loop reads at once: `M·COLS` accumulators, 16 at most, half of the
/// AVX-512 register file (AVX2 has 16 registers, so at M = 4 some accumulators spill to L1,
/// which a loop bound by memory hides).
const COLS: usize = 4;

/// How far ahead the dot loop asks for B: the same position of the next group's columns, that
/// is `COLS` rows of `W` ahead. A weight's row is short (576 bf16 of SmolLM2: 18 cache lines),
/// too short for the hardware prefetcher to lock onto each of the `COLS` streams before it ends;
/// asking for the next rows' lines keeps the reads in flight across groups. Measured on SmolLM2's
/// bf16 decode: about 25% more tokens/s (docs/perf.md); one group ahead and two measured alike.
/// The lines are asked into L2, not L1 (`prefetch_to_l2`): on a Zen 4 the products then read
/// 25–55% faster (81–87% of the read probe instead of 61–66% in f32; docs/perf.md): by the look
/// of it, a prefetch into L1 holds one of L1's few miss buffers for its whole trip to memory.
const PREFETCH_COLS: usize = COLS;

/// Vectors of columns of C the axpy loop keeps in registers, for each of its `M` rows: 64 columns
/// with AVX-512, a decode attention head's `P·V` row (`M·4` accumulators, 16 at most).
const AXPY_VECS: usize = 4;

/// Columns of C one step of the portable axpy loop keeps in its stack buffer (`M` rows of 1 KiB).
const AXPY_BLOCK: usize = 256;

/// Bytes of B per task: 64 KiB take 1.5–3 µs to read on one core, against about a microsecond to
/// hand a task to a worker that is polling (`backend/cpu/awake.rs`). Below it a product stays on the
/// calling thread. In alternated quick runs of SmolLM2's decode on 2 threads (2026-12-06, a noisy
/// machine, so no figure is claimed), one task per thread above 256 KiB was slower in bf16 in 6
/// pairs of 6 and in f32 in 5 of 6.
const BYTES_PER_TASK: usize = 64 << 10;

/// Tasks per thread at most in one product's region.
const TASKS_PER_THREAD: usize = 4;

/// Whether a product with `m` rows and these strides takes the streamed path: A's and C's rows
/// contiguous, and B contiguous along its rows or its columns.
pub fn streams(m: usize, csa: isize, [rsb, csb]: [isize; 2], csc: isize) -> bool {
    (1..=STREAM_MAX_M).contains(&m) && csa == 1 && csc == 1 && (rsb == 1 || csb == 1)
}

/// The instruction sets the streamed loops are compiled for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Isa {
    Portable,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

impl Isa {
    /// The widest one this CPU supports.
    fn best() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                return Isa::Avx512;
            }
            if Isa::Avx2.is_supported() {
                return Isa::Avx2;
            }
        }
        Isa::Portable
    }

    pub(super) fn is_supported(self) -> bool {
        match self {
            Isa::Portable => true,
            #[cfg(target_arch = "x86_64")]
            // F16C for f16 operands (every AVX2 CPU has it)
            Isa::Avx2 => super::avx2_fma() && std::arch::is_x86_feature_detected!("f16c"),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => std::arch::is_x86_feature_detected!("avx512f"),
        }
    }
}

/// `C = alpha·A·B + beta·C` for f32 A and C and a B of f32 or bf16, streamed (module header).
/// The layout is [`super::sgemm`]'s; the strides must satisfy [`streams`].
///
/// # Panics
///
/// If the strides do not satisfy [`streams`] or are negative, an operand does not fit in its
/// slice, or C's strides overlap.
#[allow(clippy::too_many_arguments)] // the BLAS signature
pub fn sgemm_streamed<W: Streamed>(
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: &[f32],
    rsa: isize,
    csa: isize,
    b: &[W],
    rsb: isize,
    csb: isize,
    beta: f32,
    c: &mut [f32],
    rsc: isize,
    csc: isize,
) {
    stream_on(Isa::best(), m, n, k, alpha, a, rsa, csa, b, rsb, csb, beta, c, rsc, csc);
}

/// [`sgemm_streamed`] with alpha 1 and beta 0 into a C that may be uninitialised: every element
/// of its `m×n` view is written (`C = A·B`), none read. The layout and panics are
/// [`sgemm_streamed`]'s.
#[allow(clippy::too_many_arguments)] // the BLAS signature
pub(crate) fn sgemm_streamed_into<W: Streamed>(
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: &[f32],
    rsa: isize,
    csa: isize,
    b: &[W],
    rsb: isize,
    csb: isize,
    c: &mut [MaybeUninit<f32>],
    rsc: isize,
    csc: isize,
) {
    // SAFETY: beta is 0, so C is never read.
    unsafe { stream_with_output(Isa::best(), m, n, k, alpha, a, rsa, csa, b, rsb, csb, 0.0, c, rsc, csc) }
}

/// [`sgemm_streamed`] with the loops of instruction set `isa`, which the CPU must support.
#[allow(clippy::too_many_arguments)] // the BLAS signature
pub(super) fn stream_on<W: Streamed>(
    isa: Isa,
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: &[f32],
    rsa: isize,
    csa: isize,
    b: &[W],
    rsb: isize,
    csb: isize,
    beta: f32,
    c: &mut [f32],
    rsc: isize,
    csc: isize,
) {
    // SAFETY: `c` is initialised, and only initialised values are written through its
    // `MaybeUninit` view.
    let c = unsafe { as_uninit(c) };
    // SAFETY: `c` is initialised, so it may be read whatever beta is.
    unsafe { stream_with_output(isa, m, n, k, alpha, a, rsa, csa, b, rsb, csb, beta, c, rsc, csc) }
}

/// [`stream_on`] into a C whose elements may be uninitialised.
///
/// # Safety
///
/// When `beta` is not zero, every element of C's `m×n` view is initialised (it is read).
#[allow(clippy::too_many_arguments)] // the BLAS signature
unsafe fn stream_with_output<W: Streamed>(
    isa: Isa,
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: &[f32],
    rsa: isize,
    csa: isize,
    b: &[W],
    rsb: isize,
    csb: isize,
    beta: f32,
    c: &mut [MaybeUninit<f32>],
    rsc: isize,
    csc: isize,
) {
    assert!(isa.is_supported(), "gemm: this CPU does not support {isa:?}");
    assert!(
        streams(m, csa, [rsb, csb], csc),
        "gemm: a {m}-row product with strides A ({rsa}, {csa}), B ({rsb}, {csb}), C ({rsc}, {csc}) cannot be streamed"
    );
    let [rsa, rsb, csb, rsc] = [rsa, rsb, csb, rsc]
        .map(|stride| usize::try_from(stride).unwrap_or_else(|_| panic!("gemm: negative stride {stride}")));
    assert_fits("A", m, k, rsa, 1, a.len());
    assert_fits("B", k, n, rsb, csb, b.len());
    assert_fits("C", m, n, rsc, 1, c.len());
    assert!(
        is_injective(m, n, rsc, 1),
        "gemm: C ({m}×{n}, row stride {rsc}) maps two elements to the same slot"
    );
    if n == 0 {
        return;
    }
    if k == 0 || alpha == 0.0 {
        // A and B are not read (a NaN in them must not reach C), as in the blocked GEMM
        for i in 0..m {
            for cij in &mut c[i * rsc..i * rsc + n] {
                // SAFETY: C is read only when beta is not 0, and then it is initialised
                // (this function's contract).
                cij.write(if beta == 0.0 {
                    0.0
                } else {
                    beta * unsafe { cij.assume_init() }
                });
            }
        }
        return;
    }
    let product = Product {
        isa,
        m,
        k,
        a: MatRef {
            ptr: a.as_ptr(),
            rs: rsa,
            cs: 1,
        },
        b: MatRef {
            ptr: b.as_ptr(),
            rs: rsb,
            cs: csb,
        },
        c: MatMut {
            ptr: c.as_mut_ptr().cast(),
            rs: rsc,
            cs: 1,
        },
        ep: Epilogue { alpha, beta },
    };
    let bytes = k.saturating_mul(n).saturating_mul(size_of::<W>());
    in_tasks(bytes, &[n], |_, j0, j1| {
        // SAFETY: the views were checked against their slices, j0..j1 are columns of C, and
        // each task writes its own columns of C.
        unsafe { product.columns(j0, j1) }
    });
}

/// Calls `columns(i, j0, j1)` over the columns `0..ns[i]` of every product `i` of one parallel
/// region that reads `bytes` of B in all: one task per [`BYTES_PER_TASK`], up to
/// [`TASKS_PER_THREAD`] per thread, the products' columns taken end to end as one range and
/// cut into equal runs (multiples of [`COLS`]), so that a task may finish one product's columns
/// and start the next's. Every column goes to exactly one call, and (the loops computing each
/// column by itself, in a fixed order) the results do not depend on the cut.
fn in_tasks(bytes: usize, ns: &[usize], columns: impl Fn(usize, usize, usize) + Sync) {
    let total: usize = ns.iter().sum();
    if total == 0 {
        return;
    }
    let tasks = (bytes / BYTES_PER_TASK).clamp(1, TASKS_PER_THREAD * rayon::current_num_threads());
    let run = |g0: usize, g1: usize| {
        let mut start = 0;
        for (i, &n) in ns.iter().enumerate() {
            let (j0, j1) = (g0.max(start), g1.min(start + n));
            if j0 < j1 {
                columns(i, j0 - start, j1 - start);
            }
            start += n;
        }
    };
    if tasks == 1 {
        return run(0, total);
    }
    let cols_per_task = total.div_ceil(tasks).next_multiple_of(COLS);
    (0..total)
        .into_par_iter()
        .step_by(cols_per_task)
        .for_each(|g0| run(g0, total.min(g0 + cols_per_task)));
}

/// The checked views of the products of [`sgemm_streamed_many_into`] and
/// [`bgemm_streamed_many_into`]: for each weight `W_i`, (A, B_i = W_iᵀ, C_i), and each n_i.
/// Panics as they do.
#[allow(clippy::type_complexity)] // the three views of each product, and their widths
fn many_views<A, W>(
    m: usize,
    k: usize,
    a: &[A],
    rsa: usize,
    ws: &[&[W]],
    cs: &mut [&mut [MaybeUninit<f32>]],
) -> (SmallVec<[(MatRef<A>, MatRef<W>, MatMut<f32>); 4]>, SmallVec<[usize; 4]>) {
    assert!(
        (1..=STREAM_MAX_M).contains(&m),
        "gemm: a {m}-row product cannot be streamed"
    );
    assert_eq!(
        ws.len(),
        cs.len(),
        "gemm: {} weights and {} outputs",
        ws.len(),
        cs.len()
    );
    assert_fits("A", m, k, rsa, 1, a.len());
    // C_i's length gives n_i (W_i's does not when k is 0)
    let ns: SmallVec<[usize; 4]> = cs.iter().map(|c| c.len() / m).collect();
    let mut views = SmallVec::new();
    for ((w, c), &n) in ws.iter().zip(cs.iter_mut()).zip(&ns) {
        assert_fits("B", k, n, 1, k, w.len());
        assert_eq!(c.len(), m * n, "gemm: an output of {} elements for {m} rows", c.len());
        views.push((
            MatRef {
                ptr: a.as_ptr(),
                rs: rsa,
                cs: 1,
            },
            MatRef {
                ptr: w.as_ptr(),
                rs: 1,
                cs: k,
            },
            MatMut {
                ptr: c.as_mut_ptr().cast(),
                rs: n,
                cs: 1,
            },
        ));
    }
    (views, ns)
}

/// `C_i = A·W_iᵀ` for several weights `W_i` (`n_i×k`, row-major: a Linear's `[out, in]`) that
/// share one A (`m×k`, row `i` at `a[i·rsa..]`, `m <= STREAM_MAX_M`): a layer's q, k and v
/// projections, or its gate and up projections, in decode. Each C_i is `m×n_i`, contiguous, and
/// may be uninitialised (every element is written, none read). One parallel region for all
/// of them ([`in_tasks`]) instead of one per product, and a small weight (a key projection of
/// grouped-query attention) is shared among the threads rather than read by one; each C_i is
/// [`sgemm_streamed_into`]`(m, n_i, k, 1, a, rsa, 1, W_i, 1, k, C_i, n_i, 1)`, bit for bit.
///
/// # Panics
///
/// As [`sgemm_streamed`]: `m` out of `1..=STREAM_MAX_M`, or an operand that does not fit its
/// slice (`ws` and `cs` must have the same length, each C_i `m·n_i` elements).
pub(crate) fn sgemm_streamed_many_into<W: Streamed>(
    m: usize,
    k: usize,
    a: &[f32],
    rsa: usize,
    ws: &[&[W]],
    cs: &mut [&mut [MaybeUninit<f32>]],
) {
    let isa = Isa::best();
    let (views, ns) = many_views(m, k, a, rsa, ws, cs);
    let products: SmallVec<[Product<W>; 4]> = views
        .iter()
        .map(|&(a, b, c)| Product {
            isa,
            m,
            k,
            a,
            b,
            c,
            ep: Epilogue { alpha: 1.0, beta: 0.0 },
        })
        .collect();
    let bytes = k.saturating_mul(ns.iter().sum()).saturating_mul(size_of::<W>());
    in_tasks(bytes, &ns, |i, j0, j1| {
        // SAFETY: the views were checked against their slices (B_i = W_iᵀ is k×n_i with column
        // stride k, C_i is m×n_i with rows n_i apart: distinct slices, so distinct elements), the
        // CPU supports `isa`, j0..j1 are columns of product i, and each task writes its own
        // columns of each C_i. Beta is 0: C is never read.
        unsafe { products[i].columns(j0, j1) }
    });
}

/// A checked streamed product: A is `m×k` with contiguous rows, B `k×n`, C `m×n` with
/// contiguous rows.
#[derive(Clone, Copy)]
struct Product<W> {
    /// Supported by the CPU (checked by `stream_on`).
    isa: Isa,
    m: usize,
    k: usize,
    a: MatRef<f32>,
    b: MatRef<W>,
    c: MatMut<f32>,
    ep: Epilogue<f32>,
}

impl<W: Streamed> Product<W> {
    /// Computes columns `j0..j1` of C with the loops of `self.isa`.
    ///
    /// # Safety
    ///
    /// The views fit their slices, `j0 < j1 <= n`, and no other thread accesses these columns of C.
    unsafe fn columns(&self, j0: usize, j1: usize) {
        match self.isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => {
                #[target_feature(enable = "avx512f")]
                unsafe fn run<W: Streamed>(p: &Product<W>, j0: usize, j1: usize) {
                    // SAFETY: forwarded contract; the features are enabled here.
                    unsafe { p.columns_on::<super::avx512::Zmm<f32>>(j0, j1) }
                }
                // SAFETY: forwarded contract, and the CPU has AVX-512F (`self.isa` is supported).
                unsafe { run(self, j0, j1) }
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => {
                #[target_feature(enable = "avx2,fma,f16c")]
                unsafe fn run<W: Streamed>(p: &Product<W>, j0: usize, j1: usize) {
                    // SAFETY: forwarded contract; the features are enabled here.
                    unsafe { p.columns_on::<super::avx2::Ymm<f32>>(j0, j1) }
                }
                // SAFETY: forwarded contract, and the CPU has AVX2, FMA and F16C (`self.isa` is
                // supported).
                unsafe { run(self, j0, j1) }
            }
            // SAFETY: forwarded contract.
            Isa::Portable => unsafe { self.columns_portable(j0, j1) },
        }
    }

    /// `C[i, j] = alpha·acc + beta·C[i, j]` (C not read when beta is 0).
    ///
    /// # Safety
    ///
    /// (i, j) is an element of C that no other thread accesses.
    #[inline(always)]
    unsafe fn write(&self, i: usize, j: usize, acc: f32) {
        // SAFETY: caller's contract; C's rows are contiguous, and C is read only when beta is
        // not 0, when it is initialised (`stream_with_output`'s contract).
        unsafe { self.ep.store(self.c.ptr.add(i * self.c.rs + j), acc) };
    }

    /// The portable loops, for CPUs without AVX2: the same two loops one element at a time,
    /// the dot product folded over eight lanes so that it vectorises.
    ///
    /// # Safety
    ///
    /// As for [`Self::columns`].
    unsafe fn columns_portable(&self, j0: usize, j1: usize) {
        let (m, k) = (self.m, self.k);
        // SAFETY (all reads below): (i, p) and (p, j) for i < m, p < k, j < j1 are elements of
        // A and B (caller's contract).
        let a = |i: usize, p: usize| unsafe { *self.a.ptr.add(i * self.a.rs + p) };
        let b = |p: usize, j: usize| unsafe { (*self.b.ptr.add(p * self.b.rs + j * self.b.cs)).to_f32() };
        if self.b.rs == 1 {
            for j in j0..j1 {
                for i in 0..m {
                    let acc = crate::backend::cpu::lane_fold(k, 0.0, |p| a(i, p) * b(p, j), |x, y| x + y);
                    // SAFETY: (i, j) is in this task's columns of C (caller's contract).
                    unsafe { self.write(i, j, acc) };
                }
            }
        } else {
            let mut acc = [[0f32; AXPY_BLOCK]; STREAM_MAX_M];
            for jb in (j0..j1).step_by(AXPY_BLOCK) {
                let width = AXPY_BLOCK.min(j1 - jb);
                acc.iter_mut().for_each(|row| row.fill(0.0));
                for p in 0..k {
                    for (i, row) in acc[..m].iter_mut().enumerate() {
                        let a_ip = a(i, p);
                        row[..width]
                            .iter_mut()
                            .enumerate()
                            .for_each(|(q, c)| *c += a_ip * b(p, jb + q));
                    }
                }
                for (i, row) in acc[..m].iter().enumerate() {
                    for (q, &value) in row[..width].iter().enumerate() {
                        // SAFETY: (i, jb + q) is in this task's columns of C (caller's contract).
                        unsafe { self.write(i, jb + q, value) };
                    }
                }
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    /// The two loops on vectors `V`, for every supported row count.
    ///
    /// # Safety
    ///
    /// As for [`Self::columns`], and the CPU supports `V`'s instruction set.
    #[inline(always)]
    unsafe fn columns_on<V: Widen>(&self, j0: usize, j1: usize) {
        // SAFETY (every arm): forwarded contract; m is the arm's M.
        unsafe {
            match (self.m, self.b.rs == 1) {
                (1, true) => self.dot::<V, 1>(j0, j1),
                (2, true) => self.dot::<V, 2>(j0, j1),
                (3, true) => self.dot::<V, 3>(j0, j1),
                (4, true) => self.dot::<V, 4>(j0, j1),
                (1, false) => self.axpy::<V, 1>(j0, j1),
                (2, false) => self.axpy::<V, 2>(j0, j1),
                (3, false) => self.axpy::<V, 3>(j0, j1),
                (4, false) => self.axpy::<V, 4>(j0, j1),
                _ => unreachable!("sgemm_streamed checks 1 <= m <= STREAM_MAX_M"),
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    /// The dot loop (module header) for `M == m` rows, `rsb == 1`.
    ///
    /// # Safety
    ///
    /// As for [`Self::columns_on`].
    #[inline(always)]
    unsafe fn dot<V: Widen, const M: usize>(&self, j0: usize, j1: usize) {
        let k = self.k;
        let full = k - k % V::LANES;
        let row = |i: usize| self.a.ptr.wrapping_add(i * self.a.rs);
        for j in (j0..j1).step_by(COLS) {
            let cols = COLS.min(j1 - j);
            // a partial group reads its last column again in the missing slots, never writing them
            let col: [*const W; COLS] =
                std::array::from_fn(|q| self.b.ptr.wrapping_add((j + q.min(cols - 1)) * self.b.cs));
            // SAFETY: p + LANES <= k for every p below (and p + lanes <= k in the tail), so every
            // load reads elements of rows of A and columns of B (caller's contract); the CPU
            // supports V (caller's contract).
            unsafe {
                let mut acc = [[V::zero(); COLS]; M];
                for p in (0..full).step_by(V::LANES) {
                    for &column in &col {
                        prefetch_to_l2(column.wrapping_add(PREFETCH_COLS * self.b.cs + p));
                    }
                    let b: [V::V; COLS] = std::array::from_fn(|q| V::load_wide::<W>(col[q].add(p)));
                    for (i, acc) in acc.iter_mut().enumerate() {
                        let a = V::load(row(i).add(p));
                        for q in 0..COLS {
                            acc[q] = V::fmadd(a, b[q], acc[q]);
                        }
                    }
                }
                if full < k {
                    let lanes = k - full;
                    let b: [V::V; COLS] = std::array::from_fn(|q| V::load_wide_first::<W>(col[q].add(full), lanes));
                    for (i, acc) in acc.iter_mut().enumerate() {
                        let a = V::load_first(row(i).add(full), lanes);
                        for q in 0..COLS {
                            acc[q] = V::fmadd(a, b[q], acc[q]);
                        }
                    }
                }
                for (i, &acc) in acc.iter().enumerate() {
                    for (q, &sum) in V::sums(acc)[..cols].iter().enumerate() {
                        self.write(i, j + q, sum);
                    }
                }
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    /// The axpy loop (module header) for `M == m` rows, `csb == 1`: [`AXPY_VECS`] vectors of
    /// columns of C at a time, kept in registers through the whole of k (a block narrower than
    /// that, at the end, reads B with masks).
    ///
    /// # Safety
    ///
    /// As for [`Self::columns_on`].
    #[inline(always)]
    unsafe fn axpy<V: Widen, const M: usize>(&self, j0: usize, j1: usize) {
        let block = AXPY_VECS * V::LANES;
        for jb in (j0..j1).step_by(block) {
            let width = block.min(j1 - jb);
            // lanes of B read for vector v of the block: LANES but in a narrower last block
            let lanes = |v: usize| width.saturating_sub(v * V::LANES).min(V::LANES);
            // SAFETY: the CPU supports V (caller's contract).
            let mut acc = [[unsafe { V::zero() }; AXPY_VECS]; M];
            for p in 0..self.k {
                let b = self.b.ptr.wrapping_add(p * self.b.rs + jb);
                // SAFETY: (p, jb..jb + width) are elements of B and (i, p) of A (caller's
                // contract): a vector reads `lanes(v)` elements from column jb + v·LANES, none
                // when 0; the CPU supports V (caller's contract).
                unsafe {
                    let a: [V::V; M] = std::array::from_fn(|i| V::splat(*self.a.ptr.add(i * self.a.rs + p)));
                    let b: [V::V; AXPY_VECS] = if width == block {
                        std::array::from_fn(|v| V::load_wide::<W>(b.add(v * V::LANES)))
                    } else {
                        std::array::from_fn(|v| match lanes(v) {
                            0 => V::zero(),
                            n => V::load_wide_first::<W>(b.add(v * V::LANES), n),
                        })
                    };
                    for (acc, &a) in acc.iter_mut().zip(&a) {
                        for (acc, &b) in acc.iter_mut().zip(&b) {
                            *acc = V::fmadd(a, b, *acc);
                        }
                    }
                }
            }
            for (i, acc) in acc.iter().enumerate() {
                let mut row = [0f32; AXPY_VECS * 16];
                for (v, &acc) in acc.iter().enumerate() {
                    // SAFETY: row holds AXPY_VECS·16 >= AXPY_VECS·LANES elements; the CPU supports V.
                    unsafe { V::store(row.as_mut_ptr().add(v * V::LANES), acc) };
                }
                for (q, &value) in row[..width].iter().enumerate() {
                    // SAFETY: (i, jb + q) is in this task's columns of C (caller's contract).
                    unsafe { self.write(i, jb + q, value) };
                }
            }
        }
    }
}

/// [`sgemm_streamed_into`] for bf16 A and bf16 B whose columns are contiguous (`rsb == 1`: a
/// Linear's `Wᵀ`), on a CPU with AVX-512 BF16 ([`super::has_bf16_dot`]): the dot loop on
/// `vdpbf16ps`, which multiplies 32 bf16 of A by 32 of B and adds each pair of products to one
/// of 16 f32 lanes, so A is read as bf16 (no f32 copy of x) and each 64-byte line of B takes one
/// instruction instead of two widenings and two FMAs. Numerics, as [`super::bgemm`]'s
/// `vdpbf16ps` kernel (`avx512bf16.rs`): the products of two bf16 are exact in f32 and the sums
/// are rounded f32 additions in another order than the f32 loop's (pairs first, then the lanes),
/// and bf16 inputs, products or sums below 2⁻¹²⁶ count as zero. The layout and panics are
/// [`sgemm_streamed`]'s, and in addition this CPU must have AVX-512 BF16 and `rsb` must be 1.
#[allow(clippy::too_many_arguments)] // the BLAS signature
pub(crate) fn bgemm_streamed_into(
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: &[half::bf16],
    rsa: isize,
    csa: isize,
    b: &[half::bf16],
    rsb: isize,
    csb: isize,
    c: &mut [MaybeUninit<f32>],
    rsc: isize,
    csc: isize,
) {
    assert!(super::has_bf16_dot(), "gemm: this CPU does not have AVX-512 BF16");
    assert!(
        streams(m, csa, [rsb, csb], csc) && rsb == 1,
        "gemm: a {m}-row bf16 product with strides A ({rsa}, {csa}), B ({rsb}, {csb}), C ({rsc}, {csc}) cannot be streamed on vdpbf16ps"
    );
    let [rsa, csb, rsc] = [rsa, csb, rsc]
        .map(|stride| usize::try_from(stride).unwrap_or_else(|_| panic!("gemm: negative stride {stride}")));
    assert_fits("A", m, k, rsa, 1, a.len());
    assert_fits("B", k, n, 1, csb, b.len());
    assert_fits("C", m, n, rsc, 1, c.len());
    assert!(
        is_injective(m, n, rsc, 1),
        "gemm: C ({m}×{n}, row stride {rsc}) maps two elements to the same slot"
    );
    if k == 0 || alpha == 0.0 {
        // A and B are not read (a NaN in them must not reach C), as in the other products
        for i in 0..m {
            c[i * rsc..i * rsc + n].iter_mut().for_each(|cij| {
                cij.write(0.0);
            });
        }
        return;
    }
    #[cfg(target_arch = "x86_64")]
    {
        let product = bf16_dot::DotBf16 {
            m,
            k,
            a: MatRef {
                ptr: a.as_ptr(),
                rs: rsa,
                cs: 1,
            },
            b: MatRef {
                ptr: b.as_ptr(),
                rs: 1,
                cs: csb,
            },
            c: MatMut {
                ptr: c.as_mut_ptr().cast(),
                rs: rsc,
                cs: 1,
            },
            alpha,
        };
        let bytes = k.saturating_mul(n).saturating_mul(2);
        in_tasks(bytes, &[n], |_, j0, j1| {
            // SAFETY: the views were checked against their slices, the CPU has AVX-512 BF16
            // (asserted above), j0..j1 are columns of C and each task writes its own columns.
            unsafe { product.columns(j0, j1) }
        });
    }
}

/// [`sgemm_streamed_many_into`] for bf16 A and bf16 weights on `vdpbf16ps`: each C_i is
/// [`bgemm_streamed_into`]`(m, n_i, k, 1, a, rsa, 1, W_i, 1, k, C_i, n_i, 1)`, bit for bit, in
/// one parallel region. Panics as both; the CPU must have AVX-512 BF16.
pub(crate) fn bgemm_streamed_many_into(
    m: usize,
    k: usize,
    a: &[half::bf16],
    rsa: usize,
    ws: &[&[half::bf16]],
    cs: &mut [&mut [MaybeUninit<f32>]],
) {
    assert!(super::has_bf16_dot(), "gemm: this CPU does not have AVX-512 BF16");
    let (views, ns) = many_views(m, k, a, rsa, ws, cs);
    #[cfg(target_arch = "x86_64")]
    {
        let products: SmallVec<[bf16_dot::DotBf16; 4]> = views
            .iter()
            .map(|&(a, b, c)| bf16_dot::DotBf16 {
                m,
                k,
                a,
                b,
                c,
                alpha: 1.0,
            })
            .collect();
        let bytes = k.saturating_mul(ns.iter().sum()).saturating_mul(2);
        in_tasks(bytes, &ns, |i, j0, j1| {
            // SAFETY: as in `sgemm_streamed_many_into`; the CPU has AVX-512 BF16 (asserted).
            unsafe { products[i].columns(j0, j1) }
        });
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (views, ns); // unreachable: no AVX-512 BF16 (asserted above)
}

/// The dot loop on `vdpbf16ps` ([`bgemm_streamed_into`]).
#[cfg(target_arch = "x86_64")]
mod bf16_dot {
    use super::{prefetch_to_l2, COLS, PREFETCH_COLS};
    use crate::backend::cpu::gemm::avx512::lane_sums;
    use crate::backend::cpu::gemm::matrix::{MatMut, MatRef};
    use half::bf16;
    use std::arch::x86_64::*;

    /// bf16 elements per `vdpbf16ps` operand: 16 lanes of pairs.
    const STEP: usize = 32;

    /// A checked product: A `m×k` (rows contiguous), B `k×n` (columns contiguous), C `m×n` (rows
    /// contiguous, written as `alpha·acc`, never read).
    #[derive(Clone, Copy)]
    pub(super) struct DotBf16 {
        pub(super) m: usize,
        pub(super) k: usize,
        pub(super) a: MatRef<bf16>,
        pub(super) b: MatRef<bf16>,
        pub(super) c: MatMut<f32>,
        pub(super) alpha: f32,
    }

    impl DotBf16 {
        /// Computes columns `j0..j1` of C.
        ///
        /// # Safety
        ///
        /// The views fit their slices, `j0 <= j1 <= n`, no other thread accesses these columns of
        /// C, `1 <= m <= STREAM_MAX_M`, and the CPU has AVX-512 F, BW and BF16.
        pub(super) unsafe fn columns(&self, j0: usize, j1: usize) {
            // SAFETY (every arm): forwarded contract; m is the arm's M.
            unsafe {
                match self.m {
                    1 => self.dot::<1>(j0, j1),
                    2 => self.dot::<2>(j0, j1),
                    3 => self.dot::<3>(j0, j1),
                    4 => self.dot::<4>(j0, j1),
                    _ => unreachable!("the streamed products check 1 <= m <= STREAM_MAX_M"),
                }
            }
        }

        /// The dot loop for `M == m` rows: [`COLS`] columns at a time, `M·COLS` accumulators of
        /// 16 f32 lanes, each `vdpbf16ps` adding 32 products; a tail of `k % 32` elements is read
        /// with a mask (zeros past the end, whose products are zero); the next group's lines of B
        /// are asked for as in the f32 loop.
        ///
        /// # Safety
        ///
        /// As for [`Self::columns`].
        #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
        unsafe fn dot<const M: usize>(&self, j0: usize, j1: usize) {
            let k = self.k;
            let full = k - k % STEP;
            let row = |i: usize| self.a.ptr.wrapping_add(i * self.a.rs);
            for j in (j0..j1).step_by(COLS) {
                let cols = COLS.min(j1 - j);
                // a partial group reads its last column again in the missing slots, never writing them
                let col: [*const bf16; COLS] =
                    std::array::from_fn(|q| self.b.ptr.wrapping_add((j + q.min(cols - 1)) * self.b.cs));
                // SAFETY: p + STEP <= k for every p below, and the tail's masked loads touch only
                // elements p < k, so every load reads elements of rows of A and columns of B
                // (caller's contract); the CPU has the features (caller's contract); __m512i and
                // __m512bh are both 64 plain bytes.
                unsafe {
                    let mut acc = [[_mm512_setzero_ps(); COLS]; M];
                    for p in (0..full).step_by(STEP) {
                        for &column in &col {
                            prefetch_to_l2(column.wrapping_add(PREFETCH_COLS * self.b.cs + p));
                        }
                        let b: [__m512bh; COLS] =
                            std::array::from_fn(|q| std::mem::transmute(_mm512_loadu_si512(col[q].add(p).cast())));
                        for (i, acc) in acc.iter_mut().enumerate() {
                            let a: __m512bh = std::mem::transmute(_mm512_loadu_si512(row(i).add(p).cast()));
                            for q in 0..COLS {
                                acc[q] = _mm512_dpbf16_ps(acc[q], a, b[q]);
                            }
                        }
                    }
                    if full < k {
                        // k - full is 1..=31 elements: a 32-bit mask of that many ones
                        let mask: __mmask32 = (1u32 << (k - full)) - 1;
                        let b: [__m512bh; COLS] = std::array::from_fn(|q| {
                            std::mem::transmute(_mm512_maskz_loadu_epi16(mask, col[q].add(full).cast()))
                        });
                        for (i, acc) in acc.iter_mut().enumerate() {
                            let a: __m512bh =
                                std::mem::transmute(_mm512_maskz_loadu_epi16(mask, row(i).add(full).cast()));
                            for q in 0..COLS {
                                acc[q] = _mm512_dpbf16_ps(acc[q], a, b[q]);
                            }
                        }
                    }
                    for (i, &acc) in acc.iter().enumerate() {
                        for (q, &sum) in lane_sums(acc)[..cols].iter().enumerate() {
                            self.c.ptr.add(i * self.c.rs + j + q).write(self.alpha * sum);
                        }
                    }
                }
            }
        }
    }
}
