//! CPU GEMM fast path: `C = alpha·A·B + beta·C` for f32 ([`sgemm`]), f64 ([`dgemm`]) and bf16
//! operands with an f32 result ([`bgemm`]) on arbitrarily strided operands (row-major, column-major, transposed and padded views need
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
//!       pack A[ic.., pc..] (MR×KC)       into one micro-panel; stays in L1 (or read in place)
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
//! row-major A alone cost ~12% of the run time. Packing a column-major A (`dYᵀ` in a Linear's
//! `dW = dYᵀ·X`) or a row-major B (`W` in `dX = dY·W`, `X` in `dW`) is a copy of MR or NR
//! contiguous elements per step of k; the SIMD paths copy them with vector loads and stores
//! (masked at a line's end) rather than a `memcpy` call per 48 or 128 bytes, whose call cost as
//! much as the copy (~3% of such a product's samples). Packing buffers are 64-byte aligned and
//! cached per thread. When A is too large for L2 (1 MiB or more of the thread's slab), each row
//! panel prefetches the source lines of the next A micro-panel, a share per tile, so that packing
//! it does not wait on memory line by line (the LM head's `dX = dlogits·wte` packs 12 rows of
//! `dlogits` 200 KB apart per micro-panel).
//!
//! # Operands read in place
//!
//! The f32 and f64 SIMD kernels (not the bf16 ones, whose steps interleave pairs of k) also
//! read A, and sometimes B, where they lie (`driver::InPlace`). The tile broadcasts Ã one value
//! at a time, so it can read the 12 values of a step from 12 rows of a row-major A (a row
//! stride apart) or from a column of a column-major one as well as from a packed micro-panel:
//! every tile with all MR rows reads a row-major A in place, and a column-major one when its
//! steps lie at most a page apart (not a `dW` whose `dY` is 3072 or 50257 wide) and its row
//! panels run at most 8 tiles (beyond that the steps' lines, a column stride apart, crowd a few
//! of L1's sets and evict each other between tiles: GPT-2's 768×3072×512 `dW` 14% slower in
//! place). The tile reads a row-major A's 12 values of a step through three row pointers and
//! addressing modes, not a chain of adds. A row-major B's micro-panels are read from its rows
//! when the slab has at most 8 row panels (the attention's 64-row tiles: the pass that packs B
//! costs more than the few tiles that read it save). Same multiply-adds in the same order, so
//! the same bits. On nanoGPT's products (K = 128 to 768, N = 128 to 512: 4 to 16 tiles per A
//! micro-panel) and the attention's tiles, packing was a fifth of the GEMMs' time; reading in
//! place made nanoGPT's GEMMs 5–6.5% faster and GPT-2's 0–1.4% (docs/perf.md).
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
//! independent FMAs per step (two FMA ports × 4-cycle latency needs 8) and 8 loads.
//! Tiles on C's edges run copies of the loop that skip the padding: at most 4 or 8 rows (the
//! attention's 64-row tiles end in a tile of 4 rows) with 4 or 8 rows of accumulators, at most
//! LANES columns with one vector a row, each element of C getting the same FMAs in the same
//! order (same bits). The
//! kernel is chosen at run time (`is_x86_feature_detected!`): AVX-512F, else AVX2 + FMA (e.g.
//! AMD Zen 2/3, Intel before Skylake-X), else `Portable`, the same driver with a small
//! autovectorised micro-kernel (SSE2 on a plain x86-64 build, which is what every x86 CPU
//! without AVX-512 ran before the AVX2 kernel existed).
//!
//! # bf16 operands: `vdpbf16ps` ([`bgemm`])
//!
//! When A and B are both bf16 (a bf16 model's Linear layers, forward and backward: `matmul.rs`
//! sends every bf16 × bf16 product of more than [`STREAM_MAX_M`] rows here), the same driver runs
//! with bf16 packing buffers and, on a CPU with AVX-512 BF16 ([`has_bf16_dot`]), the
//! `avx512bf16.rs` micro-kernel: a 12×32 f32 tile like the f32 kernel's, each instruction
//! (`vdpbf16ps`) multiplying a pair of bf16 along k in each of 16 lanes and adding both products
//! to the f32 accumulator, so packing interleaves k in pairs (Ã as (kc/2, MR, 2), B̃ as
//! (kc/2, NR, 2), an odd k padded with a zero step; the kernel's `K_STEP` is 2, and the driver
//! blocks k in multiples of it). KC is 512: the panels hold as many bytes as the f32 kernel's.
//! Packing reads half the bytes and there is no f32 copy of either operand. Where the CPU lacks
//! AVX-512 BF16, [`bgemm`] runs the portable kernel on bf16 panels, and `matmul.rs` keeps
//! widening to f32 for the f32 kernels instead.
//!
//! # bf16 operands on AMX tiles: `tdpbf16ps` ([`Bf16Isa::Amx`])
//!
//! Where the CPU has AMX-BF16 and the OS grants the tile state (Sapphire Rapids and later on
//! Linux; `backend/cpu/amx.rs` holds the detection, permission request and tile configuration
//! shared with the quantized formats' AMX-INT8 GEMM), [`bgemm`] runs products of at least
//! [`AMX_MIN_ROWS`] rows of C on the `amx_bf16.rs` kernel, in the same driver: a 32×32 block of
//! C in four 16×16 f32 tiles; per step of 32 along k, two A tiles (16 rows × 32 bf16) and two B
//! tiles (16 pair rows × 16 columns × 2 bf16, B̃'s pair layout with NR = 32) loaded, four
//! `tdpbf16ps` (8192 multiply-adds each) issued, so each tile load feeds two products:
//!
//! ```text
//! Ã: (kc'/32, 32, 32)  ã[(t·32 + i)·32 + e] = A[i, 32t + e]    A tile = 16 rows at stride 64 B
//! B̃: (kc'/2, 32, 2)    b̃[(q·32 + j)·2 + h] = B[2q + h, j]     B tile = 16 rows at stride 128 B
//! ```
//!
//! k is blocked and padded in steps of 32 (`K_STEP`), rows and columns to the block, all with
//! zeros, so the tile loop has no edge cases; the f32 block is stored from the tiles and written
//! back by AVX-512 with alpha, beta and the edge masks. Per step: 4 KiB loaded for 65536 flops;
//! `tdpbf16ps` issues every 16 cycles (about 1024 flops a cycle, 8× `vdpbf16ps`), so packing,
//! once per block, weighs more here than for the vector kernels. Every layout a Linear's
//! products use packs with vector code: Ã by copy (row-major A: `x`, `dY`) or pair interleave and
//! transpose (column-major A: `dYᵀ` in `dW = dYᵀ·X`), B̃ as for `vdpbf16ps` (`Wᵀ` in `x·Wᵀ`,
//! `W` in `dX = dY·W`, `X` in `dW`). The numerics are `vdpbf16ps`'s (subnormals flushed, NaN and
//! infinities propagated). [`bgemm_on`] runs a chosen [`Bf16Isa`] (tests, benchmarks).
//!
//! The result is that of [`sgemm`] on the operands widened to f32, up to the order of the f32
//! additions: a product of two bf16 is exact in f32, and `vdpbf16ps` rounds each accumulation to
//! nearest even. It ignores MXCSR: subnormal inputs (below 2⁻¹²⁶) are read as zero and subnormal
//! results flushed to zero (Intel SDM, VDPBF16PS). The tests hold it to the f32 kernels' bound
//! against an f64 reference. An f32 A against a bf16 B (`streamed.rs`) is not rounded to bf16 to
//! use this kernel: that would change the product of an op whose contract is f32 activations.
//!
//! # Products of a few rows: B streamed, not packed
//!
//! With at most [`STREAM_MAX_M`] rows of A (decoding one token), each element of B is used that
//! many times: the product runs at the speed memory delivers B, and packing B (a copy written
//! and read again) would cost more than the product. [`sgemm`] hands such products, when A's
//! and C's rows are contiguous and B is contiguous along its rows or columns, to
//! [`sgemm_streamed`] (`streamed.rs`), which reads B once, in place, and also takes a bf16 B,
//! widened in registers.
//!
//! # Metering (`meter.rs`)
//!
//! [`meter_start`] and [`meter_stop`] count the packed products (everything through the driver,
//! not the streamed path) per shape: calls, `2·m·n·k` FLOPs, core time (wall time on the calling
//! thread plus the time its slabs ran on other threads) and thread CPU time. Off, the meter costs a
//! relaxed atomic load per call. `kiln bench --kernels gpt` meters two extra training steps with it
//! and holds the GEMMs against [`fma_peak`], a loop of independent FMAs on every thread
//! (docs/perf.md, `kiln bench`).
//!
//! # Threads
//!
//! Products of at least `driver::PAR_FLOPS_PER_THREAD` flops per thread run on rayon's global pool:
//! C is cut into one disjoint slab per thread (columns, or rows when that balances better)
//! and each thread runs the whole blocked algorithm on its slab with its own thread-local
//! packing buffers, so no synchronisation is needed. Smaller products stay on the calling
//! thread. The slabs give C the bits of one thread's product.
//!
//! A long product (k at least `driver::LONG_K_RATIO` = 8 times m and n, and two threads' worth of
//! flops: the LM head's `dX = dlogits·wte`, k = the vocabulary) is cut in two along k instead: the
//! first half into C (with beta), the second into a per-thread scratch matrix (beta 0), each half
//! on half the threads, then the scratch added to C (a band of rows per thread). Cutting C into
//! columns would make each thread pack all of A (`dlogits`, 103 MB at GPT-2's 2 × 256) for half of
//! C's width; halves of k pack A and B once between them. So is a product with k at least twice m
//! and n whose smaller operand (`min(m, n)·k` elements) is 4 MiB or more (`SHARED_K_RATIO`,
//! `SHARED_PACK_BYTES`): GPT-2's products into 768 columns with k = 3072 or 2304 at 2 × 256, where
//! two column slabs of 384 made each thread pack all of a 512×3072 A from L3 for 12 tiles per A
//! micro-panel. The cut depends on the shape only, never on the number of threads (on
//! one thread the halves run one after the other), so the bits do not depend on the pool; they
//! differ from one pass over k in rounding only (two partial sums added).

