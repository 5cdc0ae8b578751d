//! The x86-64 micro-kernel and packing transposes, written once over a [`Vector`] (the
//! handful of vector operations they need) and compiled for each instruction set by thin
//! `#[target_feature]` wrappers in [`super::avx512`] and [`super::avx2`]: the generic bodies are
//! `#[inline(always)]`, so each wrapper gets its own copy built with its ISA's registers.

use super::kernel::{Kernel, Panel};
use super::matrix::{Element, Epilogue, MatMut, MatRef, Streamed};
use super::pack::prefetch;
use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};

/// Steps of the shared dimension between prefetching a row of B̃ and reading it.
pub(super) const PREFETCH_STEPS: usize = 8;

/// Groups of four rows in the largest register tile (12 rows): [`tile`]'s row pointers when it
/// reads a row-major A in place.
const MAX_ROW_GROUPS: usize = 3;

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
pub(super) unsafe fn pack_a<K: Kernel<In = V::E>, V: Vector>(
    mr: usize,
    kc: usize,
    a: MatRef<K::In>,
    dst: &mut [K::In],
) {
    let dst = &mut dst[..kc * K::MR];
    if a.cs == 1 {
        // SAFETY: rows 0..mr of `a` hold kc contiguous elements (cs == 1), dst holds kc
        // rows of MR, and the caller checked the instruction set.
        unsafe { transpose_rows::<V>(a.ptr, a.rs, mr, kc, dst.as_mut_ptr(), K::MR) }
    } else if a.rs == 1 {
        // Column-major A (a transposed operand: dYᵀ in a Linear's dW = dYᵀ·X): each step's mr
        // values are contiguous.
        // SAFETY: columns 0..kc of `a` hold mr contiguous elements (rs == 1), dst holds kc rows
        // of MR, and the caller checked the instruction set.
        unsafe { copy_lines::<V>(a.ptr, a.cs, mr, kc, dst.as_mut_ptr(), K::MR) }
    } else {
        // SAFETY: forwarded contract.
        unsafe { super::pack::pack_a::<K>(mr, kc, a, dst) }
    }
}

/// [`Kernel::pack_b`] for a kernel on `V`: a column-major B panel is a transpose, done in
/// LANES×LANES register blocks.
///
/// # Safety
///
/// As for [`super::pack_b`], and the CPU supports `V`'s instruction set.
#[inline(always)]
pub(super) unsafe fn pack_b<K: Kernel<In = V::E>, V: Vector>(
    kc: usize,
    nc: usize,
    b: MatRef<K::In>,
    dst: &mut [K::In],
) {
    if b.cs != 1 && b.rs != 1 {
        // SAFETY: forwarded contract.
        return unsafe { super::pack::pack_b::<K>(kc, nc, b, dst) };
    }
    for (j0, panel) in (0..nc).step_by(K::NR).zip(dst.chunks_exact_mut(kc * K::NR)) {
        let nr = K::NR.min(nc - j0);
        // SAFETY: (0, j0) is an element of `b`; with cs == 1 rows 0..kc hold nr contiguous
        // elements from column j0, with rs == 1 columns j0..j0 + nr hold kc contiguous elements;
        // the panel holds kc rows of NR, and the caller checked the instruction set.
        unsafe {
            let src = b.at(0, j0).ptr;
            if b.cs == 1 {
                // row-major B (W in a Linear's dX = dY·W, X in dW = dYᵀ·X): a copy
                copy_lines::<V>(src, b.rs, nr, kc, panel.as_mut_ptr(), K::NR);
            } else {
                // column-major B (Wᵀ in a Linear's forward x·Wᵀ): a transpose
                transpose_rows::<V>(src, b.cs, nr, kc, panel.as_mut_ptr(), K::NR);
            }
        }
    }
}

