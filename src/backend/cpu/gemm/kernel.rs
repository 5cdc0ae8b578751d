//! The interface of a micro-kernel: its register tile, its block sizes, and its packing.

use super::matrix::{Element, Epilogue, MatMut, MatRef};

/// Where a tile reads an operand's micro-panel: step p's values (MR of Ã, NR of B̃) at `ptr +
/// p·step + i·lane` for value i. Packed, that is `step` MR or NR and `lane` 1; read where it
/// lies, a column-major A has `step` its column stride and `lane` 1, a row-major A `step` 1 and
/// `lane` its row stride, a row-major B `step` its row stride and `lane` 1.
#[derive(Clone, Copy)]
pub(super) struct Panel<I> {
    pub(super) ptr: *const I,
    pub(super) step: usize,
    pub(super) lane: usize,
}

/// [`Kernel::tile`] over [`Panel`]s: `tile(kc, a, b, c, mr, nr, ep)`, B̃'s `lane` 1.
///
/// # Safety
///
/// As for [`Kernel::tile`], with the values of every step `p < kc` readable (`i < MR` of Ã,
/// `i < NR` of B̃).
pub(super) type InPlaceTile<T, I> = unsafe fn(usize, Panel<I>, Panel<I>, MatMut<T>, usize, usize, &Epilogue<T>);

/// A micro-kernel and the block sizes the driver uses with it.
pub(super) trait Kernel: Sized {
    /// The type of C and of the accumulators.
    type T: Element;
    /// The type of A's and B's elements, and of their packed panels: `T`, or bf16 for f32.
    type In: Element;
    /// Rows of the register tile (A micro-panel height).
    const MR: usize;
    /// Columns of the register tile (B micro-panel width).
    const NR: usize;
    /// Block of the shared dimension: the A micro-panel (MR·KC) should stay in L1.
    const KC: usize;
    /// Block of C's columns, a multiple of NR: the B block (KC·NC) should stay in L2.
    const NC: usize;
    /// Steps of the shared dimension the kernel takes at once from each packed row (2 for
    /// `vdpbf16ps`, which multiplies pairs); packed panels hold `round_up(kc, K_STEP)` steps,
    /// the padding zero, and every k block but the last is a multiple of it.
    const K_STEP: usize;

    /// Writes `alpha·Ã·B̃ + beta·C` to the top-left `mr×nr` corner of the MR×NR tile at `c`.
    /// `ep` comes by reference: by value, its two floats arrive in vector registers that stay
    /// live across the k loop, and the AVX2 kernel (15 of 16 ymm registers in that loop) then
    /// kept one accumulator on the stack, a store and a reload per FMA.
    ///
    /// # Safety
    ///
    /// `a` and `b` point to `kc'·MR` and `kc'·NR` readable elements (`kc' = round_up(kc, K_STEP)`), `mr <= MR`, `nr <= NR`,
    /// the `mr×nr` view `c` is valid for writes (and for reads of initialised values when
    /// `ep.beta` is not 0) and not accessed concurrently, the
    /// CPU supports the kernel's target features, and the call is inside
    /// [`Kernel::with_thread_state`] on this thread (as are the packing calls).
    unsafe fn tile(
        kc: usize,
        a: *const Self::In,
        b: *const Self::In,
        c: MatMut<Self::T>,
        mr: usize,
        nr: usize,
        ep: &Epilogue<Self::T>,
    );

    /// The micro-kernel over operands read where they lie, for kernels that have one (the f32
    /// and f64 SIMD kernels, one value per step and lane: see [`InPlaceTile`]); the driver packs
    /// for the others.
    const TILE_IN_PLACE: Option<InPlaceTile<Self::T, Self::In>> = None;

    /// Packs an A micro-panel as [`super::pack::pack_a`] does (which the portable kernel calls;
    /// the SIMD kernels transpose in registers).
    ///
    /// # Safety
    ///
    /// As for [`super::pack::pack_a`], and the CPU supports the kernel's target features.
    unsafe fn pack_a(mr: usize, kc: usize, a: MatRef<Self::In>, dst: &mut [Self::In]);

    /// Packs a B block as [`super::pack::pack_b`] does.
    ///
    /// # Safety
    ///
    /// As for [`super::pack::pack_b`], and the CPU supports the kernel's target features.
    unsafe fn pack_b(kc: usize, nc: usize, b: MatRef<Self::In>, dst: &mut [Self::In]);

    /// Runs `f` (one thread's share of a product: all its packing and tiles) inside the
    /// per-thread state the kernel needs, by default none (AMX: the tile configuration, loaded
    /// before and released after).
    ///
    /// # Safety
    ///
    /// The CPU supports the kernel's target features.
    unsafe fn with_thread_state<R>(f: impl FnOnce() -> R) -> R {
        f()
    }
}