#![deny(unsafe_op_in_unsafe_fn)]

// First: its `simd_kernel!` macro is used by the kernels declared after it.
#[cfg(target_arch = "x86_64")]
#[macro_use]
mod simd;

#[cfg(target_arch = "x86_64")]
mod amx_bf16;
#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
#[cfg(target_arch = "x86_64")]
mod avx512bf16;
mod driver;
mod kernel;
mod matrix;
mod meter;
mod pack;
mod portable;
mod streamed;
#[cfg(test)]
mod tests;

use driver::run;
use half::bf16;
use matrix::Problem;
pub use matrix::{Format, Streamed};
pub use meter::{meter_start, meter_stop, GemmRecord, GemmShape, Order};
use portable::Portable;
use std::mem::MaybeUninit;
pub(crate) use streamed::{
    bgemm_streamed_into, bgemm_streamed_many_into, sgemm_streamed_into, sgemm_streamed_many_into,
};
pub use streamed::{sgemm_streamed, streams, STREAM_MAX_M};

/// `C = alpha·A·B + beta·C` for f32. Products of at most [`STREAM_MAX_M`] rows whose strides
/// allow it ([`streams`]) stream B instead of packing it ([`sgemm_streamed`]).
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
    if streams(m, csa, [rsb, csb], csc) {
        return sgemm_streamed(m, n, k, alpha, a, rsa, csa, b, rsb, csb, beta, c, rsc, csc);
    }
    run_f32(Problem::new(
        [m, n, k],
        alpha,
        (a, rsa, csa),
        (b, rsb, csb),
        beta,
        (c, rsc, csc),
    ));
}

