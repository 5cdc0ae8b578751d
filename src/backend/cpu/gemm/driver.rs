//! The blocked driver: splits a product over threads, then runs the BLIS loops (blocks of B
//! packed into L2, micro-panels of A into L1) around a kernel's micro-tile.

use super::kernel::{InPlaceTile, Kernel, Panel};
use super::matrix::Element;
use super::matrix::{Epilogue, MatMut, MatRef, Problem};
use super::meter::{self, Call};
use super::pack::{prefetch, with_pack_buffer, with_shared_buffer};
use rayon::prelude::*;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

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

/// Products whose shared dimension is at least this many times their larger side of C, and of
/// at least two threads' worth of flops ([`PAR_FLOPS_PER_THREAD`]), run as two halves along k
/// ([`split_k`]): the LM head's `dX = dlogits·wte` (512×768×50257 for GPT-2 at 2 × 256). With
/// C cut into slabs of columns instead, each thread packs all of A (the 103 MB of `dlogits`,
/// read from memory) for half the tiles per A micro-panel; with halves of k, each thread packs
/// half of A and half of B, once, and C's whole width shares each A micro-panel.
const LONG_K_RATIO: usize = 8;

/// A product whose k is at least this many times its larger side of C is also cut along k when
/// the operand a slab of C would make every thread pack whole ([`SHARED_PACK_BYTES`]) is large:
/// GPT-2's products into 768 columns with k = 3072 or 2304 (`x·Wᵀ` of the MLP's output
/// projection, `dX` of the fc and qkv layers: A is 512×3072, 6 MiB, at 2 × 256). In two slabs
/// of 384 columns, each thread packs all of A from L3 or memory for 12 tiles per A
/// micro-panel; in halves of k each packs half of A and half of B, 24 tiles per micro-panel
/// (perf samples of `dX` 512×768×3072 on 2 threads, a loaded machine, 2026-12-06: packing 10.6
/// and 11.7% of them in slabs, 7.5 and 7.6% in halves; docs/perf.md).
const SHARED_K_RATIO: usize = 2;

/// Bytes of the smaller operand (`min(m, n)·k` elements) from which a product with
/// [`SHARED_K_RATIO`] is cut along k: more than the 1 MiB L2 of a core several times over, so
/// each thread's copy of it comes from L3 or memory. nanoGPT's products (at most 128·768 f32,
/// 393 KB) and GPT-2's at 4 × 512 but for its attention projection's `dW` (768×768×2048,
/// 6 MiB) stay in slabs.
const SHARED_PACK_BYTES: usize = 4 << 20;

/// Where [`run`]'s product is cut in two along k (`Some(half)`: steps `0..half` and
/// `half..k`), by its shape alone, never by the number of threads, so that the result's bits do
/// not depend on the pool: the halves run one after the other on a single thread.
pub(super) fn long_k_half<K: Kernel>(m: usize, n: usize, k: usize) -> Option<usize> {
    let flops = m.saturating_mul(n).saturating_mul(k).saturating_mul(2);
    let side = m.max(n);
    let shared = m.min(n).saturating_mul(k).saturating_mul(size_of::<K::In>());
    let long = k >= LONG_K_RATIO.saturating_mul(side)
        || (k >= SHARED_K_RATIO.saturating_mul(side) && shared >= SHARED_PACK_BYTES);
    (long && k >= 2 * K::KC && flops >= 2 * PAR_FLOPS_PER_THREAD).then(|| round_up(k.div_ceil(2), K::K_STEP))
}

/// [`run`]'s product (m, n, k > 0, alpha not 0) on as many threads as its size warrants, each
/// slab through `call` when metered.
fn split<K: Kernel>(problem: Problem<K::T, K::In>, call: Option<&Call>) {
    // The kernels store vectors along C's rows: make them C's unit-stride direction.
    let problem = if problem.c.cs != 1 && problem.c.rs == 1 {
        problem.transposed()
    } else {
        problem
    };
    let threads = rayon::current_num_threads();
    match long_k_half::<K>(problem.m, problem.n, problem.k) {
        Some(half) => split_k::<K>(problem, half, threads, call),
        None => split_mn::<K>(problem, threads, call),
    }
}

