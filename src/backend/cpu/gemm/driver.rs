//! The blocked driver: splits a product over threads, then runs the BLIS loops (blocks of B
//! packed into L2, micro-panels of A into L1) around a kernel's micro-tile.

use super::kernel::Kernel;
use super::matrix::Element;
use super::matrix::{Epilogue, Problem};
use super::meter::{self, Call};
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
    let call = Call::start(|| {
        let kernel = std::any::type_name::<K>();
        let kernel = kernel.split_once("gemm::").map_or(kernel, |(_, name)| name);
        let (a, b) = (problem.a, problem.b);
        meter::shape(kernel, [m, n, k], (a.rs, a.cs), (b.rs, b.cs))
    });
    split::<K>(problem, call.as_ref());
    if let Some(call) = call {
        call.finish();
    }
}

/// [`run`]'s product (m, n, k > 0, alpha not 0) on as many threads as its size warrants, each
/// slab through `call` when metered.
fn split<K: Kernel>(problem: Problem<K::T, K::In>, call: Option<&Call>) {
    let k = problem.k;
    let run_slab = |part: Problem<K::T, K::In>| {
        // SAFETY: `run` validated the problem with m, n, k > 0; each slab is a disjoint part of
        // C used by this thread only, and `sgemm`/`dgemm`/`bgemm` only pick a kernel the CPU
        // supports.
        let go = || unsafe { gemm_serial::<K>(part) };
        match call {
            Some(call) => call.slab(go),
            None => go(),
        }
    };
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
        return run_slab(problem);
    }
    // Cut C into `threads` slabs of whole tiles, along the dimension whose slowest slab costs
    // least: its tiles (MR·k multiply-add steps of NR lanes each) plus the elements it packs (A
    // once per column block of the slab, B once), a packed element counted as one step. With
    // columns, every thread packs all of A; with rows, all of B (by this count, packing is a
    // fifth of a column split's work on the GPT's 768×128×512 products, a seventh of a row
    // split's). A fixed slab per thread measured faster on a quiet machine than C's row panels
    // handed out one at a time over a B block packed by all threads together (SmolLM2's f32
    // prefill, 128 rows: 464–507 against 592–651 tokens/s, docs/perf.md), whose two
    // fork-joins per block of B cost more than a busy core's lag saves.
    let slab = |len: usize, tile: usize| round_up(len.div_ceil(threads), tile).min(len);
    let (cols, rows) = (slab(n, K::NR), slab(m, K::MR));
    let cost = |m_t: usize, n_t: usize| {
        let tiles = m_t.div_ceil(K::MR) * n_t.div_ceil(K::NR);
        tiles * K::MR * k + n_t.div_ceil(K::NC) * m_t * k + k * n_t
    };
    if cost(m, cols) <= cost(rows, n) {
        (0..n).into_par_iter().step_by(cols).for_each(|j| {
            // SAFETY: j..min(n, j + cols) is a non-empty range of columns inside 0..n.
            run_slab(unsafe { problem.cols(j..n.min(j + cols)) })
        });
    } else {
        (0..m).into_par_iter().step_by(rows).for_each(|i| {
            // SAFETY: i..min(m, i + rows) is a non-empty range of rows inside 0..m.
            run_slab(unsafe { problem.rows(i..m.min(i + rows)) })
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
    let Problem { m, n, k, b, .. } = problem;
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
                    // SAFETY: (pc, jc) is an element of B, the block is kc×nc and the CPU supports K.
                    unsafe { K::pack_b(kc, nc, b.at(pc, jc), b_pack) };
                    for ic in (0..m).step_by(K::MR) {
                        let block = Block { ic, jc, nc, pc, kc };
                        // SAFETY: the block lies inside the problem, b_pack holds its packed B
                        // block, and the caller's contract covers C and the CPU.
                        unsafe { row_panel::<K>(&problem, block, b_pack, a_pack) };
                    }
                }
            }
        })
    };
    // SAFETY: the CPU supports K (caller's contract); the kernel's calls above run inside.
    unsafe { K::with_thread_state(all_blocks) }
}

/// Where a row panel's work lies: rows `ic..ic + MR` (fewer at the bottom edge) of C, columns
/// `jc..jc + nc`, and the block `pc..pc + kc` of the shared dimension.
#[derive(Clone, Copy)]
struct Block {
    ic: usize,
    jc: usize,
    nc: usize,
    pc: usize,
    kc: usize,
}

/// Packs A's `MR×kc` micro-panel at `(ic, pc)` into `a_pack` and multiplies it by every
/// micro-panel of the packed B block `b_pack`, into C's tiles at `(ic, jc..jc + nc)`; the first
/// block of k applies the product's beta, the others add.
///
/// # Safety
///
/// `block` lies inside `problem`, which is validated; `b_pack` holds the kc×nc block of B at
/// `(pc, jc)` packed by `K::pack_b`, `a_pack` holds at least `MR·round_up(kc, K_STEP)`
/// elements; no other thread accesses C's rows `ic..ic + MR`; the CPU supports `K`.
unsafe fn row_panel<K: Kernel>(problem: &Problem<K::T, K::In>, block: Block, b_pack: &[K::In], a_pack: &mut [K::In]) {
    let Block { ic, jc, nc, pc, kc } = block;
    let Problem { m, a, c, ep, .. } = *problem;
    let beta = if pc == 0 { ep.beta } else { K::T::ONE };
    let mr = K::MR.min(m - ic);
    // SAFETY: (ic, pc) is an element of A, the block is mr×kc and the CPU supports K.
    unsafe { K::pack_a(mr, kc, a.at(ic, pc), a_pack) };
    let panel_len = round_up(kc, K::K_STEP) * K::NR;
    for (jr, b_panel) in (0..nc).step_by(K::NR).zip(b_pack.chunks_exact(panel_len)) {
        // SAFETY: the panels hold kc'·MR and kc'·NR elements, the tile at (ic, jc + jr) of C
        // is inside the problem's part of C and the CPU supports K (caller's contract).
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