/// [`sgemm`] with beta 0 into a C that may be uninitialised (a new output): every element of
/// its `m×n` view is written (`C = alpha·A·B`), none read, so it needs no zeroing first. The
/// layout, special cases and panics are [`sgemm`]'s (`k == 0` writes zeros).
#[allow(clippy::too_many_arguments)] // the BLAS signature
pub(crate) fn sgemm_into(
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
    c: &mut [MaybeUninit<f32>],
    rsc: isize,
    csc: isize,
) {
    if streams(m, csa, [rsb, csb], csc) {
        return sgemm_streamed_into(m, n, k, alpha, a, rsa, csa, b, rsb, csb, c, rsc, csc);
    }
    run_f32(Problem::new_into(
        [m, n, k],
        alpha,
        (a, rsa, csa),
        (b, rsb, csb),
        (c, rsc, csc),
    ));
}

/// Runs an f32 product on the fastest kernel this CPU has.
fn run_f32(problem: Problem<f32>) {
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
    run_f64(Problem::new(
        [m, n, k],
        alpha,
        (a, rsa, csa),
        (b, rsb, csb),
        beta,
        (c, rsc, csc),
    ));
}

/// [`dgemm`] with beta 0 into a C that may be uninitialised; see [`sgemm_into`].
#[allow(clippy::too_many_arguments)] // the BLAS signature
pub(crate) fn dgemm_into(
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
    c: &mut [MaybeUninit<f64>],
    rsc: isize,
    csc: isize,
) {
    run_f64(Problem::new_into(
        [m, n, k],
        alpha,
        (a, rsa, csa),
        (b, rsb, csb),
        (c, rsc, csc),
    ));
}

