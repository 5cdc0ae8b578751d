//! Packing: copying a block of A or B into the micro-panel order the micro-kernel reads, into
//! 64-byte aligned per-thread buffers.

use super::kernel::Kernel;
use super::matrix::{Element, MatRef};
use std::cell::{Cell, RefCell};

/// Packs the `mr×kc` block `a` into one A micro-panel: `dst[p·MR + i] = a[i, p]`, rows
/// `mr..MR` zero (for a kernel with `K_STEP == 1`).
///
/// # Safety
///
/// `a` is a readable `mr×kc` view with `mr <= MR`; `dst` holds at least `kc·MR` elements.
pub(super) unsafe fn pack_a<K: Kernel>(mr: usize, kc: usize, a: MatRef<K::In>, dst: &mut [K::In]) {
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
                dst[i..].iter_mut().step_by(K::MR).for_each(|d| *d = K::In::ZERO);
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
                    K::In::ZERO
                };
            }
        }
    }
}

/// Packs the `kc×nc` block `b` into NR-column micro-panels of kc rows each:
/// `dst[(jp·kc + p)·NR + j] = b[p, jp·NR + j]`, columns past `nc` zero (for a kernel with
/// `K_STEP == 1`).
///
/// # Safety
///
/// `b` is a readable `kc×nc` view; `dst` holds at least `kc·round_up(nc, NR)` elements.
pub(super) unsafe fn pack_b<K: Kernel>(kc: usize, nc: usize, b: MatRef<K::In>, dst: &mut [K::In]) {
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
            pad.fill(K::In::ZERO);
        }
    }
}

/// A 64-byte aligned chunk of packing buffer.
#[repr(C, align(64))]
#[derive(Clone, Copy)]
pub(super) struct CacheLine([u8; 64]);

/// Runs `f` on a 64-byte aligned scratch slice of `len` elements. The slice is cached per
/// thread (and grown on demand) so repeated calls neither allocate nor fault in pages.
pub(super) fn with_pack_buffer<T: Element, R>(len: usize, f: impl FnOnce(&mut [T]) -> R) -> R {
    thread_local! {
        static BUFFER: RefCell<Vec<CacheLine>> = const { RefCell::new(Vec::new()) };
    }
    let lines = (len * size_of::<T>()).div_ceil(size_of::<CacheLine>());
    BUFFER.with_borrow_mut(|buffer| {
        if buffer.len() < lines {
            *buffer = vec![CacheLine([0; 64]); lines];
        }
        // SAFETY: the buffer holds `lines` initialised, 64-byte aligned lines, at least
        // `len·size_of::<T>()` bytes; T is f32, f64 or bf16 (align <= 64), valid for any bits.
        f(unsafe { std::slice::from_raw_parts_mut(buffer.as_mut_ptr().cast::<T>(), len) })
    })
}

/// Runs `f` on a scratch slice of `len` elements (any values) that the threads of one product
/// share (`driver::split_mn`'s packed blocks of B, `driver::split_k`'s second half), cached per
/// thread like [`with_pack_buffer`]'s. The buffer is taken out of its cache for the call (which
/// forks and waits): a product that rayon runs on this thread meanwhile finds the cache empty
/// and allocates its own.
pub(super) fn with_shared_buffer<T: Element, R>(len: usize, f: impl FnOnce(&mut [T]) -> R) -> R {
    thread_local! {
        static BUFFER: Cell<Vec<CacheLine>> = const { Cell::new(Vec::new()) };
    }
    let lines = (len * size_of::<T>()).div_ceil(size_of::<CacheLine>());
    let mut buffer = BUFFER.take();
    if buffer.len() < lines {
        buffer = vec![CacheLine([0; 64]); lines];
    }
    // SAFETY: as in `with_pack_buffer`: `lines` initialised 64-byte aligned lines, at least
    // `len·size_of::<T>()` bytes, of a type valid for any bits.
    let r = f(unsafe { std::slice::from_raw_parts_mut(buffer.as_mut_ptr().cast::<T>(), len) });
    BUFFER.set(buffer);
    r
}

/// Asks the CPU to bring the cache line holding `p` into its caches (a hint: never faults,
/// whatever `p`); nothing off x86-64.
#[inline(always)]
pub(super) fn prefetch<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    prefetch_with::<{ std::arch::x86_64::_MM_HINT_T0 }, T>(p);
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// As [`prefetch`], but into the core's L2 only (`prefetcht1`): for a stream read once, whose
/// lines the loads will want soon (the streamed products' next rows, `streamed.rs`, where it
/// measured faster than into L1).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(super) fn prefetch_to_l2<T>(p: *const T) {
    prefetch_with::<{ std::arch::x86_64::_MM_HINT_T1 }, T>(p);
}

/// `prefetch` with the cache level's hint `HINT` (`_MM_HINT_T0`, `_MM_HINT_T1`, ...).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn prefetch_with<const HINT: i32, T>(p: *const T) {
    // SAFETY: a prefetch never faults; SSE is part of x86-64's baseline.
    unsafe { std::arch::x86_64::_mm_prefetch::<HINT>(p.cast()) }
}