/// Copies `len` lines of `lanes` contiguous elements, starting `src_stride` apart at `src`, to
/// the contiguous `len×width` matrix at `dst` (`width >= lanes`), zero-padding each line from
/// `lanes` to `width`: `dst[p·width + r] = src[p·src_stride + r]` for `r < lanes`. By vectors,
/// masked where a line's valid elements end; a store runs whole past the end of its line
/// (into lines written after it) wherever it stays inside `dst`. This replaces a `memcpy` call
/// per line (48 bytes of a column-major A, 128 of a row-major B for the f32 AVX-512 kernel),
/// whose call cost about as much as the copy.
///
/// # Safety
///
/// The CPU supports `V`'s instruction set; each source line is readable for `lanes` elements,
/// and `dst` is writable for `len·width` elements.
#[inline(always)]
unsafe fn copy_lines<V: Vector>(
    src: *const V::E,
    src_stride: usize,
    lanes: usize,
    len: usize,
    dst: *mut V::E,
    width: usize,
) {
    let end = len * width;
    for p in 0..len {
        let line = src.wrapping_add(p * src_stride);
        for off in (0..width).step_by(V::LANES) {
            let read = lanes.saturating_sub(off).min(V::LANES);
            let at = p * width + off;
            // SAFETY: the instruction set is supported; a full load reads elements off..off +
            // LANES <= lanes of the line, a partial one only its first `read` (masked); a full
            // store writes dst[at..at + LANES] inside dst[..end], a partial one dst[at..at +
            // width - off], the rest of this line.
            unsafe {
                let v = match read {
                    0 => V::zero(),
                    r if r == V::LANES => V::load(line.add(off)),
                    r => V::load_first(line.add(off), r),
                };
                if at + V::LANES <= end {
                    V::store(dst.add(at), v);
                } else {
                    V::store_first(dst.add(at), v, (width - off).min(V::LANES));
                }
            }
        }
    }
}

/// How far ahead of the block it transposes [`transpose_rows`] asks for each source row's lines:
/// 128 bytes, two lines. A transposing pack reads 16 rows a line at a time, more streams than the
/// hardware prefetcher follows when the rows come from memory (a Linear's weight in the forward
/// `x·Wᵀ`, the LM head's token table). Measured on GPT-2's shapes, f32, 2 threads (docs/perf.md):
/// the 512×50257×768 LM head 3.3–3.4% faster alone, ~2.5% in the training step, the other forward
/// products about 1%. (The bf16 kernel's pair packing measured no difference and has none.)
const TRANSPOSE_AHEAD_BYTES: usize = 128;

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
            for i in 0..block_rows {
                prefetch(src.wrapping_add((r0 + i) * src_stride + p + TRANSPOSE_AHEAD_BYTES / size_of::<V::E>()));
            }
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

/// The micro-kernel (contract of [`super::kernel::InPlaceTile`], with `MR` rows and NR =
/// 2·LANES): MR rows × 2 vectors of accumulators. Each step of the shared dimension loads 2
/// vectors of B̃, broadcasts the MR values of Ã and issues 2·MR independent FMAs. `STRIDED_A`:
/// Ã's values of a step lie `a.lane` apart (a row-major A read in place); else `a.lane` is 1, a
/// constant the loop's addresses fold in.
///
/// A tile at C's edges runs a copy of the loop without the padding's FMAs: at most 4 or 8 rows
/// (the bottom edge: 64 rows are five tiles of 12 and one of 4) with 4 or 8 rows of
/// accumulators, at most LANES columns (the right edge: nanoGPT's 65-token vocabulary) with one
/// vector per row. 8 or more independent FMAs a step still cover the two FMA units' latency.
/// Each element of C gets the same FMAs in the same order as in the full tile, so the bits do
/// not change.
///
/// # Safety
///
/// As for [`Kernel::tile`], and the CPU supports `V`'s instruction set.
#[inline(always)]
pub(super) unsafe fn tile<V: Vector, const MR: usize, const STRIDED_A: bool>(
    kc: usize,
    a: Panel<V::E>,
    b: Panel<V::E>,
    c: MatMut<V::E>,
    mr: usize,
    nr: usize,
    ep: &Epilogue<V::E>,
) {
    // SAFETY: forwarded contract.
    unsafe {
        if nr <= V::LANES {
            tile_rows::<V, MR, 1, STRIDED_A>(kc, a, b, c, mr, nr, ep)
        } else {
            tile_rows::<V, MR, 2, STRIDED_A>(kc, a, b, c, mr, nr, ep)
        }
    }
}