/// Runs an f64 product on the fastest kernel this CPU has.
fn run_f64(problem: Problem<f64>) {
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

/// `C = alpha·A·B + beta·C` for bf16 A and B and an f32 C, accumulated in f32; the layout and
/// special cases are [`sgemm`]'s. The products of bf16 values are exact in f32, so the result is
/// [`sgemm`]'s on the operands widened to f32 up to the order of the f32 sums (and, with
/// `vdpbf16ps` or AMX, values below f32's normal range flushed to zero; see `avx512bf16.rs`).
/// Runs on the fastest [`Bf16Isa`] this CPU has: AMX tile products for a C of at least
/// [`AMX_MIN_ROWS`] rows, else `vdpbf16ps` (AVX-512 BF16: twice the f32 kernel's multiply-adds
/// per instruction and half its bytes per packed element), else the portable kernel, widening
/// as it reads (callers with a fast f32 kernel should widen to f32 and call [`sgemm`] there, as
/// `matmul.rs` does).
///
/// # Panics
///
/// If a stride is negative, an operand does not fit in its slice or C's strides overlap.
#[allow(clippy::too_many_arguments)] // the BLAS signature
pub fn bgemm(
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: &[bf16],
    rsa: isize,
    csa: isize,
    b: &[bf16],
    rsb: isize,
    csb: isize,
    beta: f32,
    c: &mut [f32],
    rsc: isize,
    csc: isize,
) {
    let isa = bf16_isa_for(m, n, rsc, csc);
    bgemm_on(isa, m, n, k, alpha, a, rsa, csa, b, rsb, csb, beta, c, rsc, csc);
}

/// [`bgemm`] with beta 0 into a C that may be uninitialised; see [`sgemm_into`].
#[allow(clippy::too_many_arguments)] // the BLAS signature
pub(crate) fn bgemm_into(
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: &[bf16],
    rsa: isize,
    csa: isize,
    b: &[bf16],
    rsb: isize,
    csb: isize,
    c: &mut [MaybeUninit<f32>],
    rsc: isize,
    csc: isize,
) {
    let isa = bf16_isa_for(m, n, rsc, csc);
    run_bf16(
        isa,
        Problem::new_into([m, n, k], alpha, (a, rsa, csa), (b, rsb, csb), (c, rsc, csc)),
    );
}

/// The fastest [`Bf16Isa`] for an `m×n` C with these strides: AMX from [`AMX_MIN_ROWS`] rows.
fn bf16_isa_for(m: usize, n: usize, rsc: isize, csc: isize) -> Bf16Isa {
    // the rows of C the kernel sees: the driver transposes a column-major C
    let rows = if csc != 1 && rsc == 1 { n } else { m };
    [Bf16Isa::Amx, Bf16Isa::Avx512Bf16, Bf16Isa::Portable]
        .into_iter()
        .find(|&isa| isa.is_supported() && (isa != Bf16Isa::Amx || rows >= AMX_MIN_ROWS))
        .unwrap_or(Bf16Isa::Portable)
}

/// Rows of C from which [`bgemm`] runs on AMX: one A tile. Below it most of each tile product
/// multiplies padding, and `vdpbf16ps`'s 12-row tiles waste less.
pub const AMX_MIN_ROWS: usize = 16;

/// The instruction set [`bgemm_on`] runs a bf16 product on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bf16Isa {
    /// The portable kernel, widening bf16 to f32 as it reads the packed panels; runs everywhere.
    Portable,
    /// AVX-512 BF16's `vdpbf16ps` on a 12×32 register tile (with AVX-512 F/BW/VL: Cooper Lake,
    /// Sapphire Rapids, Zen 4).
    Avx512Bf16,
    /// AMX-BF16's `tdpbf16ps` on a 32×32 block of four tiles, packed with `Avx512Bf16`'s
    /// instructions (Sapphire Rapids and later, on Linux when the kernel grants the tile state).
    Amx,
}