/// [`split`]'s product in two halves along k, `0..half` and `half..k` (0 < half < k): the first
/// into C with the product's beta, the second (also alpha-scaled) into a scratch matrix, each on
/// half the threads ([`split_mn`]), then the scratch added to C in bands of rows, one per thread.
/// The result differs from one pass over k only in rounding (two partial sums added), and is the
/// same on any number of threads.
fn split_k<K: Kernel>(problem: Problem<K::T, K::In>, half: usize, threads: usize, call: Option<&Call>) {
    let Problem { m, n, k, .. } = problem;
    let (pool, threads) = (threads, (threads / 2).max(1));
    with_shared_buffer(m * n, |partial: &mut [K::T]| {
        // SAFETY: 0 < half < k (long_k_half), so both ranges are non-empty and inside 0..k.
        let (first, second) = unsafe { (problem.ks(0..half), problem.ks(half..k)) };
        let second = Problem {
            c: MatMut {
                ptr: partial.as_mut_ptr(),
                rs: n,
                cs: 1,
            },
            ep: Epilogue {
                beta: K::T::ZERO,
                ..problem.ep
            },
            ..second
        };
        rayon::join(
            || split_mn::<K>(first, threads, call),
            || split_mn::<K>(second, threads, call),
        );
        // The scratch added to C, a band of rows per thread: the same addition for each element
        // as on one thread.
        let c = problem.c;
        let band = m.div_ceil(pool.max(1)) * n;
        let add = |(b, rows): (usize, &[K::T])| {
            for (r, row) in rows.chunks_exact(n).enumerate() {
                let i = b * band / n + r;
                if c.cs == 1 {
                    // SAFETY: row i of C holds n contiguous elements (cs == 1), written by the
                    // first half; this band's rows are used by no other thread now.
                    let c_row = unsafe { std::slice::from_raw_parts_mut(c.at(i, 0).ptr, n) };
                    c_row.iter_mut().zip(row).for_each(|(c, &x)| *c = *c + x);
                } else {
                    for (j, &x) in row.iter().enumerate() {
                        // SAFETY: (i, j) is an element of C, written by the first half; this
                        // band's rows are used by no other thread now.
                        unsafe {
                            let cij = c.at(i, j).ptr;
                            *cij = *cij + x;
                        }
                    }
                }
            }
        };
        if band < m * n {
            partial.par_chunks(band).enumerate().for_each(add);
        } else {
            add((0, &*partial));
        }
    });
}

/// [`split`]'s product (or one half of it along k) on up to `threads` threads, as many as its
/// size warrants, each thread's share through `call` when metered.
///
/// On several threads, C is cut along the dimension whose slowest share costs least: its tiles
/// (MR·k multiply-add steps of NR lanes each) plus the elements it packs (A once per column
/// block, B once), a packed element counted as one step. With columns (products of few rows:
/// the GPT's 128-row `dW`s, a short prompt's Linears), each thread runs one fixed slab of C's
/// columns as on one thread, packing and reading only its own columns of B, so no packed line
/// crosses between the cores. With rows, in one parallel region ([`Work`]): for each block of B
/// in the order of the serial loops, the threads pack it together into one of two buffers all
/// of them read, then multiply it, each its own run of C's row panels (the same run for every
/// block, so a tile of C stays in the cache of the thread that updates it) and then, its run
/// done, the panels left at the ends of the others' (so a thread slowed by another process holds
/// the product back by a few panels, not by its half). B is packed once, not once per thread.
/// Each tile of C is computed by one thread per block of k, in the serial order of the blocks,
/// so the bits do not depend on `threads` or on which thread took what.
fn split_mn<K: Kernel>(problem: Problem<K::T, K::In>, threads: usize, call: Option<&Call>) {
    let (m, n, k) = (problem.m, problem.n, problem.k);
    let flops = m.saturating_mul(n).saturating_mul(k).saturating_mul(2);
    let threads = threads.min(flops / PAR_FLOPS_PER_THREAD).max(1);
    let metered = |go: &dyn Fn()| match call {
        Some(call) => call.slab(go),
        None => go(),
    };
    if threads == 1 {
        // SAFETY: `run` validated the problem with m, n, k > 0; this thread is the only one
        // using C, and `sgemm`/`dgemm`/`bgemm` only pick a kernel the CPU supports.
        return metered(&|| unsafe { gemm_serial::<K>(problem) });
    }
    let slab = |len: usize, tile: usize| round_up(len.div_ceil(threads), tile).min(len);
    let (cols, rows) = (slab(n, K::NR), slab(m, K::MR));
    let cost = |m_t: usize, n_t: usize| {
        let tiles = m_t.div_ceil(K::MR) * n_t.div_ceil(K::NR);
        tiles * K::MR * k + n_t.div_ceil(K::NC) * m_t * k + k * n_t
    };
    if cost(m, cols) <= cost(rows, n) {
        return (0..n).into_par_iter().step_by(cols).for_each(|j| {
            // SAFETY: as above, for the disjoint slab of columns j..min(n, j + cols), inside
            // 0..n, used by this thread only.
            metered(&|| unsafe { gemm_serial::<K>(problem.cols(j..n.min(j + cols))) })
        });
    }
    let work = Work::<K>::new(problem, threads);
    with_shared_buffer(2 * work.buffer_len, |buffers: &mut [K::In]| {
        let buffers = SharedBuffers(buffers.as_mut_ptr());
        (0..threads).into_par_iter().for_each(|share| {
            // SAFETY: as for `gemm_serial` above; `buffers` holds two buffers of
            // `work.buffer_len` elements, used by this product's threads only.
            metered(&|| unsafe { K::with_thread_state(|| work.run_share(share, buffers)) })
        });
    });
}