/// [`tile`] with `VECS` vectors of accumulators a row (`nr <= VECS·LANES`): picks the rows.
///
/// # Safety
///
/// As for [`tile`], and `nr <= VECS·LANES`.
#[inline(always)]
unsafe fn tile_rows<V: Vector, const MR: usize, const VECS: usize, const STRIDED_A: bool>(
    kc: usize,
    a: Panel<V::E>,
    b: Panel<V::E>,
    c: MatMut<V::E>,
    mr: usize,
    nr: usize,
    ep: &Epilogue<V::E>,
) {
    // SAFETY: forwarded contract; each copy reads the first ROWS <= MR values of Ã's steps and
    // writes mr <= ROWS rows of C.
    unsafe {
        if MR > 4 && mr <= 4 {
            tile_loop::<V, 4, VECS, STRIDED_A>(kc, a, b, c, mr, nr, ep)
        } else if MR > 8 && mr <= 8 {
            tile_loop::<V, 8, VECS, STRIDED_A>(kc, a, b, c, mr, nr, ep)
        } else {
            tile_loop::<V, MR, VECS, STRIDED_A>(kc, a, b, c, mr, nr, ep)
        }
    }
}

/// [`tile`]'s loop with `ROWS × VECS` vectors of accumulators (`mr <= ROWS <= MR`, `nr <=
/// VECS·LANES`, VECS 1 or 2): step p reads Ã's first ROWS values and B̃'s first VECS vectors.
///
/// # Safety
///
/// As for [`tile`], `mr <= ROWS <= MR` and `nr <= VECS·LANES <= 2·LANES`.
#[inline(always)]
unsafe fn tile_loop<V: Vector, const ROWS: usize, const VECS: usize, const STRIDED_A: bool>(
    kc: usize,
    a: Panel<V::E>,
    b: Panel<V::E>,
    c: MatMut<V::E>,
    mr: usize,
    nr: usize,
    ep: &Epilogue<V::E>,
) {
    // SAFETY: the instruction set is supported (caller's contract); step p reads the first ROWS
    // values of Ã's step and the first VECS·LANES of B̃'s, readable by the contract. Prefetches
    // never fault, and their addresses are computed with wrapping arithmetic.
    let acc = unsafe {
        prefetch_tile(c, mr, nr);
        const { assert!(ROWS <= 4 * MAX_ROW_GROUPS) };
        let mut acc = [[V::zero(); VECS]; ROWS];
        // Strided Ã: row i of a step is read at `rows[i / 4] + (i % 4)·lane`, an addressing
        // mode over a row pointer per four rows (three for 12), each stepped once a step (lane,
        // 2·lane, 3·lane stay in registers). Left to itself LLVM folds the pointers into one and rebuilds the rows'
        // addresses with a chain of adds every step (a dozen integer µops that compete with the
        // FMAs for ports: row-major products 4% slower than over packed panels on an Intel
        // Xeon); the empty `asm!` hides each pointer's provenance from that rewrite.
        let mut rows = [a.ptr; MAX_ROW_GROUPS];
        for (g, row) in rows.iter_mut().enumerate() {
            *row = a.ptr.wrapping_add(4 * g * a.lane);
        }
        for p in 0..kc {
            let a_p = a.ptr.add(p * a.step);
            let b_p = b.ptr.add(p * b.step);
            // B̃ streams from L2; Ã (reused by every tile of the block) stays in L1.
            let ahead = b_p.wrapping_add(PREFETCH_STEPS * b.step);
            _mm_prefetch::<_MM_HINT_T0>(ahead.cast());
            if VECS == 2 && 2 * V::LANES * size_of::<V::E>() > 64 {
                // a step of B̃ spans two cache lines (AVX-512); AVX2's fills one
                _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(V::LANES).cast());
            }
            let mut bv = [V::zero(); VECS];
            for (v, bv) in bv.iter_mut().enumerate() {
                *bv = V::load(b_p.add(v * V::LANES));
            }
            for (i, acc_i) in acc.iter_mut().enumerate() {
                let a_pi = if STRIDED_A {
                    V::splat(*rows[i / 4].add(i % 4 * a.lane))
                } else {
                    V::splat(*a_p.add(i))
                };
                for (acc_iv, &bv) in acc_i.iter_mut().zip(&bv) {
                    *acc_iv = V::fmadd(a_pi, bv, *acc_iv);
                }
            }
            if STRIDED_A {
                for row in rows.iter_mut().take(ROWS.div_ceil(4)) {
                    *row = row.wrapping_add(a.step);
                    // SAFETY: an empty template: it touches only the register that holds the
                    // pointer, and leaves it as it is (`readonly`, not `nomem`: it is a pointer).
                    core::arch::asm!(
                        "/* {0} */",
                        inout(reg) * row,
                        options(pure, readonly, nostack, preserves_flags)
                    );
                }
            }
        }
        acc
    };

    // SAFETY: forwarded contract (mr <= ROWS, nr <= VECS·LANES).
    unsafe {
        // write_back's two vectors a row; a one-vector tile's second is never stored
        let mut rows = [[V::zero(); 2]; ROWS];
        for (row, acc_i) in rows.iter_mut().zip(&acc) {
            row[..VECS].copy_from_slice(acc_i);
        }
        write_back::<V, ROWS>(&rows, c, mr, nr, ep)
    }
}