impl Bf16Isa {
    /// Every instruction set, slowest first.
    pub const ALL: [Bf16Isa; 3] = [Bf16Isa::Portable, Bf16Isa::Avx512Bf16, Bf16Isa::Amx];

    /// Whether this CPU (and, for AMX, the OS) runs `self`.
    pub fn is_supported(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            match self {
                Bf16Isa::Portable => true,
                Bf16Isa::Avx512Bf16 => avx512bf16::supported(),
                Bf16Isa::Amx => amx_bf16::supported(),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            self == Bf16Isa::Portable
        }
    }
}

/// [`bgemm`] on the instruction set `isa`, whatever the shape.
///
/// # Panics
///
/// As [`bgemm`], and if this CPU does not run `isa` ([`Bf16Isa::is_supported`]).
#[allow(clippy::too_many_arguments)] // the BLAS signature
pub fn bgemm_on(
    isa: Bf16Isa,
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: &[bf16],
    rsa: isize,
    csa: isize,
    b: &[bf16],
    rsb: isize,
    csb: isize,
    beta: f32,
    c: &mut [f32],
    rsc: isize,
    csc: isize,
) {
    run_bf16(
        isa,
        Problem::new([m, n, k], alpha, (a, rsa, csa), (b, rsb, csb), beta, (c, rsc, csc)),
    );
}

/// Runs a bf16 product on `isa`; panics if this CPU does not run it.
fn run_bf16(isa: Bf16Isa, problem: Problem<f32, bf16>) {
    assert!(isa.is_supported(), "bgemm: this CPU does not run {isa:?}");
    match isa {
        #[cfg(target_arch = "x86_64")]
        Bf16Isa::Amx => run::<amx_bf16::AmxBf16>(problem),
        #[cfg(target_arch = "x86_64")]
        Bf16Isa::Avx512Bf16 => run::<avx512bf16::Bf16Dot>(problem),
        _ => run::<Portable<f32, 4, 8, bf16>>(problem),
    }
}

/// Whether [`bgemm`] runs on `vdpbf16ps` or AMX here (AVX-512 BF16, with AVX-512 F/BW/VL).
pub fn has_bf16_dot() -> bool {
    Bf16Isa::Avx512Bf16.is_supported()
}

/// Whether the CPU has AVX2 and FMA (the [`avx2`] kernel's instruction sets).
#[cfg(target_arch = "x86_64")]
pub(crate) fn avx2_fma() -> bool {
    std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
}

/// The f32 FMA peak of this machine in FLOP/s, measured: every thread of rayon's pool runs a loop
/// of independent fused multiply-adds on the f32 kernel's vectors (AVX-512F, else AVX2 + FMA) for
/// about `seconds`, in rounds of 2¹⁶ iterations; the result is the sum of the threads' rates (each
/// thread's flops over its own time, the best of its rounds). None where the f32 GEMM has no FMA
/// kernel (the portable one). A GEMM can at best reach it; `kiln bench` holds the GEMMs of a
/// training step against it.
pub fn fma_peak(seconds: f64) -> Option<f64> {
    #[cfg(target_arch = "x86_64")]
    {
        type Loop = unsafe fn(usize, f32) -> f32;
        let (fma_loop, lanes): (Loop, usize) = if std::arch::is_x86_feature_detected!("avx512f") {
            (avx512::fma_loop, 16)
        } else if avx2_fma() {
            (avx2::fma_loop, 8)
        } else {
            return None;
        };
        const ITERS: usize = 1 << 16;
        let flops = (ITERS * simd::FMA_CHAINS * lanes * 2) as f64;
        let rates = rayon::broadcast(|_| {
            let start = std::time::Instant::now();
            let mut best = 0f64;
            while best <= 0.0 || start.elapsed().as_secs_f64() < seconds {
                let round = std::time::Instant::now();
                // SAFETY: the instruction set was detected above.
                std::hint::black_box(unsafe { fma_loop(ITERS, std::hint::black_box(1e-3)) });
                best = best.max(flops / round.elapsed().as_secs_f64().max(1e-9));
            }
            best
        });
        Some(rates.iter().sum())
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = seconds;
        None
    }
}