/// [`split_mn`]'s product split by rows into `order.len()` shares, but with the shares run one
/// after the other on this thread, in `order`: the case of threads that arrive only after the
/// others have taken every item (for tests).
///
/// # Safety
///
/// As for [`gemm_serial`].
#[cfg(test)]
pub(super) unsafe fn shares_in_turn<K: Kernel>(problem: Problem<K::T, K::In>, order: &[usize]) {
    let work = Work::<K>::new(problem, order.len());
    with_shared_buffer(2 * work.buffer_len, |buffers: &mut [K::In]| {
        let buffers = SharedBuffers(buffers.as_mut_ptr());
        for &share in order {
            // SAFETY: as for `gemm_serial` (caller's contract); `buffers` holds two buffers of
            // `work.buffer_len` elements, used by this product only.
            unsafe { K::with_thread_state(|| work.run_share(share, buffers)) }
        }
    });
}

/// Multiplying items per thread a block of B is cut into at least, when A has fewer row panels
/// (its items are then groups of a row panel's columns): a thread that finishes its run takes
/// items from the ends of the others', and the smaller they are the less it waits for the last.
const ITEMS_PER_THREAD: usize = 4;

/// Most micro-panels of B one packing item of [`Work`] packs: 128 columns of 256 steps, 128 KiB
/// of f32, a few microseconds.
const PACK_PANELS: usize = 4;

/// The two packed-B buffers of a [`Work`], `Work::buffer_len` elements each, shared by the
/// product's threads.
#[derive(Clone, Copy)]
struct SharedBuffers<I>(*mut I);

// SAFETY: the threads of a product write disjoint micro-panels of a buffer and read it only
// once those writes are published (`Work`'s counters order them), so sharing the pointer is
// sound.
unsafe impl<I> Send for SharedBuffers<I> {}
// SAFETY: as for Send.
unsafe impl<I> Sync for SharedBuffers<I> {}

/// One product's work on several threads, as [`split_mn`] describes. The blocks of B are
/// numbered `s = 0, 1, ...` in the serial order (column blocks outer, blocks of k inner); block
/// `s` is packed into buffer `s % 2`, so block `s + 1` can be packed while `s` is multiplied.
/// Its multiplying items (a row panel against the block's columns, or a group of them) are cut
/// into one run per share, the same for every block; share `t` takes its run's items from the
/// front, then, with its run done, those of the other runs from their backs.
///
/// Every thread goes through the blocks in order, and leaves a block only once all its items
/// are taken. It waits only before taking items, and only for items all taken already (by
/// running threads, which never wait while they hold one): before packing block `s` for block
/// `s − 2`'s multiplying items (the buffer's last readers), before multiplying it for its
/// packing and, when block `s − 1` has the same columns, for `s − 1`'s multiplying items (the
/// same tiles of C, the earlier steps of k). So no thread waits forever, whether the others
/// start at once, late, or only after it has taken every item.
struct Work<K: Kernel> {
    problem: Problem<K::T, K::In>,
    in_place: InPlace<K>,
    k_blocks: Blocks,
    n_blocks: Blocks,
    shares: usize,
    /// Whether A is large enough for the tiles to prefetch its next micro-panel.
    prefetch_a: bool,
    /// Columns per multiplying item (a multiple of NR).
    item_cols: usize,
    /// Micro-panels per packing item.
    pack_panels: usize,
    /// Elements of one packed-B buffer.
    buffer_len: usize,
    /// Per block of B: its packing and its multiplying items finished.
    finished: Vec<[AtomicUsize; 2]>,
    /// Per block of B, kind of item (packing, multiplying) and share: that share's run of the
    /// items, as the items taken from its front (low 32 bits) and from its back (high 32 bits).
    runs: Vec<AtomicU64>,
}