/// Starts fetching the `mr×nr` tile of C (two lines per row, when its rows are contiguous), so
/// that it is in L1 for the update after the k loop.
#[inline(always)]
pub(super) fn prefetch_tile<E>(c: MatMut<E>, mr: usize, nr: usize) {
    if c.cs == 1 {
        for i in 0..mr {
            let row = c.ptr.wrapping_add(i * c.rs);
            // SAFETY: prefetches never fault; the addresses use wrapping arithmetic.
            unsafe {
                _mm_prefetch::<_MM_HINT_T0>(row.cast());
                _mm_prefetch::<_MM_HINT_T0>(row.wrapping_add(nr - 1).cast());
            }
        }
    }
}

/// Writes `alpha·acc + beta·C` to the top-left `mr×nr` corner of the MR×(2·LANES) tile at `c`
/// (the accumulators of [`tile`], or of another kernel accumulating in `V`).
///
/// # Safety
///
/// The CPU supports `V`'s instruction set, `mr <= MR`, `nr <= 2·LANES`, and the `mr×nr` view
/// `c` is valid for writes (and for reads of initialised values when `ep.beta` is not 0) and
/// not accessed concurrently.
#[inline(always)]
pub(super) unsafe fn write_back<V: Vector, const MR: usize>(
    acc: &[[V::V; 2]; MR],
    c: MatMut<V::E>,
    mr: usize,
    nr: usize,
    ep: &Epilogue<V::E>,
) {
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
                unsafe { ep.store(c.at(i, j).ptr, acc_ij) };
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
            type In = E;
            const MR: usize = MR;
            const NR: usize = 2 * <Self as Vector>::LANES;
            const KC: usize = <Self as Vector>::KC;
            const NC: usize = <Self as Vector>::NC;
            const K_STEP: usize = 1;

            const TILE_IN_PLACE: Option<InPlaceTile<E, E>> = Some(tile::<E>);

            unsafe fn tile(kc: usize, a: *const E, b: *const E, c: MatMut<E>, mr: usize, nr: usize, ep: &Epilogue<E>) {
                let (a, b) = (
                    Panel {
                        ptr: a,
                        step: MR,
                        lane: 1,
                    },
                    Panel {
                        ptr: b,
                        step: <Self as Kernel>::NR,
                        lane: 1,
                    },
                );
                // SAFETY: forwarded contract (packed panels: MR and NR values a step), which
                // includes the target features.
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

        /// The micro-kernel over packed panels or operands read in place ([`Kernel::tile`],
        /// [`Kernel::TILE_IN_PLACE`]): the loop with Ã's values `lane` apart when they are not
        /// contiguous.
        ///
        /// # Safety
        ///
        /// As for [`super::kernel::InPlaceTile`], and the CPU supports the target features.
        #[target_feature(enable = $feature)]
        unsafe fn tile<E: Element>(
            kc: usize,
            a: Panel<E>,
            b: Panel<E>,
            c: MatMut<E>,
            mr: usize,
            nr: usize,
            ep: &Epilogue<E>,
        ) where
            $vector<E>: Vector<E = E>,
        {
            // SAFETY: forwarded contract; the features are enabled here.
            unsafe {
                if a.lane == 1 {
                    simd::tile::<$vector<E>, MR, false>(kc, a, b, c, mr, nr, ep)
                } else {
                    simd::tile::<$vector<E>, MR, true>(kc, a, b, c, mr, nr, ep)
                }
            }
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

/// f32 vectors that load [`Streamed`] elements, widened, and sum their lanes.
///
/// # Safety
///
/// As for [`Vector`]: every method requires the instruction set's target features.
pub(super) trait Widen: Vector<E = f32> {
    /// Loads `LANES` elements of `W` as f32.
    unsafe fn load_wide<W: Streamed>(p: *const W) -> Self::V;
    /// The sums of the lanes of four vectors (a row's accumulators in the streamed dot loop, one
    /// per column of its group).
    unsafe fn sums(v: [Self::V; 4]) -> [f32; 4];
    /// Loads the first `lanes` (1..=LANES) elements, zeroing the rest; touches no others.
    unsafe fn load_wide_first<W: Streamed>(p: *const W, lanes: usize) -> Self::V;
}

/// The first `lanes` (at most 16) elements at `p`, zero-padded to 16: a partial vector that
/// full-width loads may read.
///
/// # Safety
///
/// `p` is valid for `lanes` reads.
#[inline(always)]
pub(super) unsafe fn padded<W: Streamed>(p: *const W, lanes: usize) -> [W; 16] {
    let mut part = [W::ZERO; 16];
    // SAFETY: p is valid for `lanes` reads (caller's contract), part for 16 writes.
    unsafe { std::ptr::copy_nonoverlapping(p, part.as_mut_ptr(), lanes.min(16)) };
    part
}

/// Independent FMA chains in [`fma_loop`]: enough to cover two FMA units through their latency
/// (2 × 4 cycles on current x86 cores) twice over.
pub(super) const FMA_CHAINS: usize = 16;

/// `iters` rounds of [`FMA_CHAINS`] independent `acc = x·x + acc` on `V`'s f32 vectors, nothing
/// else in the loop but its counter: the FMA units' peak rate (`gemm::fma_peak`). Returns the
/// accumulators' sum, so that the loop is not optimised away (each chain starts from another
/// value, so no two can be merged).
///
/// # Safety
///
/// The CPU supports `V`'s instruction set.
#[inline(always)]
pub(super) unsafe fn fma_loop<V: Vector<E = f32>>(iters: usize, x: f32) -> f32 {
    // SAFETY: the instruction set is supported (caller's contract); the stores write a local
    // array of LANES elements.
    unsafe {
        let x = V::splat(x);
        let mut acc = [V::zero(); FMA_CHAINS];
        for (i, acc) in acc.iter_mut().enumerate() {
            *acc = V::splat(i as f32);
        }
        for _ in 0..iters {
            for acc in acc.iter_mut() {
                *acc = V::fmadd(x, x, *acc);
            }
        }
        let mut lanes = [0f32; 16];
        let mut sum = 0.0;
        for acc in acc {
            V::store(lanes.as_mut_ptr(), acc);
            sum += lanes[0];
        }
        sum
    }
}
