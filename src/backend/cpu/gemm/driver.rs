//! The blocked driver: splits a product over threads, then runs the BLIS loops (blocks of B
//! packed into L2, micro-panels of A into L1) around a kernel's micro-tile.

use super::kernel::Kernel;
use super::matrix::Element;
use super::matrix::{Epilogue, Problem};
use super::pack::with_pack_buffer;
use rayon::prelude::*;

/// Minimum work (in flops, `2·m·n·k`) per thread before a product is split over threads:
/// 2²⁰ flops, ~7 µs of one core, against ~4-9 µs measured for a rayon fork-join from outside
/// the pool (10-25 µs when the pool was asleep). So 128³ or 64×64×256 use two threads, 96³
/// or 64³ (3.5 µs of work) stay on the caller.
pub(super) const PAR_FLOPS_PER_THREAD: usize = 1 << 20;

/// Runs a validated product with kernel `K`, on several threads when it is large enough.
pub(super) fn run<K: Kernel>(problem: Problem<K::T, K::In>) {
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
pub(super) unsafe fn gemm_serial<K: Kernel>(problem: Problem<K::T, K::In>) {
    let Problem { m, n, k, a, b, c, ep } = problem;
    // Blocks of k are multiples of K_STEP (so only the last one is padded) and so is their
    // size, which bounds every padded block.
    let k_blocks = Blocks::new(k, K::KC, K::K_STEP);
    let n_blocks = Blocks::new(n, K::NC, K::NR);
    let b_len = k_blocks.size * n_blocks.size;
    let all_blocks = || {
        with_pack_buffer(b_len + K::MR * k_blocks.size, |buf: &mut [K::In]| {
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
                        let panel_len = round_up(kc, K::K_STEP) * K::NR;
                        for (jr, b_panel) in (0..nc).step_by(K::NR).zip(b_pack.chunks_exact(panel_len)) {
                            // SAFETY: the panels hold kc'·MR and kc'·NR elements, the tile at
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
        })
    };
    // SAFETY: the CPU supports K (caller's contract); the kernel's calls above run inside.
    unsafe { K::with_thread_state(all_blocks) }
}

/// `0..len` cut into `ceil(len / max)` nearly equal blocks whose size is a multiple of
/// `align` (the last block may be shorter); yields `(start, size)`.
#[derive(Clone, Copy)]
pub(super) struct Blocks {
    pub(super) len: usize,
    pub(super) size: usize,
    pub(super) start: usize,
}

impl Blocks {
    /// `max` must be a multiple of `align`; `len` must be positive.
    pub(super) fn new(len: usize, max: usize, align: usize) -> Self {
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

pub(super) fn round_up(x: usize, multiple: usize) -> usize {
    x.div_ceil(multiple) * multiple
}