/// A block of B in a [`Work`]: its place (`ic` 0) and the numbers of its items.
#[derive(Clone, Copy)]
struct BlockOfB {
    at: Block,
    packing: usize,
    multiplying: usize,
}

/// The two kinds of items, as indices of [`Work::finished`] and [`Work::runs`].
const PACKING: usize = 0;
const MULTIPLYING: usize = 1;

impl<K: Kernel> Work<K> {
    fn new(problem: Problem<K::T, K::In>, shares: usize) -> Self {
        let Problem { m, n, k, .. } = problem;
        let k_blocks = Blocks::new(k, K::KC, K::K_STEP);
        let n_blocks = Blocks::new(n, K::NC, K::NR);
        let panels = m.div_ceil(K::MR);
        // with fewer row panels than items wanted, each item takes a group of the columns
        let groups = (ITEMS_PER_THREAD * shares).div_ceil(panels);
        let item_cols = round_up(n_blocks.size.div_ceil(groups), K::NR);
        let in_place = InPlace::new(&problem, m, item_cols);
        let panel_len = k_blocks.size * K::NR;
        let block_panels = n_blocks.size.div_ceil(K::NR);
        let blocks = n_blocks.number() * k_blocks.number();
        Self {
            problem,
            in_place,
            k_blocks,
            n_blocks,
            shares,
            prefetch_a: m * k * size_of::<K::In>() >= PREFETCH_A_BYTES,
            item_cols,
            pack_panels: block_panels.div_ceil(shares).clamp(1, PACK_PANELS),
            buffer_len: if in_place.b {
                panel_len
            } else {
                block_panels * panel_len
            },
            finished: (0..blocks).map(|_| Default::default()).collect(),
            runs: (0..blocks * 2 * shares).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// Block `s` of B, if there is one.
    fn block(&self, s: usize) -> Option<BlockOfB> {
        let per_column = self.k_blocks.number();
        let (jc, nc) = self.n_blocks.nth_block(s / per_column)?;
        let (pc, kc) = self.k_blocks.nth_block(s % per_column)?;
        let panels = nc.div_ceil(K::NR);
        // read in place, only a partial last micro-panel is packed
        let packing = if self.in_place.b {
            usize::from(nc % K::NR != 0)
        } else {
            panels.div_ceil(self.pack_panels)
        };
        Some(BlockOfB {
            at: Block { ic: 0, jc, nc, pc, kc },
            packing,
            multiplying: self.problem.m.div_ceil(K::MR) * nc.div_ceil(self.item_cols),
        })
    }

    /// Share `share`'s part of the product: every block in turn, its packing, its run, the
    /// other runs' leftovers.
    ///
    /// # Safety
    ///
    /// `buffers` holds two buffers of `self.buffer_len` elements that only this product's
    /// threads use; the problem is validated with m, n, k > 0, C is used by this product's
    /// threads only, and the CPU supports `K` (inside `K::with_thread_state`).
    unsafe fn run_share(&self, share: usize, buffers: SharedBuffers<K::In>) {
        with_pack_buffer(K::MR * self.k_blocks.size, |a_pack: &mut [K::In]| {
            // blocks s - 1 and s - 2
            let mut previous: [Option<BlockOfB>; 2] = [None, None];
            for (s, b) in (0..).map_while(|s| Some((s, self.block(s)?))) {
                let buffer = buffers.0.wrapping_add(s % 2 * self.buffer_len);
                let (finished, runs) = (&self.finished[s], &self.runs[2 * s * self.shares..]);
                if let Some(older) = previous[1] {
                    // the buffer's last readers: block s - 2's multiplying items
                    wait_for(&self.finished[s - 2][MULTIPLYING], older.multiplying);
                }
                self.each_item(&runs[..self.shares], share, b.packing, |r| {
                    // SAFETY: the buffer is no longer read (above), item r's micro-panels are
                    // written by this thread only, and the caller's contract covers the rest.
                    unsafe { self.pack(b, r, buffer) };
                    finished[PACKING].fetch_add(1, Ordering::Release);
                });
                wait_for(&finished[PACKING], b.packing);
                if let (Some(last), true) = (previous[0], b.at.pc > 0) {
                    // block s - 1's multiplying items, on the same tiles of C
                    wait_for(&self.finished[s - 1][MULTIPLYING], last.multiplying);
                }
                self.each_item(&runs[self.shares..2 * self.shares], share, b.multiplying, |r| {
                    // SAFETY: the block is packed (above) and its buffer not written until this
                    // item is counted; block s - 1's items on these tiles of C are finished,
                    // and no other item of block s uses them.
                    unsafe { self.multiply(b, r, buffer, a_pack) };
                    finished[MULTIPLYING].fetch_add(1, Ordering::Release);
                });
                previous = [Some(b), previous[0]];
            }
        })
    }

    /// Runs `f` on the items (`items` of them, cut into one run per share) that share `share`
    /// takes: its run's from the front, then the other runs' from their backs, until none is
    /// left.
    fn each_item(&self, runs: &[AtomicU64], share: usize, items: usize, mut f: impl FnMut(usize)) {
        let others = (1..self.shares).map(|i| ((share + i) % self.shares, false));
        for (run, front) in std::iter::once((share, true)).chain(others) {
            while let Some(r) = self.take(&runs[run], run, items, front) {
                f(r);
            }
        }
    }

    /// Takes the next item of share `run`'s run (of `items` in all) from its front or its back,
    /// if any is left.
    fn take(&self, taken: &AtomicU64, run: usize, items: usize, front: bool) -> Option<usize> {
        let (first, end) = (run * items / self.shares, (run + 1) * items / self.shares);
        let mut now = taken.load(Ordering::Relaxed);
        loop {
            let (from_front, from_back) = ((now & 0xffff_ffff) as usize, (now >> 32) as usize);
            if first + from_front + from_back >= end {
                return None;
            }
            let (next, item) = if front {
                (now + 1, first + from_front)
            } else {
                (now + (1 << 32), end - 1 - from_back)
            };
            match taken.compare_exchange_weak(now, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return Some(item),
                Err(seen) => now = seen,
            }
        }
    }

    /// Packing item `r` of block `b`: its micro-panels of B into `buffer` (read in place, the
    /// partial last micro-panel into the first one's place).
    ///
    /// # Safety
    ///
    /// As for [`Self::run_share`], with `buffer` one of the two buffers, not read now, and
    /// this item's micro-panels of it written by no other thread.
    unsafe fn pack(&self, b: BlockOfB, r: usize, buffer: *mut K::In) {
        let b = b.at;
        let (panel_len, b_view) = (round_up(b.kc, K::K_STEP) * K::NR, self.problem.b);
        let (first_col, cols, panel) = if self.in_place.b {
            let whole = b.nc - b.nc % K::NR;
            (whole, b.nc - whole, 0)
        } else {
            let panel = r * self.pack_panels;
            let first_col = panel * K::NR;
            (first_col, (self.pack_panels * K::NR).min(b.nc - first_col), panel)
        };
        let len = cols.div_ceil(K::NR) * panel_len;
        // SAFETY: the micro-panels `panel..` of this item lie inside the buffer (buffer_len
        // covers a block's panels) and no other thread accesses them now (caller's contract);
        // (pc, jc + first_col) is an element of B and the view is kc×cols.
        unsafe {
            let dst = std::slice::from_raw_parts_mut(buffer.add(panel * panel_len), len);
            K::pack_b(b.kc, cols, b_view.at(b.pc, b.jc + first_col), dst);
        }
    }

    /// Multiplying item `r` of block `b`: a row panel of A against the item's columns of the
    /// block, packed in `buffer`.
    ///
    /// # Safety
    ///
    /// As for [`Self::run_share`], with `buffer` holding block `b` packed, no other thread
    /// using this item's tiles of C, and `a_pack` this thread's A micro-panel buffer.
    unsafe fn multiply(&self, b: BlockOfB, r: usize, buffer: *mut K::In, a_pack: &mut [K::In]) {
        let b = b.at;
        let groups = b.nc.div_ceil(self.item_cols);
        let (ic, first_col) = (r / groups * K::MR, r % groups * self.item_cols);
        let nc = self.item_cols.min(b.nc - first_col);
        let panel_len = round_up(b.kc, K::K_STEP) * K::NR;
        // read in place, the partial last micro-panel is at the buffer's start
        let b_pack = if self.in_place.b {
            // SAFETY: the buffer holds one packed micro-panel (buffer_len).
            unsafe { std::slice::from_raw_parts(buffer, panel_len) }
        } else {
            let first = first_col / K::NR * panel_len;
            // SAFETY: the group's micro-panels lie inside the buffer, packed (caller's
            // contract) and not written while this item runs.
            unsafe { std::slice::from_raw_parts(buffer.add(first), nc.div_ceil(K::NR) * panel_len) }
        };
        let block = Block {
            ic,
            jc: b.jc + first_col,
            nc,
            ..b
        };
        let next = if self.prefetch_a {
            NextPanel::new::<K>(&self.problem, block)
        } else {
            None
        };
        // SAFETY: the block lies inside the problem, b_pack holds its packed columns, no other
        // thread uses rows ic..ic + MR of these columns of C now, and the caller's contract
        // covers the CPU.
        unsafe { row_panel::<K>(&self.problem, block, self.in_place, b_pack, a_pack, next) };
    }
}

/// Waits until `count` reaches `target` (items another thread has taken and is finishing):
/// spins, then gives the core away between looks if the wait is long (that thread may have
/// been descheduled, and this one may hold the core it needs).
fn wait_for(count: &AtomicUsize, target: usize) {
    let mut spins = 0u32;
    while count.load(Ordering::Acquire) < target {
        if spins < 1 << 10 {
            spins += 1;
            std::hint::spin_loop();
        } else {
            std::thread::yield_now();
        }
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
    let prefetch_a = m * k * size_of::<K::In>() >= PREFETCH_A_BYTES;
    let in_place = InPlace::<K>::new(&problem, m, n);
    let all_blocks = || {
        with_pack_buffer(b_len + K::MR * k_blocks.size, |buf: &mut [K::In]| {
            let (b_pack, a_pack) = buf.split_at_mut(b_len);
            for (jc, nc) in n_blocks {
                for (pc, kc) in k_blocks {
                    // Read in place, B's whole micro-panels are not packed: only a partial last
                    // one, into the first panel's place.
                    let packed = if in_place.b { nc - nc % K::NR } else { 0 };
                    if packed < nc {
                        // SAFETY: (pc, jc + packed) is an element of B, the block is kc×(nc -
                        // packed) and the CPU supports K.
                        unsafe { K::pack_b(kc, nc - packed, b.at(pc, jc + packed), b_pack) };
                    }
                    for ic in (0..m).step_by(K::MR) {
                        let block = Block { ic, jc, nc, pc, kc };
                        let next = if prefetch_a {
                            NextPanel::new::<K>(&problem, block)
                        } else {
                            None
                        };
                        // SAFETY: the block lies inside the problem, b_pack holds its packed B
                        // block, and the caller's contract covers C and the CPU.
                        unsafe { row_panel::<K>(&problem, block, in_place, b_pack, a_pack, next) };
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

/// The largest distance between A's steps (its column stride) at which the tiles read A in
/// place: a step per 4 KiB page or more. Farther apart, every step of a tile is on a page of its
/// own (GPT-2's `dW = dYᵀ·X` with dY 2304, 3072 or 50257 wide: 0.2–2.6% slower in place in the
/// step, two sittings).
const IN_PLACE_A_STEP_BYTES: usize = 4096;

/// The most tiles a row panel of a column-major A (or any A whose steps are not contiguous) runs
/// for the tiles to read A in place: a step's MR values span one or two lines, the steps a
/// column stride apart, so a panel of 256 steps fills 256 to 512 lines of L1 (not the 192 of a
/// packed panel), and at strides of 512 B or 3 KiB (nanoGPT's 128-wide, GPT-2's 768-wide `dY`)
/// all of them map to 4 or 8 of L1's 64 sets, where they evict each other from one tile to the
/// next. With few tiles a panel that costs less than packing it (64×64 tiles of the attention:
/// 13% faster in place); from 16 tiles it costs more (GPT-2's 768×3072×512 `dW`: 14% slower in
/// place, nanoGPT's 128×512×768 3%, on an Intel Xeon; docs/perf-log.md).
const IN_PLACE_A_COLUMN_TILES: usize = 8;

/// Rows of C that read one packed B (a thread's slab of columns, or a product split by rows,
/// whose threads share it) up to which the tiles read a row-major B in place: as many as 8 row
/// panels. Packing B costs a pass over it once per block, paid back by every row panel that reads
/// the packed B̃ (contiguous, aligned) instead of B's rows; with few row panels
/// (the attention's 64-row tiles) the pass costs more than it saves, with many (a Linear's
/// products) reading B's rows from far apart costs more (GPT-2's 512×3072×768 NN, B's rows 12 KiB
/// apart: its rate 30% lower with B read in place, 2 threads).
const IN_PLACE_B_ROWS: usize = 8;

/// Which operands a product's tiles read where they lie instead of packed (docs/perf.md, issue
/// 18), with a kernel that has [`Kernel::TILE_IN_PLACE`]: A in every tile with all MR rows (its
/// values of a step are its row stride apart, its steps its column stride) when it is
/// row-major, or its steps are at most [`IN_PLACE_A_STEP_BYTES`] apart and a row panel runs at
/// most [`IN_PLACE_A_COLUMN_TILES`] tiles; B in its whole micro-panels when it is row-major and
/// at most [`IN_PLACE_B_ROWS`] row panels read one packed B.
/// The same multiply-adds in the same order as packed, so the same bits.
///
/// Packing an A micro-panel is a transpose for a row-major A (16×16 register blocks, of which a
/// 12-row panel fills three quarters) and a strided copy for a column-major one, once per row
/// panel and block of B: with few tiles per panel (narrow products, the attention's tiles) it
/// took 15–17% of a product's time. The tile reads Ã one broadcast value at a time, so it reads
/// them from A's rows or columns as well (kept in L1 by the tiles that reuse them).
struct InPlace<K: Kernel> {
    /// The kernel's in-place tile, used for every tile when there is one.
    tile: Option<InPlaceTile<K::T, K::In>>,
    a: bool,
    b: bool,
}

impl<K: Kernel> InPlace<K> {
    /// The choice for `problem`, where `rows` of its rows read one packed B and each row panel
    /// multiplies `cols` of its columns.
    fn new(problem: &Problem<K::T, K::In>, rows: usize, cols: usize) -> Self {
        let tile = K::TILE_IN_PLACE;
        let (Problem { a, b, .. }, m, n) = (*problem, rows, cols);
        Self {
            tile,
            a: tile.is_some()
                && (a.cs == 1
                    || a.cs * size_of::<K::In>() <= IN_PLACE_A_STEP_BYTES && n <= IN_PLACE_A_COLUMN_TILES * K::NR),
            b: tile.is_some() && b.cs == 1 && m <= IN_PLACE_B_ROWS * K::MR,
        }
    }
}

impl<K: Kernel> Clone for InPlace<K> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<K: Kernel> Copy for InPlace<K> {}

/// Bytes of A (in the slab a thread runs) from which [`row_panel`] prefetches the next A
/// micro-panel's source while it runs the current one's tiles: an A that large is not in L2, so
/// packing its micro-panel (12 rows of a row-major A, 256 columns of a column-major one), or its
/// first tile reading it in place, would otherwise wait for memory at every line. The LM head's
/// `dX = dlogits·wte` reads 12 rows of 1 KiB, 200 KB apart, per 12 or 24 tiles.
const PREFETCH_A_BYTES: usize = 1 << 20;

/// The source lines of the A micro-panel below the current one (rows `ic + MR..`, the same
/// steps of k), which [`row_panel`] prefetches a share at a time, one share per tile, so that
/// they are in cache when the next row panel packs or reads them.
#[derive(Clone, Copy)]
struct NextPanel<I: Element> {
    /// Element (0, 0) of the next micro-panel's `rows×kc` block of A.
    at: MatRef<I>,
    rows: usize,
    kc: usize,
    /// Lines per row (A row-major: a row's span can start mid-line, so one more than its length
    /// needs).
    per: usize,
    /// Lines in all: `rows·per` (A row-major), or 2 per step of k (A column-major: the lines of
    /// its first and last row).
    lines: usize,
    /// Whether A's rows are contiguous (else its columns are).
    row_major: bool,
}

impl<I: Element> NextPanel<I> {
    /// Elements per cache line.
    const PER_LINE: usize = 64 / size_of::<I>();

    /// The micro-panel after `block`'s, if there is one and A's rows or columns are contiguous.
    fn new<K: Kernel<In = I>>(problem: &Problem<K::T, I>, block: Block) -> Option<Self> {
        let ic = block.ic + K::MR;
        let a = problem.a;
        if ic >= problem.m || (a.cs != 1 && a.rs != 1) {
            return None;
        }
        let (row_major, rows, kc) = (a.cs == 1, K::MR.min(problem.m - ic), block.kc);
        let per = kc.div_ceil(Self::PER_LINE) + 1;
        Some(Self {
            // SAFETY: ic < m and pc < k: (ic, pc) is an element of A.
            at: unsafe { a.at(ic, block.pc) },
            rows,
            kc,
            per,
            lines: if row_major { rows * per } else { 2 * kc },
            row_major,
        })
    }

    /// Prefetches share `part` of `parts` of the lines.
    fn prefetch(&self, part: usize, parts: usize) {
        let (lines, at) = (self.lines, self.at);
        for t in part * lines / parts..(part + 1) * lines / parts {
            let p = if self.row_major {
                let (i, line) = (t / self.per, t % self.per);
                at.ptr
                    .wrapping_add(i * at.rs + (line * Self::PER_LINE).min(self.kc - 1))
            } else {
                let (step, last) = (t / 2, t % 2);
                at.ptr.wrapping_add(step * at.cs + last * (self.rows - 1))
            };
            prefetch(p);
        }
    }
}

/// Multiplies A's `MR×kc` micro-panel at `(ic, pc)` (packed into `a_pack` unless read in
/// place) by every micro-panel of the B block, into C's tiles at `(ic, jc..jc + nc)`; the first
/// block of k applies the product's beta, the others add. With `next`, it prefetches the next
/// micro-panel's source meanwhile, a share per tile.
///
/// # Safety
///
/// `block` lies inside `problem`, which is validated and `in_place`'s; `b_pack` holds the
/// kc×nc block of B at `(pc, jc)` packed by `K::pack_b` (only its partial last micro-panel, in
/// the first panel's place, when `in_place.b`), `a_pack` holds at least `MR·round_up(kc,
/// K_STEP)` elements; no other thread accesses C's rows `ic..ic + MR`; the CPU supports `K`.
unsafe fn row_panel<K: Kernel>(
    problem: &Problem<K::T, K::In>,
    block: Block,
    in_place: InPlace<K>,
    b_pack: &[K::In],
    a_pack: &mut [K::In],
    next: Option<NextPanel<K::In>>,
) {
    let Block { ic, jc, nc, pc, kc } = block;
    let Problem { m, a, b, c, ep, .. } = *problem;
    let ep = Epilogue {
        beta: if pc == 0 { ep.beta } else { K::T::ONE },
        ..ep
    };
    let mr = K::MR.min(m - ic);
    let panel_len = round_up(kc, K::K_STEP) * K::NR;
    let packed = |ptr: *const K::In, step: usize| Panel { ptr, step, lane: 1 };
    let a_panel = if in_place.a && mr == K::MR {
        // SAFETY: (ic, pc) is an element of A; step p's MR values are rows ic..ic + MR of
        // column pc + p, elements of A.
        Panel {
            ptr: unsafe { a.at(ic, pc).ptr },
            step: a.cs,
            lane: a.rs,
        }
    } else {
        // SAFETY: (ic, pc) is an element of A, the block is mr×kc and the CPU supports K.
        unsafe { K::pack_a(mr, kc, a.at(ic, pc), a_pack) };
        packed(a_pack.as_ptr(), K::MR)
    };
    let tiles = nc.div_ceil(K::NR);
    for (t, jr) in (0..nc).step_by(K::NR).enumerate() {
        if let Some(next) = &next {
            next.prefetch(t, tiles);
        }
        let nr = K::NR.min(nc - jr);
        let b_panel = match (in_place.b, nr == K::NR) {
            // SAFETY: (pc, jc + jr) is an element of B; step p's NR values are row pc + p's
            // columns jc + jr.., contiguous (cs == 1) and inside B (nr == NR).
            (true, true) => Panel {
                ptr: unsafe { b.at(pc, jc + jr).ptr },
                step: b.rs,
                lane: 1,
            },
            (true, false) => packed(b_pack.as_ptr(), K::NR),
            (false, _) => packed(b_pack[t * panel_len..].as_ptr(), K::NR),
        };
        // SAFETY: the panels hold kc'·MR and kc'·NR elements or are read in place as above, the
        // tile at (ic, jc + jr) of C is inside the problem's part of C and the CPU supports K
        // (caller's contract).
        unsafe {
            let c = c.at(ic, jc + jr);
            match in_place.tile {
                Some(tile) => tile(kc, a_panel, b_panel, c, mr, nr, &ep),
                // packed panels only (in_place.b needs an in-place tile)
                None => K::tile(kc, a_panel.ptr, b_panel.ptr, c, mr, nr, &ep),
            }
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

    /// How many blocks `0..len` is cut into.
    fn number(&self) -> usize {
        self.len.div_ceil(self.size)
    }

    /// Block `i` as `(start, size)`, if there is one.
    fn nth_block(&self, i: usize) -> Option<(usize, usize)> {
        let start = i.checked_mul(self.size).filter(|&start| start < self.len)?;
        Some((start, self.size.min(self.len - start)))
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
